"""Why the kernel counts with one variadic reduce, and what that costs under sharded jit.

Usage:
  python benchmarks/studies/count_reduction.py --repeats 7

Every pass of the selection kernel counts how many entries lie below three
thresholds. Four ways to write those three counts are compared:

- ``variadic``: ONE ``lax.reduce`` over three int32 operands (what cyclax does);
- ``three sums``: three ``jnp.sum(x < t, dtype=int32)``;
- ``stacked``: one single-operand reduce over ``x[..., None] < thresholds``;
- ``packed fields``: one single-operand int32 reduce of the three predicates
  shifted into 10-bit fields (only valid for small counts; a speed probe).

Part 1 times each on one CPU device over a 4096 x 4096 float32 array. Part 2
compiles each under plain ``jax.jit`` on 8 forced CPU devices with the array
sharded over a 4 x 2 mesh and lists the collectives in the compiled HLO.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

KINDS = r"= (\([^)]*\)|\S+) (all-gather|all-to-all|all-reduce|collective-permute|reduce-scatter)\("


def _methods():
  import jax.numpy as jnp
  from jax import lax

  def variadic(x, ts):
    ops = tuple((x < t).astype(jnp.int32) for t in ts)
    zeros = tuple(jnp.int32(0) for _ in ops)
    return list(lax.reduce(ops, zeros, lambda a, b: tuple(u + v for u, v in zip(a, b)), tuple(range(x.ndim))))

  def three_sums(x, ts):
    return [jnp.sum(x < t, dtype=jnp.int32) for t in ts]

  def stacked(x, ts):
    pred = (x[..., None] < jnp.stack(ts)).astype(jnp.int32)
    return lax.reduce(pred, jnp.int32(0), lax.add, tuple(range(x.ndim)))

  def packed_fields(x, ts):
    v = sum((x < t).astype(jnp.int32) << (10 * i) for i, t in enumerate(ts))
    return lax.reduce(v, jnp.int32(0), lax.add, tuple(range(x.ndim)))

  return {"variadic": variadic, "three sums": three_sums, "stacked": stacked, "packed fields": packed_fields}


def _collectives() -> None:
  """Runs in a child process with 8 CPU devices; prints JSON."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
  x = jax.device_put(
    jnp.asarray(np.random.default_rng(0).standard_normal((64, 48)), jnp.float32),
    NamedSharding(mesh, P("data", "model")),
  )
  ts = [jnp.float32(-0.5), jnp.float32(0.0), jnp.float32(0.5)]
  out = {}
  for name, fn in _methods().items():
    text = jax.jit(fn).lower(x, ts).compile().as_text()
    out[name] = [f"{kind} {shape}" for shape, kind in re.findall(KINDS, text)]
  print(json.dumps(out))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    _collectives()
    return

  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/_common.py
  import _common
  import jax
  import jax.numpy as jnp

  x = jax.random.normal(jax.random.key(0), (4096, 4096), jnp.float32)
  ts = [jnp.float32(-0.5), jnp.float32(0.0), jnp.float32(0.5)]
  fns = {name: jax.jit(fn) for name, fn in _methods().items()}
  reference = [int(c) for c in fns["variadic"](x, ts)]
  for name, fn in fns.items():
    if name != "packed fields":  # its 10-bit fields overflow at this size
      got = [int(c) for c in jnp.ravel(jnp.asarray(fn(x, ts)))]
      assert got == reference, (name, got, reference)
  times = _common.time_interleaved({n: (lambda f=f: f(x, ts)) for n, f in fns.items()}, args.repeats)
  temps = {n: f.lower(x, ts).compile().memory_analysis().temp_size_in_bytes for n, f in fns.items()}

  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  child = subprocess.run(
    [sys.executable, os.path.abspath(__file__), "--child"],
    env=env,
    capture_output=True,
    text=True,
    check=True,
  )
  collectives = json.loads(child.stdout.strip().splitlines()[-1])

  print("three counts over 4096 x 4096 float32; collectives on a 64 x 48 array sharded P('data', 'model')")
  print(_common.machine())
  print(f"\n(median [min-max] of {args.repeats} repeats, interleaved; ratios per repeat)")
  rows = [
    [
      name,
      _common.fmt_time(t),
      _common.fmt_ratio(t, times["variadic"]),
      f"{temps[name] / 2**20:.0f} MiB",
      ", ".join(collectives[name]) or "none",
    ]
    for name, t in times.items()
  ]
  _common.print_table(["counts as", "time", "time / variadic", "temp", "collectives under sharded jit"], rows)


if __name__ == "__main__":
  main()
