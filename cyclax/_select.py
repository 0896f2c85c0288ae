"""Exact magnitude selection without sorting, at a handful of memory passes.

Given a leaf of scores and a traced number ``k``, find the ``k`` entries to
prune: the ``k`` smallest ``|x|``, with ties at the threshold broken toward the
lower row-major (C-order) index, so the result equals pruning the first ``k``
entries of ``numpy.argsort(abs(x).ravel(), kind="stable")``. NaN ranks above
+inf (all NaNs equal), so a NaN is always kept and the number pruned stays exact.

Non-negative IEEE floats order like their bit patterns read as integers, so the
``k``-th smallest ``|x|`` is found by searching integer keys. The default search
is radix-4: every pass counts the entries at or below three candidate keys in
ONE fused reduction (a variadic ``lax.reduce``), which reads the leaf once and
shrinks the candidate interval four-fold, so a 32-bit leaf needs 16 passes and a
16-bit leaf 8. The plain bisection (``method="bisect"``, one threshold per pass)
and radix-8 are kept for comparison. Ties are resolved by the same search over
the row-major index, run only when some leaf needs part of its ties.

Every count goes through :func:`count_true`, which can ``lax.psum`` the counts
over a named mapped axis, so the kernel runs unchanged on shards inside
``shard_map``. Under ``jit`` with sharded inputs the reductions become local
reductions plus all-reduces of scalars: nothing is gathered, sorted, reshaped or
allocated beyond the masks.

:func:`global_prune_masks` picks one threshold over many leaves (mixed dtypes
compared exactly in a common float domain) with counts that stay exact beyond
``2**31`` entries in total, kept as two int32 limbs (:class:`Count`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

# Sparsity is quantised to a multiple of 2**-24 before it is multiplied by a
# leaf's size; float32 holds every value in [0.5, 1) exactly at that resolution.
_FIXED_BITS = 24
_LIMB_BITS = 24
_LIMB_MASK = 2**_LIMB_BITS - 1

_INT_FOR_FLOAT = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}
_WAYS = {"bisect": 2, "radix4": 4, "radix8": 8}
DEFAULT_METHOD = "radix4"

AxisName = Optional[Union[str, tuple[str, ...]]]


def score_bits(x: jax.Array) -> jax.Array:
  """Signed-integer keys that order like ``|x|`` (NaN above +inf)."""
  dtype = jnp.dtype(x.dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"scores must be floating point, got {dtype}.")
  int_dtype = _INT_FOR_FLOAT[dtype.itemsize]
  bits = lax.bitcast_convert_type(jnp.abs(x), int_dtype)
  top = jnp.array(np.iinfo(int_dtype).max, int_dtype)
  return jnp.where(jnp.isnan(x), top, bits)


def _fixed_sparsity(sparsity: ArrayLike) -> jax.Array:
  s = jnp.clip(jnp.asarray(sparsity, jnp.float32), 0.0, 1.0)
  return jnp.round(s * float(2**_FIXED_BITS)).astype(jnp.int32)


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

  Raises:
    ValueError: if ``size`` is outside ``[0, 2**31)``.

  Example:
    >>> import cyclax
    >>> int(cyclax.num_to_prune(0.9, 1000)), int(cyclax.num_to_prune(0.5, 3))
    (900, 2)
  """
  size = int(size)
  if not 0 <= size < 2**31:
    raise ValueError(f"leaf size must be in [0, 2**31), got {size}.")
  s_fixed = _fixed_sparsity(sparsity)
  high, low = size >> _FIXED_BITS, size & (2**_FIXED_BITS - 1)
  low1, low0 = low >> 12, low & 0xFFF
  s1, s0 = s_fixed >> 12, s_fixed & 0xFFF
  # s_fixed * low = s1*low1*2^24 + (s1*low0 + s0*low1)*2^12 + s0*low0, kept below 2^31.
  middle = s1 * low0 + s0 * low1
  tail = ((middle & 0xFFF) << 12) + s0 * low0 + 2 ** (_FIXED_BITS - 1)
  return s_fixed * high + s1 * low1 + (middle >> 12) + (tail >> _FIXED_BITS)


class Count(NamedTuple):
  """An exact non-negative integer ``hi * 2**24 + lo`` held in two int32 scalars.

  Counts over many leaves can exceed ``2**31``; every per-leaf count fits in
  int32, and sums are carried into ``hi`` so that ``0 <= lo < 2**24``.
  Values up to ``2**55`` are exact.
  """

  hi: jax.Array
  lo: jax.Array


