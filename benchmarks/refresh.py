"""How long does one mask refresh take, per leaf and global, against sort-based selection?

Usage:
  python benchmarks/refresh.py --tree 10x1m --repeats 7
  python benchmarks/refresh.py --tree 100m --repeats 5 --baseline-fraction 0.1
  python benchmarks/refresh.py --tree 1b --repeats 3 --baseline-fraction 0.01

Every row computes exact keep-masks at 90% sparsity for all ``ndim >= 2`` leaves.
The sort baselines on the big trees run on a leading subset of the leaves (the
``--baseline-fraction`` of the parameters) and are scaled up linearly by the
parameter count, which flatters them (sorting is n log n): the table marks them.
"""

from __future__ import annotations

import _common
import jax
import jax.numpy as jnp
from jax import lax

from cyclax import _exact, _select

SPARSITY = 0.9
FLOOR = "floor: jnp.sum(|x| > c)"
FUSED = "floor: fused count"


def _flat_abs(x):
  return jnp.abs(x).reshape(-1)


def sort_threshold(leaves, ks):
  masks = []
  for x, k in zip(leaves, ks):
    t = jnp.sort(_flat_abs(x))[jnp.maximum(k - 1, 0)]
    masks.append(jnp.abs(x) > t)
  return masks


def top_k_exact(leaves, ks_static):
  masks = []
  for x, k in zip(leaves, ks_static):
    _, idx = lax.top_k(_flat_abs(x), x.size - k)
    masks.append(jnp.zeros(x.size, jnp.bool_).at[idx].set(True).reshape(x.shape))
  return masks


def argsort_exact(leaves, ks):
  masks = []
  for x, k in zip(leaves, ks):
    order = jnp.argsort(_flat_abs(x), stable=True)
    pruned = jnp.arange(x.size) < k
    masks.append(jnp.ones(x.size, jnp.bool_).at[order].set(~pruned).reshape(x.shape))
  return masks


def _split(flat, leaves):
  out, start = [], 0
  for x in leaves:
    out.append(lax.dynamic_slice_in_dim(flat, start, x.size).reshape(x.shape))
    start += x.size
  return out


def global_sort_threshold(leaves, k):
  flat = jnp.concatenate([_flat_abs(x) for x in leaves])
  t = jnp.sort(flat)[k - 1]
  return [jnp.abs(x) > t for x in leaves]


def global_top_k(leaves, k_static):
  flat = jnp.concatenate([_flat_abs(x) for x in leaves])
  _, idx = lax.top_k(flat, flat.size - k_static)
  return _split(jnp.zeros(flat.size, jnp.bool_).at[idx].set(True), leaves)


def global_argsort(leaves, k):
  flat = jnp.concatenate([_flat_abs(x) for x in leaves])
  order = jnp.argsort(flat, stable=True)
  pruned = jnp.arange(flat.size) < k
  return _split(jnp.ones(flat.size, jnp.bool_).at[order].set(~pruned), leaves)


def floor_sum(leaves, c):
  return sum(jnp.sum(jnp.abs(x) > c, dtype=jnp.int32) for x in leaves)


def floor_fused(leaves, c):
  return sum(_select.count_true([jnp.abs(x) > c])[0] for x in leaves)


def main():
  parser = _common.tree_timing_parser(__doc__, 5, "comma-separated parts of row names to leave out")
  parser.add_argument("--baseline-fraction", type=float, default=1.0)
  args = parser.parse_args()
  skip = set(filter(None, args.skip.split(",")))

  leaves = _common.prunable(_common.make_tree(args.tree))
  n_total = _common.count_params(leaves)
  subset, n_sub = [], 0
  for x in leaves:
    if subset and n_sub >= args.baseline_fraction * n_total:
      break
    subset.append(x)
    n_sub += x.size
  scale = n_total / n_sub
  ks = [_exact.num_to_prune(SPARSITY, x.size) for x in leaves]
  ks_sub = [int(_exact.num_to_prune(SPARSITY, x.size)) for x in subset]
  k_total = _exact.num_to_prune_total(SPARSITY, [x.size for x in leaves])
  k_sub = _exact.to_int(_exact.num_to_prune_total(SPARSITY, [n_sub]))
  c = jnp.float32(0.02 * 1.645)

  jit = jax.jit
  fns = {
    "cyclax": (jit(lambda ls: _select.prune_masks(ls, ks)), leaves, 1),
    "jnp.sort threshold": (jit(lambda ls: sort_threshold(ls, ks_sub)), subset, scale),
    "lax.top_k exact": (jit(lambda ls: top_k_exact(ls, ks_sub)), subset, scale),
    "argsort + index tie-break": (jit(lambda ls: argsort_exact(ls, ks_sub)), subset, scale),
    FLOOR: (jit(lambda ls: floor_sum(ls, c)), leaves, 1),
    FUSED: (jit(lambda ls: floor_fused(ls, c)), leaves, 1),
  }
  gfns = {
    "cyclax global": (jit(lambda ls: _select.global_prune_masks(ls, k_total)), leaves, 1),
    "global jnp.sort threshold": (jit(lambda ls: global_sort_threshold(ls, k_sub)), subset, scale),
    "global lax.top_k exact": (jit(lambda ls: global_top_k(ls, k_sub)), subset, scale),
    "global argsort + index tie-break": (jit(lambda ls: global_argsort(ls, k_sub)), subset, scale),
  }
  all_fns = {name: spec for name, spec in (fns | gfns).items() if not any(t.strip() in name for t in skip)}
  calls = {name: (lambda f=f, ls=ls: f(ls)) for name, (f, ls, _) in all_fns.items()}
  times = _common.time_interleaved(calls, args.repeats, settle=args.settle)
  times = {name: t * all_fns[name][2] for name, t in times.items()}

  print(f"tree {args.tree}: {len(leaves)} pruned leaves, {n_total / 1e6:.1f}M params, sparsity {SPARSITY}")
  print(_common.machine())
  if scale != 1:
    print(
      f"rows marked * ran on the first {len(subset)} leaves ({n_sub / 1e6:.1f}M params), "
      f"times scaled x{scale:.1f}"
    )
  for title, names, ref in (
    ("per leaf", fns, "cyclax"),
    ("global", gfns, "cyclax global"),
  ):
    names = [n for n in names if n in times]
    if ref not in times:
      continue
    print(
      f"\n{title} (median [min-max] of {args.repeats} repeats, each after {args.settle} untimed call(s) "
      "of the same function; ratios per repeat, same run)"
    )
    rows = []
    for name in names:
      star = "*" if all_fns[name][2] != 1 else ""
      rows.append(
        [
          name + star,
          _common.fmt_time(times[name]),
          _common.fmt_ratio(times[name], times[ref]),
          _common.fmt_ratio(times[ref], times[FLOOR]) if name == ref and FLOOR in times else "",
          _common.fmt_ratio(times[ref], times[FUSED]) if name == ref and FUSED in times else "",
        ]
      )
    header = ["method", "time", f"time / {ref}", "cyclax / floor jnp.sum", "cyclax / floor fused count"]
    _common.print_table(header, rows)


if __name__ == "__main__":
  main()
