"""Communication of a mask refresh on sharded params, read off the compiled HLO.

Compiles one training-step update (``optax.chain(optax.adam, cyclax.magnitude_prune)``)
for params sharded over 8 forced host CPU devices, in two ways: ``jax.jit`` with
``NamedSharding`` inputs (XLA partitions the kernel) and ``jax.shard_map`` with
``axis_name`` (the kernel sums its counts with ``lax.psum``). For every
collective in the compiled module it prints where it runs (every step, once per
refresh, or once per round of a search loop inside the refresh), its kind, and
the element types and bytes it carries per device.

Usage: ``python benchmarks/collectives.py [--devices 8] [--leaves 6] [--width 512]``
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections import Counter, defaultdict

KINDS = ("all-gather", "all-to-all", "all-reduce", "reduce-scatter", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4}
_DTYPE_BYTES.update({"f32": 4, "s64": 8, "u64": 8, "f64": 8})


def _parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", type=int, default=8, help="forced host CPU devices")
  parser.add_argument("--leaves", type=int, default=6, help="number of pruned (width, width) kernels")
  parser.add_argument("--width", type=int, default=512, help="kernel width (multiple of --devices)")
  return parser.parse_args()


def _computations(hlo: str) -> dict[str, list[str]]:
  """Instruction lines of every computation, by name (ENTRY under the key 'ENTRY')."""
  comps, name = {}, None
  for line in hlo.splitlines():
    header = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{$", line)
    if header and not line.startswith(" "):
      name = "ENTRY" if header.group(1) else header.group(2)
      comps[name] = []
    elif name is not None and line.startswith("  "):
      comps[name].append(line.strip())
  return comps


def _callees(line: str) -> list[tuple[str, str]]:
  """(edge kind, computation) pairs an instruction calls: loop bodies, branches, others."""
  out = []
  for m in re.finditer(r"body=%?([\w.\-]+)", line):
    out.append(("loop", m.group(1)))
  for m in re.finditer(r"(?:true|false)_computation=%?([\w.\-]+)", line):
    out.append(("branch", m.group(1)))
  m = re.search(r"branch_computations=\{([^}]*)\}", line)
  if m:
    out += [("branch", c.strip().lstrip("%")) for c in m.group(1).split(",")]
  for m in re.finditer(r"(?:condition|to_apply|calls)=%?([\w.\-]+)", line):
    out.append(("call", m.group(1)))
  return out


def _payload(line: str) -> tuple[str, int]:
  """The result types of a collective and their total bytes per device."""
  result = line.split("=", 1)[1].strip()
  result = result.split(" all-", 1)[0].split(" reduce-scatter", 1)[0].split(" collective-permute", 1)[0]
  total, types = 0, []
  for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", result):
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    total += n * _DTYPE_BYTES.get(dtype, 4)
    types.append(f"{dtype}[{dims}]")
  summary = Counter(types)
  return " + ".join(f"{c}x {t}" if c > 1 else t for t, c in summary.items()), total


def collectives_by_context(hlo: str) -> dict[str, list[tuple[str, str, int]]]:
  """Collectives grouped by where they run: a path of 'branch' and 'loop' edges from ENTRY."""
  comps = _computations(hlo)
  found: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
  seen = set()

  def visit(name: str, context: tuple[str, ...]) -> None:
    if (name, context) in seen or name not in comps:
      return
    seen.add((name, context))
    for line in comps[name]:
      for kind in KINDS:
        if f" {kind}(" in line or f" {kind}-start(" in line:
          found[" > ".join(context) or "every step"].append((kind, *_payload(line)))
      for edge, callee in _callees(line):
        visit(callee, context + ((edge,) if edge != "call" else ()))

  visit("ENTRY", ())
  return dict(found)


_CONTEXT_NAMES = {
  "every step": "every step",
  "branch": "once per refresh",
  "branch > loop": "per threshold-search round (refresh)",
  "branch > branch": "once per refresh, when ties split",
  "branch > branch > loop": "per tie-search round (refresh, ties split)",
  "branch > branch > loop > branch": "per tie-search round (refresh, ties split)",
}


def report(title: str, hlo: str) -> None:
  print(f"\n{title}")
  print(f"{'runs':44s} {'collectives':>11s} {'bytes/device':>12s}  each")
  groups = collectives_by_context(hlo)
  if not groups:
    print("  (no collectives)")
  for context, items in sorted(groups.items(), key=lambda kv: len(kv[0])):
    for (kind, types, nbytes), count in Counter(items).items():
      where = _CONTEXT_NAMES.get(context, context)
      print(f"{where:44s} {count:11d} {count * nbytes:12d}  {kind} {types}")


def main() -> None:
  args = _parse_args()
  os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={args.devices}")
  import jax
  import jax.numpy as jnp
  import optax
  from jax.sharding import AxisType, NamedSharding
  from jax.sharding import PartitionSpec as P

  import cyclax

  if jax.device_count() != args.devices:
    sys.exit(f"expected {args.devices} devices, got {jax.device_count()} (set XLA_FLAGS before running)")
  keys = jax.random.split(jax.random.key(0), args.leaves)
  params = {f"w{i}": jax.random.normal(k, (args.width, args.width)) for i, k in enumerate(keys)}
  params["bias"] = jnp.zeros(args.width)
  # Alternate row- and column-split kernels (as in tensor-parallel MLPs); the bias is replicated.
  specs = {k: (P("x", None) if i % 2 == 0 else P(None, "x")) for i, k in enumerate(params) if k != "bias"}
  specs["bias"] = P()
  dims = {k: (None if k == "bias" else (0 if i % 2 == 0 else 1)) for i, k in enumerate(params)}
  n = sum(v.size for k, v in params.items() if k != "bias")
  print(f"{args.leaves} pruned float32 kernels of {args.width}x{args.width} ({n:,} weights, {4 * n:,} bytes)")
  print(
    f"split over {args.devices} CPU devices, jax {jax.__version__}; a refresh runs every update_every steps"
  )

  for mode in ("jit", "shard_map"):
    mesh = jax.make_mesh((args.devices,), ("x",), axis_types=(AxisType.Explicit,))
    with jax.set_mesh(mesh):
      sharded = jax.device_put(params, {k: NamedSharding(mesh, s) for k, s in specs.items()})
      if mode == "jit":
        tx = optax.chain(optax.adam(1e-3), cyclax.magnitude_prune(0.9, update_every=100))
      else:
        tx = optax.chain(
          optax.adam(1e-3), cyclax.magnitude_prune(0.9, update_every=100, axis_name="x", sharded_dims=dims)
        )
      state = jax.jit(tx.init)(sharded)

      def step(params, state, grads, tx=tx):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

      if mode == "shard_map":
        state_specs = jax.tree.map(lambda a: jax.typeof(a).sharding.spec, state)
        step = jax.shard_map(
          step, mesh=mesh, in_specs=(specs, state_specs, specs), out_specs=(specs, state_specs)
        )
      hlo = jax.jit(step).lower(sharded, state, sharded).compile().as_text()
    title = "jax.jit, NamedSharding inputs" if mode == "jit" else "jax.shard_map, axis_name='x'"
    report(title, hlo)


if __name__ == "__main__":
  main()