def as_count(value: Union[int, ArrayLike, Count]) -> Count:
  """A :class:`Count` from a Python int (any size), an int32 scalar, or a Count."""
  if isinstance(value, Count):
    return value
  if isinstance(value, (int, np.integer)):
    value = int(value)
    if not 0 <= value < 2**55:
      raise ValueError(f"a count must lie in [0, 2**55), got {value}.")
    return Count(jnp.asarray(value >> _LIMB_BITS, jnp.int32), jnp.asarray(value & _LIMB_MASK, jnp.int32))
  v = jnp.maximum(jnp.asarray(value, jnp.int32), 0)
  return Count(v >> _LIMB_BITS, v & _LIMB_MASK)


def count_to_int(count: Count) -> int:
  """The Python int held by a concrete :class:`Count`."""
  return (int(count.hi) << _LIMB_BITS) + int(count.lo)


def _count_add(a: Count, b: Count) -> Count:
  lo = a.lo + b.lo
  return Count(a.hi + b.hi + (lo >> _LIMB_BITS), lo & _LIMB_MASK)


def _count_sub(a: Count, b: Count) -> Count:
  """``a - b`` for ``a >= b``."""
  lo = a.lo - b.lo
  borrow = (lo < 0).astype(jnp.int32)
  return Count(a.hi - b.hi - borrow, lo + borrow * 2**_LIMB_BITS)


def _count_less(a: Count, b: Count) -> jax.Array:
  return jnp.logical_or(a.hi < b.hi, jnp.logical_and(a.hi == b.hi, a.lo < b.lo))


def _count_sum(values: Sequence[jax.Array]) -> Count:
  """Exact sum of int32 scalars in ``[0, 2**31)`` as a :class:`Count`."""
  total = Count(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32))
  for v in values:
    total = _count_add(total, Count(v >> _LIMB_BITS, v & _LIMB_MASK))
  return total


def _count_clip_int32(value: Count, upper: jax.Array) -> jax.Array:
  """``min(value, upper)`` as int32, for ``0 <= upper < 2**31``."""
  big = value.hi >= 2 ** (31 - _LIMB_BITS)
  small = (jnp.where(big, 0, value.hi) << _LIMB_BITS) + value.lo
  return jnp.where(big, upper, jnp.minimum(small, upper))


def num_to_prune_total(sparsity: ArrayLike, sizes: Sequence[int]) -> Count:
  """The number of entries pruned over leaves of ``sizes`` entries together.

  The same rounding rule as :func:`num_to_prune`, ``floor(s * N + 1/2)`` with
  ``N = sum(sizes)`` and ``s`` clipped to [0, 1] and rounded to a multiple of
  ``2**-24``, computed exactly for ``N`` up to ``2**48`` (past int32) in 12-bit
  digits.

  Args:
    sparsity: scalar sparsity (may be traced).
    sizes: static leaf sizes.

  Returns:
    The count as a :class:`Count` (two int32 limbs).

  Raises:
    ValueError: if a size is negative or the total is ``2**48`` or more.

  Example:
    >>> from cyclax import _select
    >>> k = _select.num_to_prune_total(0.5, [2**31, 2**31, 5])  # past int32
    >>> _select.count_to_int(k)  # floor(0.5 * (2**32 + 5) + 1/2)
    2147483651
  """
  sizes = [int(n) for n in sizes]
  if any(n < 0 for n in sizes):
    raise ValueError(f"leaf sizes must be non-negative, got {sizes}.")
  total = sum(sizes)
  if total >= 2**48:
    raise ValueError(f"the total number of entries must be below 2**48, got {total}.")
  s = _fixed_sparsity(sparsity)
  s_digits = [s & 0xFFF, (s >> 12) & 0xFFF, s >> 24]
  n_digits = [(total >> (12 * j)) & 0xFFF for j in range(4)]
  # Schoolbook product in base 2**12; every partial sum stays below 2**27.
  digits = [jnp.zeros([], jnp.int32) for _ in range(8)]
  for i, sd in enumerate(s_digits):
    for j, nd in enumerate(n_digits):
      if nd:
        digits[i + j] = digits[i + j] + sd * nd
  digits[1] = digits[1] + 2**11  # + 2**23, the rounding half
  carry = jnp.zeros([], jnp.int32)
  for d in range(8):
    value = digits[d] + carry
    digits[d], carry = value & 0xFFF, value >> 12
  # Dropping digits 0-1 divides by 2**24; digits 2-3 form lo, 4-7 hi (below 2**24 since N < 2**48).
  lo = digits[2] + (digits[3] << 12)
  hi = digits[4] + (digits[5] << 12)
  return Count(hi, lo)


