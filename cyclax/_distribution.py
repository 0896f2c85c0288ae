"""How one sparsity level is spread over the pruned leaves.

- ``"uniform"`` (the paper's): every leaf loses ``round(s * leaf.size)`` entries.
- ``"global"``: one magnitude threshold over all leaves together; exactly
  ``round(s * total_size)`` entries are pruned, ties at the threshold going to the
  earlier leaf (flatten order), then the lower row-major index.
- ``"erk"``: Erdos-Renyi-Kernel (Evci et al., 2020, "Rigging the Lottery"): the
  density of a leaf is proportional to ``sum(shape) / prod(shape)`` (all
  dimensions, convolution windows included); leaves whose density would exceed 1
  are kept dense and the rest are rescaled, so that exactly
  ``round(s * total_size)`` entries are pruned in all.

Per-leaf overrides fix the sparsity of named leaves; those leaves are left out
of the distribution, which spreads the main sparsity over the remaining leaves.

Every count is formed in exact integer arithmetic from a traced sparsity
(rounded like :func:`cyclax.num_to_prune`), so totals beyond ``2**31`` entries
stay exact on a 32-bit JAX.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.typing import ArrayLike

from cyclax import _leaves, _select, _validation

DISTRIBUTIONS = ("uniform", "global", "erk")

# A mapping ``{"path/of/leaf": sparsity}`` or a callable ``(path, leaf) -> sparsity or None``;
# each sparsity is a number or an optax-style schedule.
Overrides = Union[
  Mapping[str, optax.ScalarOrSchedule], Callable[[tuple, Any], Optional[optax.ScalarOrSchedule]]
]

# ---------------------------------------------------------------------------
# Exact wide integers on 32-bit JAX: little-endian 12-bit limbs along axis 0.
# Products of two limbs (< 2**24) summed over all limbs stay far below 2**31.
# ---------------------------------------------------------------------------
_LIMB_BITS = 12
_LIMB_MASK = (1 << _LIMB_BITS) - 1
_NUM_LIMBS = 6  # 72 bits


def _wide_const(values: Any) -> np.ndarray:
  """Static non-negative Python ints as limbs, shape ``(limbs, *values.shape)``."""
  v = np.asarray(values, dtype=object)
  return np.stack(
    [
      np.vectorize(lambda x, d=d: (int(x) >> (_LIMB_BITS * d)) & _LIMB_MASK, otypes=[np.int32])(v)
      for d in range(_NUM_LIMBS)
    ]
  )


def _wide_from_int32(x: jax.Array) -> jax.Array:
  """Non-negative int32 values as limbs."""
  x = jnp.asarray(x, jnp.int32)
  limbs = [(x >> (_LIMB_BITS * d)) & _LIMB_MASK for d in range(3)]
  limbs += [jnp.zeros_like(x)] * (_NUM_LIMBS - 3)
  return jnp.stack(limbs)


def _wide_carry(limbs: jax.Array) -> jax.Array:
  """Propagates carries (and borrows) so every limb lies in [0, 2**12)."""
  out, carry = [], jnp.zeros_like(limbs[0])
  for d in range(_NUM_LIMBS):
    t = limbs[d] + carry
    out.append(t & _LIMB_MASK)
    carry = t >> _LIMB_BITS  # arithmetic shift: a borrow is a carry of -1
  return jnp.stack(out)


def _wide_mul(a: jax.Array, b: jax.Array) -> jax.Array:
  """``a * b`` truncated to the limb count (inputs broadcast)."""
  a, b = jnp.broadcast_arrays(jnp.asarray(a), jnp.asarray(b))
  out = [jnp.zeros_like(a[0]) for _ in range(_NUM_LIMBS)]
  for i in range(_NUM_LIMBS):
    for j in range(_NUM_LIMBS - i):
      out[i + j] = out[i + j] + a[i] * b[j]
  return _wide_carry(jnp.stack(out))


def _wide_gt(a: jax.Array, b: jax.Array) -> jax.Array:
  """``a > b`` for normalised limbs."""
  a, b = jnp.broadcast_arrays(jnp.asarray(a), jnp.asarray(b))
  result = jnp.zeros(a.shape[1:], jnp.bool_)
  for d in range(_NUM_LIMBS):
    result = jnp.where(a[d] != b[d], a[d] > b[d], result)
  return result


def _wide_to_int32(a: jax.Array) -> jax.Array:
  """The value of ``a`` as int32 (wraps if it is ``2**31`` or more)."""
  return a[0] + (a[1] << _LIMB_BITS) + (a[2] << (2 * _LIMB_BITS))


def _wide_divmod(a: jax.Array, divisor: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(a // divisor, a % divisor)`` for ``1 <= divisor < 2**30``, by binary long division.

  The quotient is returned as int32 and wraps when it is ``2**31`` or more; the
  remainder is exact.
  """
  divisor = jnp.asarray(divisor, jnp.int32)
  total_bits = _NUM_LIMBS * _LIMB_BITS

  def body(i, carry):
    q, r = carry
    pos = total_bits - 1 - i
    bit = (a[pos // _LIMB_BITS] >> (pos % _LIMB_BITS)) & 1
    r = 2 * r + bit
    ge = r >= divisor
    return 2 * q + ge.astype(jnp.int32), jnp.where(ge, r - divisor, r)

  zero = jnp.zeros(jnp.broadcast_shapes(a.shape[1:], divisor.shape), jnp.int32)
  return lax.fori_loop(0, total_bits, body, (zero, zero))


def _wide_from_count(count: _select.Count) -> jax.Array:
  """Limbs from a :class:`cyclax._select.Count` (``hi * 2**24 + lo``, both below ``2**24``)."""
  parts = [count.lo & _LIMB_MASK, count.lo >> _LIMB_BITS, count.hi & _LIMB_MASK, count.hi >> _LIMB_BITS]
  return jnp.stack([jnp.asarray(x, jnp.int32) for x in parts] + [jnp.zeros([], jnp.int32)] * (_NUM_LIMBS - 4))


# ---------------------------------------------------------------------------
# ERK
# ---------------------------------------------------------------------------


def _erk_plan(shapes: Sequence[tuple[int, ...]]) -> dict[str, Any]:
  """Static part of the ERK allocation, computed once per tree structure.

  Leaves are ranked by ``raw = sum(shape) / size`` (largest first, stable): for
  any sparsity the dense leaves are a prefix of that ranking. With the first
  ``j`` leaves dense, leaf ``j`` must be dense too exactly when the kept total
  ``B`` exceeds ``P_j + T_j * n_j / S_j`` (``P_j`` the sizes of the dense
  prefix, ``T_j`` the dim sums of the rest): an integer threshold per ``j``.
  """
  sizes = [int(np.prod(s, dtype=object)) if len(s) else 1 for s in shapes]
  sums = [int(sum(s)) if len(s) else 1 for s in shapes]
  if max(sizes) >= 2**31:
    raise ValueError(f"ERK needs every leaf below 2**31 entries, got a leaf of {max(sizes)}.")
  order = sorted(range(len(shapes)), key=lambda i: -Fraction(sums[i], max(sizes[i], 1)))
  n = [sizes[i] for i in order]
  dim = [sums[i] for i in order]
  prefix = [sum(n[:j]) for j in range(len(n) + 1)]
  rest = [sum(dim[j:]) for j in range(len(n) + 1)]
  if rest[0] >= 2**30:
    raise ValueError(f"ERK needs the dimensions of the pruned leaves to sum below 2**30, got {rest[0]}.")
  thresholds = [prefix[j] + (rest[j] * n[j]) // dim[j] for j in range(len(n))]
  return {
    "order": np.asarray(order, np.int32),
    "sizes": np.asarray(n, np.int32),
    "sums": _wide_const(dim),
    "prefix": _wide_const(prefix),
    "rest": np.asarray(rest, np.int32),
    "thresholds": _wide_const(thresholds),
    "total": sum(n),
  }


def erk_num_to_prune(sparsity: ArrayLike, shapes: Sequence[tuple[int, ...]]) -> list[jax.Array]:
  """Per-leaf numbers to prune under the Erdos-Renyi-Kernel distribution.

  Densities follow ``eps * sum(shape) / prod(shape)``; leaves whose density
  would reach above 1 are kept dense (as in Evci et al., 2020, repeating until
  none is left) and ``eps`` is chosen so that the kept entries number exactly
  ``total - round(s * total)``. Kept counts are ``floor(eps * sum(shape))``
  for the non-dense leaves, and the few entries left over go one each to the
  leaves with the largest fractional parts (ties: earlier leaf first), so the
  total pruned is exact. Every step is integer arithmetic on a traced sparsity.

  Args:
    sparsity: overall sparsity of the leaves (may be traced), clipped to [0, 1].
    shapes: the static shapes of the leaves (each of size below ``2**31``).

  Returns:
    One int32 scalar per leaf: how many of its entries to prune.

  Raises:
    ValueError: if a leaf has ``2**31`` entries or more, or the dimensions of
      all leaves sum to ``2**30`` or more.

  Example:
    >>> import cyclax
    >>> ks = cyclax.erk_num_to_prune(0.9, [(256, 256), (64, 8), (1000, 10)])
    >>> [int(k) for k in ks], sum(int(k) for k in ks) == round(0.9 * (65536 + 512 + 10000))
    ([63093, 169, 5181], True)
  """
  shapes = [tuple(int(d) for d in s) for s in shapes]
  nonempty = [i for i, s in enumerate(shapes) if all(d > 0 for d in s)]
  out = [jnp.zeros([], jnp.int32) for _ in shapes]
  if not nonempty:
    return out
  plan = _erk_plan([shapes[i] for i in nonempty])
  num = len(nonempty)
  num_pruned = _wide_from_count(_select.num_to_prune_total(sparsity, [plan["total"]]))
  kept_total = _wide_carry(_wide_const(plan["total"]) - num_pruned)
  above = _wide_gt(kept_total[:, None], plan["thresholds"])
  num_dense = jnp.sum(jnp.cumprod(above.astype(jnp.int32)), dtype=jnp.int32)
  budget = _wide_carry(kept_total - jnp.asarray(plan["prefix"])[:, num_dense])
  rest = jnp.maximum(jnp.asarray(plan["rest"])[num_dense], 1)
  floors, remainders = _wide_divmod(_wide_mul(budget[:, None], plan["sums"]), rest)
  nondense = jnp.arange(num) >= num_dense
  floors = jnp.where(nondense, floors, 0)
  left_over = _wide_to_int32(_wide_carry(budget - jnp.sum(_wide_from_int32(floors), axis=1)))
  # Largest remainders first; among equal remainders the earlier leaf (flatten order) first.
  rank_key = jnp.asarray(plan["order"])
  r = jnp.where(nondense, remainders, -1)
  beats = (r[None, :] > r[:, None]) | ((r[None, :] == r[:, None]) & (rank_key[None, :] < rank_key[:, None]))
  rank = jnp.sum(beats & nondense[None, :], axis=1, dtype=jnp.int32)
  kept = jnp.where(nondense, floors + (rank < left_over).astype(jnp.int32), plan["sizes"])
  pruned = plan["sizes"] - kept
  for pos, i in enumerate(plan["order"]):
    out[nonempty[int(i)]] = pruned[pos]
  return out


# ---------------------------------------------------------------------------
# Overrides and dispatch
# ---------------------------------------------------------------------------


def check_distribution(distribution: Any) -> None:
  """Raises ValueError unless ``distribution`` is one of :data:`DISTRIBUTIONS`."""
  if not isinstance(distribution, str) or distribution not in DISTRIBUTIONS:
    allowed = ", ".join(repr(d) for d in DISTRIBUTIONS)
    raise ValueError(f"`distribution` must be one of {allowed}, got {distribution!r}.")


def check_overrides(overrides: Any, *, allow_full: bool = False) -> None:
  """Validates the form of ``overrides`` at construction."""
  if overrides is None or callable(overrides):
    return
  if not isinstance(overrides, Mapping):
    raise TypeError(
      "`overrides` must be None, a mapping {'path/to/leaf': sparsity} or a callable "
      f"(path, leaf) -> sparsity or None, got {type(overrides).__name__}."
    )
  for key, value in overrides.items():
    if not isinstance(key, str):
      raise TypeError(f"`overrides` keys must be leaf paths like 'layer/kernel' (str), got {key!r}.")
    if not callable(value):
      _validation.check_sparsity(f"overrides[{key!r}]", value, allow_full=allow_full)


def resolve_overrides(
  params: optax.Params, flags: Sequence[bool], overrides: Optional[Overrides], *, allow_full: bool = False
) -> list[Optional[optax.ScalarOrSchedule]]:
  """Per leaf of ``params`` (flatten order), its override or None.

  Raises:
    ValueError: if a mapping names a leaf that does not exist or is not pruned,
      or a value is outside the allowed range.
  """
  leaves_with_path = jax.tree_util.tree_flatten_with_path(params)[0]
  result: list[Optional[optax.ScalarOrSchedule]] = [None] * len(leaves_with_path)
  if overrides is None:
    return result
  names = [_leaves.path_str(path) for path, _ in leaves_with_path]
  if callable(overrides):
    for i, (flag, (path, leaf)) in enumerate(zip(flags, leaves_with_path)):
      if flag:
        value = overrides(path, leaf)
        if value is not None and not callable(value):
          _validation.check_sparsity(f"overrides({names[i]!r}, ...)", value, allow_full=allow_full)
        result[i] = value
    return result
  pruned = [name for name, flag in zip(names, flags) if flag]
  for key, value in overrides.items():
    if key not in names or not flags[names.index(key)]:
      reason = "is not a pruned leaf (see `filter`)" if key in names else "names no leaf"
      raise ValueError(f"`overrides` key {key!r} {reason}; pruned leaves are: {pruned}.")
    result[names.index(key)] = value
  return result


def prune_masks(
  candidates: Sequence[jax.Array],
  sparsity: ArrayLike,
  leaf_sparsities: Sequence[Optional[ArrayLike]],
  distribution: str = "uniform",
) -> list[jax.Array]:
  """Keep-masks for the pruned leaves under a distribution, with per-leaf overrides.

  Args:
    candidates: the scores of the pruned leaves (``|c|`` is ranked).
    sparsity: the main sparsity level (may be traced).
    leaf_sparsities: per candidate, None (follow the distribution) or its own
      sparsity (may be traced); overridden leaves are pruned on their own at
      that level and left out of the distribution.
    distribution: ``"uniform"``, ``"global"`` or ``"erk"``.

  Returns:
    Bool arrays shaped like ``candidates``, True where kept.

  Example:
    >>> import jax.numpy as jnp
    >>> from cyclax import _distribution
    >>> leaves = [jnp.array([1.0, 2.0, 3.0, 4.0]), jnp.array([0.5, 5.0])]
    >>> masks = _distribution.prune_masks(leaves, 0.5, [None, None], "global")
    >>> [m.tolist() for m in masks]
    [[False, False, True, True], [False, True]]
  """
  check_distribution(distribution)
  candidates = list(candidates)
  ks: list[Any] = [None] * len(candidates)
  pool = [i for i, s in enumerate(leaf_sparsities) if s is None]
  for i, s in enumerate(leaf_sparsities):
    if s is not None:
      ks[i] = _select.num_to_prune(s, candidates[i].size)
  if pool and distribution == "uniform":
    for i in pool:
      ks[i] = _select.num_to_prune(sparsity, candidates[i].size)
  elif pool and distribution == "erk":
    for i, k in zip(pool, erk_num_to_prune(sparsity, [candidates[i].shape for i in pool])):
      ks[i] = k
  elif pool:
    scores = [candidates[i] for i in pool]
    total = _select.num_to_prune_total(sparsity, [c.size for c in scores])
    masks = [None] * len(candidates)
    for i, m in zip(pool, _select.global_prune_masks(scores, total)):
      masks[i] = m
    alone = [i for i in range(len(candidates)) if i not in pool]
    for i, m in zip(alone, _select.prune_masks([candidates[i] for i in alone], [ks[i] for i in alone])):
      masks[i] = m
    return masks
  return _select.prune_masks(candidates, ks)
