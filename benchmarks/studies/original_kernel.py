"""How much faster is the kernel than the first cyclax kernel, kept here verbatim?

Usage:
  python benchmarks/studies/original_kernel.py --tree 10x1m --repeats 5

The first kernel ran 31 rounds (15 for 16-bit leaves) of bisection on the
integer keys, each round one ``jnp.sum`` count per leaf over keys materialised
before the loop, and a second bisection over a materialised row-major index
when ties split. Both kernels compute the same exact per-leaf masks at 90%
sparsity; the script checks that, then times them interleaved.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cyclax import _exact, _select
from cyclax._keys import score_bits


def _midpoint(lo, hi):
  return (lo & hi) + ((lo ^ hi) >> 1)


def _count(pred):
  return jnp.sum(pred, dtype=jnp.int32)


def _flat_index(shape):
  index = jnp.zeros(shape, jnp.int32)
  stride = 1
  for axis in reversed(range(len(shape))):
    index = index + lax.broadcasted_iota(jnp.int32, shape, axis) * stride
    stride *= shape[axis]
  return index


def _kth_smallest_bits(bits, ks):
  rounds = max(b.dtype.itemsize * 8 - 1 for b in bits)

  def body(_, bounds):
    new = []
    for b, k, (lo, hi) in zip(bits, ks, bounds):
      mid = _midpoint(lo, hi)
      enough = _count(b <= mid.astype(b.dtype)) >= k
      new.append((jnp.where(enough, lo, mid), jnp.where(enough, mid, hi)))
    return new

  init = [(jnp.array(-1, jnp.int32), jnp.array(np.iinfo(b.dtype).max, jnp.int32)) for b in bits]
  bounds = lax.fori_loop(0, rounds, body, init)
  return [hi.astype(b.dtype) for b, (_, hi) in zip(bits, bounds)]


def prune_masks(scores, ks):
  """Keep-masks, exactly ``ks[i]`` pruned per leaf (ties lowest index first)."""
  bits = [score_bits(s) for s in scores]
  ks = [jnp.asarray(k, jnp.int32) for k in ks]
  thresholds = _kth_smallest_bits(bits, ks)
  below = [b < t for b, t in zip(bits, thresholds)]
  at = [b == t for b, t in zip(bits, thresholds)]
  need = [k - _count(m) for k, m in zip(ks, below)]
  ambiguous = jnp.any(jnp.stack([_count(a) != r for a, r in zip(at, need)]))

  def simple_cut():
    return [jnp.logical_not(jnp.logical_or(lo, eq)) for lo, eq in zip(below, at)]

  def index_cut():
    positions = [_flat_index(b.shape) for b in bits]
    rounds = max(max(int(np.ceil(np.log2(b.size + 1))), 1) for b in bits)

    def body(_, bounds):
      new = []
      for eq, pos, r, (lo, hi) in zip(at, positions, need, bounds):
        mid = _midpoint(lo, hi)
        enough = _count(jnp.logical_and(eq, pos < mid)) >= r
        new.append((jnp.where(enough, lo, mid), jnp.where(enough, mid, hi)))
      return new

    init = [(jnp.array(-1, jnp.int32), jnp.array(b.size, jnp.int32)) for b in bits]
    bounds = lax.fori_loop(0, rounds, body, init)
    return [
      jnp.logical_not(jnp.logical_or(lo, jnp.logical_and(eq, pos < hi)))
      for lo, eq, pos, (_, hi) in zip(below, at, positions, bounds)
    ]

  return lax.cond(ambiguous, index_cut, simple_cut)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tree", default="10x1m")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/_common.py
  import _common

  leaves = _common.prunable(_common.make_tree(args.tree))
  ks = [_exact.num_to_prune(0.9, x.size) for x in leaves]
  fns = {
    "cyclax": jax.jit(lambda ls: _select.prune_masks(ls, ks)),
    "original kernel": jax.jit(lambda ls: prune_masks(ls, ks)),
  }
  for a, b in zip(fns["cyclax"](leaves), fns["original kernel"](leaves)):
    assert bool(jnp.array_equal(a, b)), "the kernels disagree"
  times = _common.time_interleaved(
    {n: (lambda f=f: f(leaves)) for n, f in fns.items()}, args.repeats, settle=1
  )
  print(f"tree {args.tree}: {len(leaves)} pruned leaves, {_common.count_params(leaves) / 1e6:.1f}M params")
  print(_common.machine())
  rows = [[n, _common.fmt_time(t), _common.fmt_ratio(t, times["cyclax"])] for n, t in times.items()]
  _common.print_table(["per-leaf refresh", "time", "time / cyclax"], rows)


if __name__ == "__main__":
  main()