def count_true(preds: Sequence[jax.Array], axis_name: AxisName = None) -> list[jax.Array]:
  """Number of True entries of each predicate, in one fused pass.

  The predicates (same shape) are reduced by ONE variadic ``lax.reduce``, so the
  data they are computed from is read once. With ``axis_name`` the counts are
  summed over that mapped axis (``lax.psum``): every count in the kernel goes
  through here, which is what makes it run on shards.

  Args:
    preds: boolean arrays of one shape.
    axis_name: optional name of a mapped axis (``shard_map``/``pmap``) to sum over.

  Returns:
    One int32 scalar per predicate.
  """
  preds = list(preds)
  ops = [p.astype(jnp.int32) for p in preds]
  # XLA:CPU rewrites a single-operand sum into a tree of reduce-windows over a materialised
  # int32 copy of the predicate (slow, and leaf-sized); a variadic reduce stays one fused
  # loop. So a single count is padded with a second one, kept alive (XLA drops unused outputs).
  padded = len(ops) == 1
  if padded:
    ops.append(jnp.logical_not(preds[0]).astype(jnp.int32))
  zeros = tuple(jnp.zeros([], jnp.int32) for _ in ops)
  dims = tuple(range(ops[0].ndim))
  counts = list(lax.reduce(tuple(ops), zeros, lambda a, b: tuple(x + y for x, y in zip(a, b)), dims))
  if padded:
    # ``count + count(not pred) - count(not pred)``: exact, and XLA does not fold it.
    counts = [(counts[0] + counts[1]) - counts[1]]
  if axis_name is not None:
    counts = list(lax.psum(counts, axis_name))
  return counts


def _flat_index(shape: Sequence[int]) -> jax.Array:
  """Row-major position of every entry, built from iotas (no reshape)."""
  index = jnp.zeros(shape, jnp.int32)
  stride = 1
  for axis in reversed(range(len(shape))):
    index = index + lax.broadcasted_iota(jnp.int32, shape, axis) * stride
    stride *= shape[axis]
  return index


class _Layout(NamedTuple):
  """Where a leaf's local block lies in the whole leaf.

  Without a mapped axis the block is the whole leaf. Inside ``shard_map`` (or
  ``pmap``) a leaf split along ``dim`` over the mapped ``axis`` holds block
  ``axis_index(axis)`` of that dimension; its counts are summed over ``axis``
  and ties are ranked by the row-major index in the whole leaf.
  """

  shape: tuple[int, ...]
  axis: AxisName = None
  dim: int = 0

  @property
  def size(self) -> int:
    """Entries in the whole leaf."""
    parts = 1 if self.axis is None else lax.axis_size(self.axis)
    return int(np.prod(self.shape, dtype=np.int64)) * parts

  def _coords(self) -> tuple[list[int], list[jax.Array]]:
    whole = list(self.shape)
    coords = [lax.broadcasted_iota(jnp.int32, self.shape, d) for d in range(len(self.shape))]
    if self.axis is not None:
      whole[self.dim] *= lax.axis_size(self.axis)
      offset = lax.axis_index(self.axis).astype(jnp.int32) * self.shape[self.dim]
      coords[self.dim] = coords[self.dim] + offset
    return whole, coords

  def index(self) -> jax.Array:
    """Row-major position of every local entry in the whole leaf, from iotas."""
    whole, coords = self._coords()
    index = jnp.zeros(self.shape, jnp.int32)
    stride = 1
    for d in reversed(range(len(self.shape))):
      index = index + coords[d] * stride
      stride *= whole[d]
    return index

  def before(self, j: jax.Array) -> jax.Array:
    """``index() < j`` for a scalar ``0 <= j <= size``, compared digit by digit.

    The index itself is never formed: inside a loop it would be loop-invariant
    and XLA would hoist it into a leaf-sized int32 array.
    """
    whole, coords = self._coords()
    j = jnp.asarray(j, jnp.int32)
    strides = [int(np.prod(whole[d + 1 :], dtype=np.int64)) for d in range(len(whole))]
    less = j > 0 if not whole else jnp.zeros(self.shape, jnp.bool_)
    for d in reversed(range(len(whole))):
      digit = j // strides[d] if d == 0 else (j // strides[d]) % whole[d]
      less = jnp.logical_or(coords[d] < digit, jnp.logical_and(coords[d] == digit, less))
    return less


