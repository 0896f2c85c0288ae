"""Exact magnitude selection without sorting.

Given a leaf of scores and a traced number ``k``, find the ``k`` entries to
prune: the ``k`` smallest ``|x|``, with ties at the threshold broken toward the
lower row-major (C-order) index, so the result equals pruning the first ``k``
entries of ``numpy.argsort(abs(x).ravel(), kind="stable")``.

Non-negative IEEE floats order like their bit patterns read as signed integers,
so the ``k``-th smallest ``|x|`` is found by bisection on integers: every round
is one pass that counts entries below a candidate, and the kernel never sorts,
gathers, reshapes or materialises anything bigger than the leaf's mask. NaN ranks
above +inf (all NaNs equal), so a NaN is always kept and the number pruned stays
exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

# Sparsity is quantised to a multiple of 2**-24 before it is multiplied by a
# leaf's size; float32 holds every value in [0.5, 1) exactly at that resolution.
_FIXED_BITS = 24

_INT_FOR_FLOAT = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}


def score_bits(x: jax.Array) -> jax.Array:
  """Signed-integer keys that order like ``|x|`` (NaN above +inf)."""
  dtype = jnp.dtype(x.dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"scores must be floating point, got {dtype}.")
  int_dtype = _INT_FOR_FLOAT[dtype.itemsize]
  bits = lax.bitcast_convert_type(jnp.abs(x), int_dtype)
  top = jnp.array(np.iinfo(int_dtype).max, int_dtype)
  return jnp.where(jnp.isnan(x), top, bits)


def _num_bits(dtype: jnp.dtype) -> int:
  return jnp.dtype(dtype).itemsize * 8


def num_to_prune(sparsity: ArrayLike, size: int) -> jax.Array:
  """The number of entries pruned from a leaf of ``size`` entries.

  The rounding rule, used everywhere in cyclax: ``k = floor(s * size + 1/2)``
  where ``s`` is the sparsity clipped to [0, 1] and rounded to a multiple of
  ``2**-24``. The product is formed exactly in int32 pieces, so ``k`` is exact
  for every size below ``2**31``.

  Args:
    sparsity: scalar sparsity (may be traced).
    size: the static number of entries in the leaf.

  Returns:
    int32 scalar ``k`` with ``0 <= k <= size``.
  """
  size = int(size)
  if not 0 <= size < 2**31:
    raise ValueError(f"leaf size must be in [0, 2**31), got {size}.")
  s = jnp.clip(jnp.asarray(sparsity, jnp.float32), 0.0, 1.0)
  s_fixed = jnp.round(s * float(2**_FIXED_BITS)).astype(jnp.int32)
  high, low = size >> _FIXED_BITS, size & (2**_FIXED_BITS - 1)
  low1, low0 = low >> 12, low & 0xFFF
  s1, s0 = s_fixed >> 12, s_fixed & 0xFFF
  # s_fixed * low = s1*low1*2^24 + (s1*low0 + s0*low1)*2^12 + s0*low0, kept below 2^31.
  middle = s1 * low0 + s0 * low1
  tail = ((middle & 0xFFF) << 12) + s0 * low0 + 2 ** (_FIXED_BITS - 1)
  return s_fixed * high + s1 * low1 + (middle >> 12) + (tail >> _FIXED_BITS)


def _midpoint(lo: jax.Array, hi: jax.Array) -> jax.Array:
  """``floor((lo + hi) / 2)`` without overflowing the integer type."""
  return (lo & hi) + ((lo ^ hi) >> 1)


def _count(pred: jax.Array) -> jax.Array:
  return jnp.sum(pred, dtype=jnp.int32)


def _flat_index(shape: Sequence[int]) -> jax.Array:
  """Row-major position of every entry, built from iotas (no reshape)."""
  index = jnp.zeros(shape, jnp.int32)
  stride = 1
  for axis in reversed(range(len(shape))):
    index = index + lax.broadcasted_iota(jnp.int32, shape, axis) * stride
    stride *= shape[axis]
  return index


def kth_smallest_bits(bits: Sequence[jax.Array], ks: Sequence[jax.Array]) -> list[jax.Array]:
  """Per leaf, the smallest key ``t`` with ``count(bits <= t) >= k``.

  All leaves are searched together in one loop of ``B - 1`` rounds (``B`` the
  key width), each round one counting pass over every leaf. For ``k = 0`` the
  result is a key at or below every entry's key, and nothing is pruned.
  """
  bits, ks = list(bits), list(ks)
  if not bits:
    return []
  rounds = max(_num_bits(b.dtype) - 1 for b in bits)

  def body(_, bounds):
    new = []
    for b, k, (lo, hi) in zip(bits, ks, bounds):
      mid = _midpoint(lo, hi)
      enough = _count(b <= mid.astype(b.dtype)) >= k
      new.append((jnp.where(enough, lo, mid), jnp.where(enough, mid, hi)))
    return new

  init = []
  for b in bits:
    top = np.iinfo(b.dtype).max
    # Bounds live in int32/int64 so that ``lo = -1`` and midpoints never overflow.
    wide = jnp.int64 if b.dtype == jnp.int64 else jnp.int32
    init.append((jnp.array(-1, wide), jnp.array(top, wide)))
  bounds = lax.fori_loop(0, rounds, body, init)
  return [hi.astype(b.dtype) for b, (_, hi) in zip(bits, bounds)]


def prune_masks_from_bits(bits: Sequence[jax.Array], ks: Sequence[jax.Array]) -> list[jax.Array]:
  """Keep-masks that prune exactly ``ks[i]`` entries of leaf ``i``.

  Entries with a key below the threshold are pruned; of the entries equal to it,
  the ones with the lowest row-major index are pruned until the count is met.
  Ties are resolved by a second bisection over the flat index, run (for all
  leaves at once) only when some leaf has more ties than it needs to prune.
  """
  bits = list(bits)
  ks = [jnp.asarray(k, jnp.int32) for k in ks]
  thresholds = kth_smallest_bits(bits, ks)
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

    # Smallest cut J with count(eq & pos < J) >= r; J lies in (lo, hi].
    init = [(jnp.array(-1, jnp.int32), jnp.array(b.size, jnp.int32)) for b in bits]
    bounds = lax.fori_loop(0, rounds, body, init)
    return [
      jnp.logical_not(jnp.logical_or(lo, jnp.logical_and(eq, pos < hi)))
      for lo, eq, pos, (_, hi) in zip(below, at, positions, bounds)
    ]

  return lax.cond(ambiguous, index_cut, simple_cut)


def prune_masks(scores: Sequence[jax.Array], ks: Sequence[ArrayLike]) -> list[jax.Array]:
  """Keep-masks pruning exactly ``ks[i]`` smallest-magnitude entries of ``scores[i]``.

  Args:
    scores: floating-point arrays (any shape, float16/bfloat16/float32/float64).
    ks: per leaf, the number of entries to prune, ``0 <= k <= size`` (may be
      traced).

  Returns:
    Boolean arrays shaped like ``scores``: True where an entry is kept.

  Example:
    >>> import jax.numpy as jnp
    >>> from cyclax import _select
    >>> [mask] = _select.prune_masks([jnp.array([0.3, -0.1, 0.2, 0.1])], [2])
    >>> mask.tolist()
    [True, False, True, False]
  """
  scores = list(scores)
  if not scores:
    return []
  return prune_masks_from_bits([score_bits(s) for s in scores], list(ks))
