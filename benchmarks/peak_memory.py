"""How much memory does a global refresh of a big tree need beyond params and masks?

Usage:
  python benchmarks/peak_memory.py --tree 1b

Each measurement runs in a fresh subprocess (``ru_maxrss`` is a high-water mark):
it creates the float32 params, records the resident set, then runs one refresh
at 90% sparsity (global: ``cyclax._select.global_prune_masks``; per leaf:
``prune_masks``) and records the peak resident set of that phase (``VmHWM`` of
/proc/self/status, reset through /proc/self/clear_refs after the params are
built, since building them has its own temporaries). The table compares the
growth of the peak over the process before the params existed with the bytes of
params + masks, in two settings: the refresh compiled inside the measured phase
(so the peak includes XLA's compiler), and compiled from shapes alone before the
params exist (the peak of running it, as in a training loop whose step was
compiled before the loop).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import _common


def child(tree: str, what: str, compile_first: bool) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from cyclax import _select

  def status(field):
    with open("/proc/self/status") as f:
      return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

  jax.numpy.zeros(1).block_until_ready()  # runtime up
  shapes = [s for s in _common.tree_shapes(tree).values() if _common.is_prunable(s)]
  sizes = [int(np.prod(s)) for s in shapes]
  if what == "global":
    k = _select.num_to_prune_total(0.9, sizes)
    fn = jax.jit(lambda ls: _select.global_prune_masks(ls, k))
  else:
    ks = [_select.num_to_prune(0.9, n) for n in sizes]
    fn = jax.jit(lambda ls: _select.prune_masks(ls, ks))
  if compile_first:
    # Compile from shapes alone, before the params exist: the peak then covers running the
    # refresh only (in a training loop the step is compiled once, before the loop).
    fn = fn.lower([jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]).compile()
  base = status("VmRSS")
  leaves = _common.prunable(_common.make_tree(tree))
  params_bytes = sum(x.size * x.dtype.itemsize for x in leaves)
  after_params = status("VmRSS")
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the high-water mark VmHWM: params creation had its own temporaries
  n = sum(x.size for x in leaves)
  masks = jax.block_until_ready(fn(leaves))
  mask_bytes = sum(m.size for m in masks)
  print(
    "RESULT"
    + json.dumps(
      dict(
        base=base,
        after_params=after_params,
        peak=status("VmHWM"),
        params_bytes=params_bytes,
        mask_bytes=mask_bytes,
        n=n,
      )
    )
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tree", choices=_common.TREES, default="1b")
  parser.add_argument("--child", default=None)
  parser.add_argument("--compile-first", action="store_true")
  args = parser.parse_args()
  if args.child:
    child(args.tree, args.child, args.compile_first)
    return
  print(_common.machine())
  rows = []
  for what, compile_first in [("global", False), ("per_leaf", False), ("global", True), ("per_leaf", True)]:
    cmd = [sys.executable, os.path.abspath(__file__), "--tree", args.tree, "--child", what]
    cmd += ["--compile-first"] if compile_first else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    r = json.loads([x for x in out.splitlines() if x.startswith("RESULT")][0][len("RESULT") :])
    need = r["params_bytes"] + r["mask_bytes"]
    grown = r["peak"] - r["base"]
    gib = lambda b: f"{b / 2**30:.2f} GiB"
    rows.append(
      [
        what,
        "before the params exist" if compile_first else "in the measured phase",
        f"{r['n'] / 1e9:.2f}B",
        gib(r["params_bytes"]),
        gib(r["mask_bytes"]),
        gib(r["peak"]),
        gib(grown),
        f"{grown / need:.3f}x",
      ]
    )
  print(f"\ntree {args.tree}, float32, refresh at sparsity 0.9 (peak RSS: VmHWM)")
  _common.print_table(
    [
      "refresh",
      "compiled",
      "params",
      "params bytes",
      "mask bytes",
      "peak RSS",
      "peak - RSS before params",
      "(peak - before) / (params + masks)",
    ],
    rows,
  )


if __name__ == "__main__":
  main()