def _layouts(
  scores: Sequence[jax.Array], axis_name: AxisName, sharded_dims: Optional[Sequence[Optional[int]]]
) -> list[_Layout]:
  """Per score, its :class:`_Layout` (split along ``sharded_dims[i]``, default 0, or replicated if None)."""
  if axis_name is None:
    return [_Layout(tuple(s.shape)) for s in scores]
  dims = [0] * len(scores) if sharded_dims is None else list(sharded_dims)
  if len(dims) != len(scores):
    raise ValueError(f"`sharded_dims` must have one entry per score ({len(scores)}), got {len(dims)}.")
  layouts = []
  for s, d in zip(scores, dims):
    if d is None:
      layouts.append(_Layout(tuple(s.shape)))
    elif isinstance(d, (int, np.integer)) and -s.ndim <= d < s.ndim:
      layouts.append(_Layout(tuple(s.shape), axis_name, int(d) % s.ndim))
    else:
      raise ValueError(
        f"`sharded_dims` entries must be None or a dimension of the score ({s.shape}), got {d!r}."
      )
  return layouts


def _widen_bits(k: jax.Array, src: jnp.dtype, dst: jnp.dtype) -> jax.Array:
  """The bits of the non-negative float with bits ``k`` in ``src``, widened exactly to ``dst``.

  Float compares are not used because XLA:CPU flushes subnormals to zero in them.
  """
  src, dst = jnp.dtype(src), jnp.dtype(dst)
  if src == dst:
    return k
  if src == jnp.bfloat16:
    return _widen_bits(k.astype(jnp.int32) << 16, jnp.float32, dst)
  if src == jnp.float16:
    k = k.astype(jnp.int32)
    exp, man = k >> 10, k & 0x3FF
    lead = 31 - lax.clz(jnp.maximum(man, 1))  # position of the top set bit of a subnormal's mantissa
    sub = ((lead + 103) << 23) | ((man << (23 - lead)) & 0x7FFFFF)
    norm = jnp.where(exp == 31, 0x7F800000 | (man << 13), ((exp + 112) << 23) | (man << 13))
    out = jnp.where(exp == 0, jnp.where(man == 0, 0, sub), norm)
    return _widen_bits(out, jnp.float32, dst)
  # float32 -> float64
  k = k.astype(jnp.int64)
  exp, man = k >> 23, k & 0x7FFFFF
  lead = 63 - lax.clz(jnp.maximum(man, 1))
  sub = ((lead + 874) << 52) | ((man << (52 - lead)) & 0xFFFFFFFFFFFFF)
  norm = jnp.where(exp == 255, 0x7FF0000000000000 | (man << 29), ((exp + 896) << 52) | (man << 29))
  return jnp.where(exp == 0, jnp.where(man == 0, 0, sub), norm)


class _Keys(NamedTuple):
  """Comparisons of a leaf's keys with scalar thresholds, evaluated on the leaf itself.

  A key is the bit pattern of ``|x|`` in the float type ``float_dtype`` (every
  NaN ranks as the top key). Keys are never materialised: inside a loop each
  comparison starts from ``x`` passed through an optimization barrier together
  with ``live``, a loop-variant scalar, so no leaf-sized intermediate is
  loop-invariant and XLA cannot hoist one (a leaf-sized key array) out of the
  loop. (A float ``where`` would do the same but lets XLA:CPU flush subnormals.)
  """

  x: jax.Array
  float_dtype: jnp.dtype
  key_dtype: jnp.dtype

  def key(self, live: Optional[jax.Array]) -> jax.Array:
    own = _INT_FOR_FLOAT[jnp.dtype(self.x.dtype).itemsize]
    x = self.x if live is None else lax.optimization_barrier((self.x, live))[0]
    # Clear the sign with shifts, not ``& 0x7f..``: XLA rewrites the latter into a float abs,
    # which flushes subnormals to zero on CPU.
    unsigned = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[jnp.dtype(own).itemsize]
    bits = lax.shift_right_logical(lax.bitcast_convert_type(x, unsigned) << 1, jnp.array(1, unsigned))
    bits = lax.bitcast_convert_type(bits, own)
    return _widen_bits(bits, self.x.dtype, self.float_dtype).astype(self.key_dtype)

  def _inf(self) -> jax.Array:
    return lax.bitcast_convert_type(jnp.array(jnp.inf, self.float_dtype), self.key_dtype)

  def le(self, t: jax.Array, live: Optional[jax.Array] = None) -> jax.Array:
    """``key <= t``."""
    t = t.astype(self.key_dtype)
    top = t == np.iinfo(self.key_dtype).max
    return jnp.logical_or(self.key(live) <= jnp.minimum(t, self._inf()), top)

  def lt(self, t: jax.Array) -> jax.Array:
    """``key < t``."""
    t = t.astype(self.key_dtype)
    return jnp.logical_and(t > 0, self.key(None) <= jnp.minimum(t - 1, self._inf()))

  def eq(
    self, t: jax.Array, before: Optional[jax.Array] = None, live: Optional[jax.Array] = None
  ) -> jax.Array:
    """``key == t``, and with ``before`` (a bool array) only where it holds."""
    t = t.astype(self.key_dtype)
    k = self.key(live)
    out = jnp.where(t == np.iinfo(self.key_dtype).max, k > self._inf(), k == t)
    return out if before is None else jnp.logical_and(out, before)


