"""Exact integer arithmetic on 32-bit JAX: the rounding rule and counts past ``2**31``.

JAX computes in int32 unless x64 is enabled, but a tree of params can hold more
than ``2**31`` entries, and the number pruned is a product of a sparsity and a
size. Every count that may not fit in int32 is a :class:`Wide`: an int32 array
whose axis 0 holds ``NUM_LIMBS`` little-endian limbs of ``LIMB_BITS`` bits, so
that a wide integer (or a batch of them, along the other axes) is exact up to
``2**84``. Products of two limbs stay below ``2**24``, and up to ``2**18``
limbs can be added in int32 before carries are propagated, so sums of int32
counts are formed limb by limb and carried only where a result needs it.

One rounding rule is used everywhere in cyclax: ``k = floor(s' * n + 1/2)``,
where ``s'`` is the sparsity clipped to [0, 1] and rounded half to even to a
multiple of ``2**-24`` (:func:`num_to_prune`, :func:`num_to_prune_total`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple, Union, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

LIMB_BITS = 12
NUM_LIMBS = 7  # 84 bits: a count below 2**48 times a dimension sum below 2**30 (ERK) fits
_LIMB_MASK = (1 << LIMB_BITS) - 1
_INT32_LIMBS = 3  # an int32 in [0, 2**31) has 31 bits: limbs 0-2
# Sparsity is quantised to a multiple of 2**-24 (two limbs) before it multiplies a size;
# float32 holds every value in [0.5, 1) exactly at that resolution.
_FIXED_LIMBS = 2
_FIXED_BITS = _FIXED_LIMBS * LIMB_BITS
MAX_TOTAL = 2**48  # the largest number of entries whose pruned count is formed (exclusive)


class Wide(NamedTuple):
  """Exact non-negative integers as int32 limbs: ``sum(limbs[d] << (LIMB_BITS * d))``.

  ``limbs`` has shape ``(NUM_LIMBS, *batch)``. A carried value has every limb
  in ``[0, 2**LIMB_BITS)``: so are the results of :func:`constant`,
  :func:`from_int32`, :func:`add`, :func:`sub` and :func:`mul`. The sums of
  :func:`sum_int32` and :func:`prefix_sums_int32` are not carried (each limb is
  below ``2**30``); :func:`less`, :func:`minimum`, :func:`to_int32` and
  :func:`to_int` accept both kinds, :func:`mul` and :func:`divmod_int32` need
  carried values. Static values hold NumPy limbs, traced values JAX arrays.
  """

  limbs: Any


def constant(values: Any) -> Wide:
  """Static non-negative Python ints (a scalar or an array of them) as a :class:`Wide`."""
  v = np.asarray(values, dtype=object)
  digit = lambda x, d: (int(x) >> (LIMB_BITS * d)) & _LIMB_MASK
  return Wide(np.stack([np.vectorize(digit, otypes=[np.int32])(v, d) for d in range(NUM_LIMBS)]))


def from_int32(x: ArrayLike) -> Wide:
  """Non-negative int32 values (any shape) as a :class:`Wide`."""
  x = jnp.asarray(x, jnp.int32)
  limbs = [(x >> (LIMB_BITS * d)) & _LIMB_MASK for d in range(_INT32_LIMBS)]
  return Wide(jnp.stack(limbs + [jnp.zeros_like(x)] * (NUM_LIMBS - _INT32_LIMBS)))


def as_wide(value: Union[int, ArrayLike, Wide]) -> Wide:
  """A :class:`Wide` from a Python int below ``2**84``, an int32 array (negative values count as 0) or a Wide.

  Raises:
    ValueError: for a Python int outside ``[0, 2**84)``.
  """
  if isinstance(value, Wide):
    return value
  if isinstance(value, (int, np.integer)):
    if not 0 <= int(value) < 2 ** (LIMB_BITS * NUM_LIMBS):
      raise ValueError(f"a count must lie in [0, 2**{LIMB_BITS * NUM_LIMBS}), got {int(value)}.")
    return constant(int(value))
  return from_int32(jnp.maximum(jnp.asarray(value, jnp.int32), 0))


def to_int(value: Wide) -> int:
  """The Python int held by a concrete scalar :class:`Wide`."""
  return sum(int(limb) << (LIMB_BITS * d) for d, limb in enumerate(np.asarray(value.limbs)))


def _limbs(value: Wide) -> list[Any]:
  return [value.limbs[d] for d in range(NUM_LIMBS)]


def _stack(limbs: Sequence[Any]) -> Wide:
  shape = jnp.broadcast_shapes(*(np.shape(x) for x in limbs))
  return Wide(jnp.stack([jnp.broadcast_to(jnp.asarray(x, jnp.int32), shape) for x in limbs]))


def _carry(limbs: Sequence[Any]) -> Wide:
  """The carried value of ``limbs``: carries (and borrows) propagated, every limb in ``[0, 2**LIMB_BITS)``."""
  out, carry = [], 0
  for d in range(NUM_LIMBS):
    value = limbs[d] + carry
    out.append(value & _LIMB_MASK)
    carry = value >> LIMB_BITS  # an arithmetic shift: a borrow is a carry of -1
  return _stack(out)


def add(a: Wide, b: Wide) -> Wide:
  """``a + b``, carried (batches broadcast)."""
  return _carry([x + y for x, y in zip(_limbs(a), _limbs(b))])


def sub(a: Wide, b: Wide) -> Wide:
  """``a - b`` for ``a >= b``, carried (batches broadcast)."""
  return _carry([x - y for x, y in zip(_limbs(a), _limbs(b))])


def mul(a: Wide, b: Wide) -> Wide:
  """``a * b`` of carried values, exact below ``2**84`` (batches broadcast); static zero limbs are skipped."""
  used = lambda value, d: not isinstance(value.limbs, np.ndarray) or value.limbs[d].any()
  out: list[Any] = [np.int32(0)] * NUM_LIMBS
  for i in range(NUM_LIMBS):
    for j in range(NUM_LIMBS - i):
      if used(a, i) and used(b, j):
        out[i + j] = out[i + j] + jnp.asarray(a.limbs[i]) * b.limbs[j]
  return _carry(out)


def less(a: Wide, b: Wide) -> jax.Array:
  """``a < b`` (batches broadcast): the sign of the borrow out of ``a - b``, limb by limb."""
  borrow = 0
  for x, y in zip(_limbs(a), _limbs(b)):
    borrow = (x - y + borrow) >> LIMB_BITS
  return jnp.asarray(borrow) < 0


def minimum(a: Wide, b: Wide) -> Wide:
  """``min(a, b)`` (batches broadcast)."""
  a_less = less(a, b)
  return _stack([jnp.where(a_less, x, y) for x, y in zip(_limbs(a), _limbs(b))])


def sum_int32(values: ArrayLike) -> Wide:
  """The exact sum of int32 values in ``[0, 2**31)`` along axis 0 (at most ``2**18``), not carried."""
  return Wide(jnp.sum(from_int32(values).limbs, axis=1, dtype=jnp.int32))


def prefix_sums_int32(values: ArrayLike) -> Wide:
  """Exact sums of ``values[:i]`` for every ``i``, for int32 values in ``[0, 2**31)`` along axis 0.

  At most ``2**18`` values; the sums are not carried.
  """
  limbs = from_int32(values).limbs
  return Wide(jnp.cumsum(limbs, axis=1, dtype=jnp.int32) - limbs)


def to_int32(value: Wide) -> jax.Array:
  """The value modulo ``2**32`` as int32: exact below ``2**31``, wrapped above."""
  limbs = jnp.asarray(value.limbs)
  # Shifts and sums wrap modulo 2**32 and limbs from the fourth on only add multiples of
  # 2**36, so uncarried limbs give the same result.
  # _INT32_LIMBS > 0 terms: the sum is an array, never sum()'s start value 0.
  return cast(jax.Array, sum(limbs[d] << (LIMB_BITS * d) for d in range(_INT32_LIMBS)))


def fill_in_order(
  amount: Wide, capacities: Sequence[jax.Array], used: Sequence[jax.Array] = ()
) -> list[jax.Array]:
  """Spreads what ``used`` leaves of ``amount`` over ``capacities`` in order, each filled before the next.

  With ``left = amount - sum(used)``, item ``i`` gets
  ``min(max(left - sum(capacities[:i]), 0), capacities[i])`` (int32); ``used``
  and ``capacities`` are int32 scalars in ``[0, 2**31)``, fewer than ``2**18`` in all.
  """
  values = jnp.stack(list(used) + list(capacities) + [jnp.zeros([], jnp.int32)])
  starts = prefix_sums_int32(values).limbs[:, len(used) :]  # sum(used) + sum(capacities[:i]), i = 0..n
  begin, end = Wide(starts[:, :-1]), Wide(starts[:, 1:])
  # Between the two ends the share is below capacities[i] < 2**31, so int32 arithmetic that
  # wraps modulo 2**32 gives it exactly.
  partial = to_int32(amount) - to_int32(begin)
  share = jnp.where(less(amount, end), partial, jnp.stack(list(capacities)))
  return list(jnp.where(less(begin, amount), share, 0))


def divmod_int32(value: Wide, divisor: ArrayLike) -> tuple[jax.Array, jax.Array]:
  """``(value // divisor, value % divisor)`` of a carried value for int32 ``1 <= divisor < 2**30``.

  Binary long division. The quotient is int32 and wraps when it is ``2**31`` or
  more; the remainder is exact. Batches broadcast.
  """
  limbs = jnp.asarray(value.limbs)
  divisor = jnp.asarray(divisor, jnp.int32)
  num_bits = NUM_LIMBS * LIMB_BITS

  def body(i, carry):
    quotient, remainder = carry
    pos = num_bits - 1 - i
    bit = (limbs[pos // LIMB_BITS] >> (pos % LIMB_BITS)) & 1
    remainder = 2 * remainder + bit
    fits = remainder >= divisor
    return 2 * quotient + fits.astype(jnp.int32), jnp.where(fits, remainder - divisor, remainder)

  zero = jnp.zeros(jnp.broadcast_shapes(limbs.shape[1:], divisor.shape), jnp.int32)
  return lax.fori_loop(0, num_bits, body, (zero, zero))


def _fixed_sparsity(sparsity: ArrayLike) -> jax.Array:
  """``s'`` in units of ``2**-24``: float32, clipped to [0, 1], rounded half to even."""
  s = jnp.clip(jnp.asarray(sparsity, jnp.float32), 0.0, 1.0)
  return jnp.round(s * float(2**_FIXED_BITS)).astype(jnp.int32)


# Compiled once per size (inlined under an outer jit), so an eager call is one dispatch.
@functools.partial(jax.jit, static_argnums=1)
def _rounded_product(sparsity: ArrayLike, sizes: Union[int, tuple[int, ...]]) -> Wide:
  """``floor(s' * n + 1/2)`` for static ``sizes`` (batches broadcast), from exact limbs."""
  product = mul(from_int32(_fixed_sparsity(sparsity)), constant(sizes))
  rounded = add(product, constant(2 ** (_FIXED_BITS - 1)))
  high = _limbs(rounded)[_FIXED_LIMBS:]  # dropping two limbs divides by 2**24
  return _stack(high + [np.int32(0)] * _FIXED_LIMBS)


def _check_sizes(sizes: Sequence[int], limit: int) -> list[int]:
  sizes = [int(n) for n in sizes]
  for n in sizes:
    if not 0 <= n < limit:
      raise ValueError(f"a leaf size must lie in [0, 2**{limit.bit_length() - 1}), got {n}.")
  return sizes


def num_to_prune(sparsity: ArrayLike, size: int) -> jax.Array:
  """The number of entries pruned from a leaf of ``size`` entries.

  The rounding rule, used everywhere in cyclax: ``k = floor(s' * size + 1/2)``,
  where ``s'`` is the sparsity clipped to [0, 1] and rounded half to even to a
  multiple of ``2**-24``. The product is formed exactly in integer limbs, so
  ``k`` is exact for every size below ``2**31``.

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
  [size] = _check_sizes([size], 2**31)
  return to_int32(_rounded_product(sparsity, size))


def num_to_prune_each(sparsities: ArrayLike, sizes: Sequence[int]) -> jax.Array:
  """:func:`num_to_prune` for many leaves at once: int32 ``[len(sizes)]``.

  ``sparsities`` is one scalar for all leaves or one per leaf (may be traced).

  Raises:
    ValueError: if a size is outside ``[0, 2**31)``.
  """
  sizes = _check_sizes(sizes, 2**31)
  return to_int32(_rounded_product(sparsities, tuple(sizes)))


def num_to_prune_total(sparsity: ArrayLike, sizes: Sequence[int]) -> Wide:
  """The number of entries pruned over leaves of ``sizes`` entries together.

  The rule of :func:`num_to_prune` applied to ``N = sum(sizes)``, exact for
  ``N`` below ``2**48`` (past int32).

  Args:
    sparsity: scalar sparsity (may be traced).
    sizes: static leaf sizes.

  Returns:
    The count as a scalar :class:`Wide`.

  Raises:
    ValueError: if a size is negative or the total is ``2**48`` or more.

  Example:
    >>> from cyclax import _exact
    >>> k = _exact.num_to_prune_total(0.5, [2**31, 2**31, 5])  # past int32
    >>> _exact.to_int(k)  # floor(0.5 * (2**32 + 5) + 1/2)
    2147483651
  """
  total = sum(_check_sizes(sizes, MAX_TOTAL))
  if total >= MAX_TOTAL:
    raise ValueError(f"the total number of entries must be below 2**48, got {total}.")
  return _rounded_product(sparsity, total)