def _own_keys(x: jax.Array) -> _Keys:
  """Keys of ``x`` in its own float type (per-leaf selection)."""
  score_bits(x)  # dtype check
  return _Keys(x, jnp.dtype(x.dtype), jnp.dtype(_INT_FOR_FLOAT[jnp.dtype(x.dtype).itemsize]))


def _thresholds(lo: jax.Array, hi: jax.Array, ways: int) -> list[jax.Array]:
  """``ways - 1`` keys splitting ``[lo, hi]`` into ``ways`` near-equal parts."""
  size = hi - lo + 1
  q, r = size // ways, size % ways
  one = jnp.ones([], lo.dtype)
  return [lo + jnp.maximum(j * q + (j * r) // ways, one) - one for j in range(1, ways)]


def _narrow(
  lo: jax.Array, hi: jax.Array, t: list[jax.Array], below: Sequence[jax.Array]
) -> tuple[jax.Array, jax.Array]:
  """The sub-interval holding the answer, given ``below[j] = count(<= t[j]) < k``."""
  # count(<= t_j) grows with j: the answer is in the first sub-interval whose top reaches k.
  m = sum(x.astype(jnp.int32) for x in below)
  tops = jnp.stack(t + [hi])
  bottoms = jnp.stack([lo] + [tj + 1 for tj in t])
  return jnp.maximum(bottoms[m], lo), tops[m]


def _loop_live(lo: jax.Array, hi: jax.Array) -> jax.Array:
  """An int32 that is always -1 inside a search loop, but that XLA cannot prove constant."""
  return jnp.where(lo > hi, 0, -1)


def _search(
  below_k: Callable[[int, list[jax.Array], jax.Array], list[jax.Array]],
  bounds: Sequence[tuple[jax.Array, jax.Array]],
  ways: int,
) -> list[jax.Array]:
  """Per problem, the smallest ``t`` in ``[lo, hi]`` with ``count(<= t) >= k``.

  A ``ways``-ary interval search run for all problems together: each round asks
  ``below_k(i, thresholds, live)`` whether ``count(<= t_j) < k`` for the
  ``ways - 1`` thresholds of problem ``i`` (one pass over its data; ``live`` is
  a loop-variant all-ones int32 for :meth:`_Keys.key`) and keeps the
  sub-interval that holds the answer. The caller guarantees ``count(<= hi) >= k``
  and that any ``t < lo`` has ``count(<= t) < k``. Bounds are unsigned so no
  arithmetic overflows.
  """

  def cond(state):
    return jnp.any(jnp.stack([lo < hi for lo, hi in state]))

  def body(state):
    live = _loop_live(*state[0])
    new = []
    for i, (lo, hi) in enumerate(state):
      t = _thresholds(lo, hi, ways)
      new.append(_narrow(lo, hi, t, below_k(i, t, live)))
    return new

  state = lax.while_loop(cond, body, [(lo, hi) for lo, hi in bounds])
  return [hi for _, hi in state]


def _unsigned(key_dtype: jnp.dtype) -> jnp.dtype:
  return jnp.uint64 if jnp.dtype(key_dtype).itemsize == 8 else jnp.uint32


def _key_bounds(key_dtype: jnp.dtype) -> tuple[jax.Array, jax.Array]:
  u = _unsigned(key_dtype)
  return jnp.zeros([], u), jnp.array(np.iinfo(key_dtype).max, u)


def _check_method(method: str) -> int:
  if method not in _WAYS:
    raise ValueError(f"`method` must be one of {sorted(_WAYS)}, got {method!r}.")
  return _WAYS[method]


# A leaf that needs at most this many of its ties finds them in one pass (the
# smallest tie indices); more need the search over the row-major index.
_FEW_TIES = 3


def _check_few_ties(few_ties: int) -> None:
  is_int = isinstance(few_ties, (int, np.integer)) and not isinstance(few_ties, bool)
  if not is_int or not 0 <= few_ties <= _FEW_TIES:
    raise ValueError(f"`few_ties` must be an int from 0 to {_FEW_TIES}, got {few_ties!r}.")


def _merge_smallest(a: tuple, b: tuple) -> tuple:
  """The ``_FEW_TIES`` smallest of two ascending tuples (``j``-th = min over ``i`` of max(a_i, b_{j-i}))."""
  out = []
  for j in range(len(a)):
    best = jnp.minimum(a[j], b[j])
    for i in range(j):
      best = jnp.minimum(best, jnp.maximum(a[i], b[j - 1 - i]))
    out.append(best)
  return tuple(out)


def _smallest_tie_indices(key: _Keys, layout: _Layout, threshold: jax.Array) -> list[jax.Array]:
  """The ``_FEW_TIES`` smallest row-major indices (in the whole leaf) of entries keyed ``threshold``.

  One pass: a variadic reduce that merges ascending tuples; missing ones are
  ``size``. Across a mapped axis the tuples are merged by one ``pmin`` per
  position (indices are distinct, so the next smallest is the least local one
  above the previous).
  """
  size = jnp.int32(layout.size)
  idx = jnp.where(key.eq(threshold), layout.index(), size)
  ops = (idx,) + tuple(jnp.full(layout.shape, size) for _ in range(_FEW_TIES - 1))
  inits = tuple(size for _ in range(_FEW_TIES))
  local = list(lax.reduce(ops, inits, _merge_smallest, tuple(range(len(layout.shape)))))
  if layout.axis is None:
    return local
  out, prev = [], jnp.int32(-1)
  for _ in range(_FEW_TIES):
    above = [jnp.where(v > prev, v, size) for v in local]
    prev = lax.pmin(functools.reduce(jnp.minimum, above), layout.axis)
    out.append(prev)
  return out


def _tie_cuts(
  keys: Sequence[_Keys],
  layouts: Sequence[_Layout],
  thresholds: Sequence[jax.Array],
  need: Sequence[jax.Array],
  num_at: Sequence[jax.Array],
  ways: int,
  few_ties: int,
) -> list[jax.Array]:
  """Per leaf, the cut ``J``: prune the ties at the threshold whose row-major index is below ``J``.

  ``J = 0`` prunes no tie and ``J = size`` all of them; in between (some leaf
  needs part of its ties) ``J`` is one past the index of the last tie pruned:
  read off the smallest tie indices when a leaf needs at most ``few_ties``
  ties (at most ``_FEW_TIES``), otherwise found by a search over the index.
  """
  sizes = [lay.size for lay in layouts]
  full = [jnp.where(r > 0, jnp.int32(n), jnp.int32(0)) for r, n in zip(need, sizes)]
  partial = [jnp.logical_and(r > 0, r < a) for r, a in zip(need, num_at)]
  few = jnp.stack([jnp.logical_and(p, r <= few_ties) for p, r in zip(partial, need)])
  many = jnp.stack([jnp.logical_and(p, r > few_ties) for p, r in zip(partial, need)])

  def search():
    # Leaves are visited one after the other inside ONE while loop with ONE switch, so the
    # compiled refresh does not grow with the number of leaves and only the leaves that need
    # part of their ties pay passes: one pass (its first tie indices) for a leaf that needs at
    # most ``few_ties`` of them, one pass per round of a search over the index otherwise.
    num = len(keys)
    tops = jnp.array([max(n - 1, 0) for n in sizes], jnp.uint32)
    need_at = jnp.stack(need)
    width = max(ways - 1, _FEW_TIES)  # every branch returns this many int32
    pad = lambda xs: jnp.stack(list(xs) + [jnp.int32(0)] * (width - len(xs)))

    def search_branch(i):
      def flags(lo, hi, live):
        t = _thresholds(lo, hi, ways)
        before = [layouts[i].before(tj.astype(jnp.int32) + 1) for tj in t]
        counts = count_true([keys[i].eq(thresholds[i], b, live) for b in before], layouts[i].axis)
        return pad([(c < need[i]).astype(jnp.int32) for c in counts])

      return flags

    def few_branch(i):
      return lambda lo, hi, live: pad(_smallest_tie_indices(keys[i], layouts[i], thresholds[i]))

    idle = lambda lo, hi, live: jnp.zeros([width], jnp.int32)
    branches = [search_branch(i) for i in range(num)] + [few_branch(i) for i in range(num)] + [idle]

    def body(state):
      i, lo, hi, cuts = state
      is_few = few[i]
      active = jnp.logical_and(many[i], lo < hi)
      pick = jnp.where(is_few, num + i, jnp.where(active, i, 2 * num))
      out = lax.switch(pick, branches, lo, hi, _loop_live(lo, hi))
      new_lo, new_hi = _narrow(lo, hi, _thresholds(lo, hi, ways), [out[j] > 0 for j in range(ways - 1)])
      # A leaf with few ties is done in one visit; a searched leaf when its interval closes.
      few_cut = out[jnp.clip(need_at[i] - 1, 0, _FEW_TIES - 1)] + 1
      done_cut = jnp.where(is_few, few_cut, hi.astype(jnp.int32) + 1)
      cuts = jnp.where(active, cuts, cuts.at[i].set(done_cut))
      nxt = jnp.minimum(i + 1, num - 1)
      return (
        jnp.where(active, i, i + 1),
        jnp.where(active, new_lo, jnp.uint32(0)),
        jnp.where(active, new_hi, tops[nxt]),
        cuts,
      )

    init = (jnp.int32(0), jnp.uint32(0), tops[0], jnp.zeros([num], jnp.int32))
    _, _, _, cuts = lax.while_loop(lambda state: state[0] < num, body, init)
    return [jnp.where(p, cuts[i], f) for i, (p, f) in enumerate(zip(partial, full))]

  return lax.cond(jnp.any(jnp.stack(partial)), search, lambda: full)


def _masks(
  keys: Sequence[_Keys],
  layouts: Sequence[_Layout],
  thresholds: Sequence[jax.Array],
  cuts: Sequence[jax.Array],
) -> list[jax.Array]:
  masks = []
  for key, lay, thr, cut in zip(keys, layouts, thresholds, cuts):
    pruned = jnp.logical_or(key.lt(thr), key.eq(thr, lay.before(cut)))
    masks.append(jnp.logical_not(pruned))
  return masks


def prune_masks(
  scores: Sequence[jax.Array],
  ks: Sequence[ArrayLike],
  *,
  axis_name: AxisName = None,
  sharded_dims: Optional[Sequence[Optional[int]]] = None,
  method: str = DEFAULT_METHOD,
  few_ties: int = _FEW_TIES,
) -> list[jax.Array]:
  """Keep-masks pruning exactly ``ks[i]`` smallest-magnitude entries of ``scores[i]``.

  Ties in ``|x|`` are pruned lowest row-major index first; NaN ranks above +inf.
  All leaves are searched together, one fused counting pass per leaf per round.

  Args:
    scores: floating-point arrays (any shape, float16/bfloat16/float32/float64).
    ks: per leaf, the number of entries to prune (may be traced); clipped to
      ``[0, size]``.
    axis_name: optional mapped axis name: inside ``shard_map`` each device holds
      a block of each leaf, counts are summed over this axis, and ``ks`` are the
      numbers to prune from the whole leaves. Ties are broken by the row-major
      index in the whole leaf, so the masks equal those of the unsharded leaves.
    sharded_dims: with ``axis_name``, per score the dimension split over the
      axis (the device at ``axis_index`` holds that block), or None for a score
      replicated over it. Default: every score split along dimension 0.
    method: the search, ``"radix4"`` (default: three thresholds per pass),
      ``"radix8"`` (seven) or ``"bisect"`` (one).
    few_ties: a leaf that must prune at most this many (0 to 3, the default) of
      the entries tied at its threshold finds them in one pass; above it, and
      with 0 always, by a search over the row-major index (kept to compare).

  Returns:
    Boolean arrays shaped like ``scores``: True where an entry is kept.

  Raises:
    TypeError: if a score is not floating point.
    ValueError: for an unknown ``method`` or ``few_ties``, a ``ks`` or
      ``sharded_dims`` of the wrong length, or a sharded dimension the score
      does not have.

  Example:
    >>> import jax.numpy as jnp
    >>> from cyclax import _select
    >>> [mask] = _select.prune_masks([jnp.array([0.3, -0.1, 0.2, 0.1])], [2])
    >>> mask.tolist()
    [True, False, True, False]
  """
  ways = _check_method(method)
  _check_few_ties(few_ties)
  scores, ks = list(scores), list(ks)
  if len(scores) != len(ks):
    raise ValueError(f"`ks` must have one entry per score ({len(scores)}), got {len(ks)}.")
  if not scores:
    return []
  for s in scores:
    score_bits(s)  # dtype check
  layouts = _layouts(scores, axis_name, sharded_dims)
  ks = [jnp.clip(jnp.asarray(k, jnp.int32), 0, lay.size) for k, lay in zip(ks, layouts)]
  keys = [_own_keys(s) for s in scores]

  def below_k(i, t, live):
    counts = count_true([keys[i].le(tj, live) for tj in t], layouts[i].axis)
    return [c < ks[i] for c in counts]

  found = _search(below_k, [_key_bounds(key.key_dtype) for key in keys], ways)
  thresholds = [t.astype(key.key_dtype) for t, key in zip(found, keys)]
  counts = [
    count_true([key.lt(thr), key.eq(thr)], lay.axis) for key, lay, thr in zip(keys, layouts, thresholds)
  ]
  need = [k - below for k, (below, _) in zip(ks, counts)]
  num_at = [at for _, at in counts]
  cuts = _tie_cuts(keys, layouts, thresholds, need, num_at, ways, few_ties)
  return _masks(keys, layouts, thresholds, cuts)


def _common_key_dtype(scores: Sequence[jax.Array]) -> tuple[jnp.dtype, jnp.dtype]:
  """The float type every score is cast to (exactly) for one global ranking, and its key."""
  wide = any(jnp.dtype(s.dtype).itemsize == 8 for s in scores)
  return (jnp.float64, jnp.int64) if wide else (jnp.float32, jnp.int32)


def _ties_per_leaf(k: Count, below: Sequence[jax.Array], at: Sequence[jax.Array]) -> list[jax.Array]:
  """How many of its ties at the threshold each leaf prunes, earlier leaves first.

  ``k`` pruned in total, ``below[i]``/``at[i]`` the int32 counts of leaf ``i``
  under and at the threshold; leaf ``i`` prunes ``min(remaining, at[i])``.
  """
  remaining = _count_sub(k, _count_sum(below))
  need = []
  for a in at:
    r = _count_clip_int32(remaining, a)
    need.append(r)
    remaining = _count_sub(remaining, as_count(r))
  return need


def global_prune_masks(
  scores: Sequence[jax.Array],
  k_total: Union[int, ArrayLike, Count],
  *,
  axis_name: AxisName = None,
  sharded_dims: Optional[Sequence[Optional[int]]] = None,
  method: str = DEFAULT_METHOD,
  few_ties: int = _FEW_TIES,
) -> list[jax.Array]:
  """Keep-masks pruning exactly ``k_total`` smallest-magnitude entries over all leaves together.

  One threshold for every leaf. The ranking is that of ``|x|`` with every leaf
  cast exactly to a common float type (float32, or float64 when a leaf is
  float64); ties are pruned in order of leaf position in ``scores``, then
  row-major index inside a leaf; NaN ranks above +inf. Leaves are never
  concatenated: every round counts each leaf in one fused pass and adds the
  per-leaf int32 counts exactly into a :class:`Count`, so totals beyond ``2**31``
  are exact.

  Args:
    scores: floating-point arrays (any shapes and float dtypes, each below
      ``2**31`` entries).
    k_total: the number of entries to prune over all leaves: a Python int, an
      int32 scalar (may be traced) or a :class:`Count` (for example from
      :func:`num_to_prune_total`); clipped to the total size.
    axis_name: optional mapped axis name to sum counts over (see
      :func:`prune_masks`).
    sharded_dims: with ``axis_name``, per score the dimension split over the
      axis or None (replicated), as in :func:`prune_masks`.
    method: the search, as in :func:`prune_masks`.
    few_ties: as in :func:`prune_masks`.

  Returns:
    Boolean arrays shaped like ``scores``: True where an entry is kept.

  Raises:
    TypeError: if a score is not floating point.
    ValueError: for an unknown ``method`` or ``few_ties``.

  Example:
    >>> import jax.numpy as jnp
    >>> from cyclax import _select
    >>> a = jnp.array([0.5, -0.1, 2.0])
    >>> b = jnp.array([[0.1, 3.0], [0.2, -0.05]], jnp.bfloat16)
    >>> [m.astype(int).tolist() for m in _select.global_prune_masks([a, b], 3)]
    [[1, 0, 1], [[0, 1], [1, 0]]]
  """
  ways = _check_method(method)
  _check_few_ties(few_ties)
  scores = list(scores)
  if not scores:
    return []
  for s in scores:
    score_bits(s)  # dtype check
  float_dtype, key_dtype = _common_key_dtype(scores)
  keys = [_Keys(s, jnp.dtype(float_dtype), jnp.dtype(key_dtype)) for s in scores]
  layouts = _layouts(scores, axis_name, sharded_dims)
  k = as_count(k_total)
  total = as_count(sum(lay.size for lay in layouts))
  k = Count(*lax.cond(_count_less(total, k), lambda: tuple(total), lambda: tuple(k)))

  def below_k(_, t, live):
    per_leaf = [count_true([key.le(tj, live) for tj in t], lay.axis) for key, lay in zip(keys, layouts)]
    return [_count_less(_count_sum(col), k) for col in zip(*per_leaf)]

  [found] = _search(below_k, [_key_bounds(key_dtype)], ways)
  threshold = found.astype(key_dtype)
  counts = [count_true([key.lt(threshold), key.eq(threshold)], lay.axis) for key, lay in zip(keys, layouts)]
  need = _ties_per_leaf(k, [below for below, _ in counts], [at for _, at in counts])
  thresholds = [threshold] * len(scores)
  num_at = [at for _, at in counts]
  cuts = _tie_cuts(keys, layouts, thresholds, need, num_at, ways, few_ties)
  return _masks(keys, layouts, thresholds, cuts)
