"""How one sparsity level is spread over the pruned leaves.

- ``"uniform"`` (the paper's): every leaf loses ``num_to_prune(s, leaf.size)``
  entries (:func:`cyclax.num_to_prune`: ``floor(s * n + 1/2)`` with ``s`` rounded to
  a multiple of ``2**-24``).
- ``"global"``: one magnitude threshold over all leaves together; exactly
  ``num_to_prune(s, total_size)`` entries are pruned, ties at the threshold going to the
  earlier leaf (flatten order), then the lower row-major index.
- ``"erk"``: Erdos-Renyi-Kernel (Evci et al., 2020, "Rigging the Lottery"): the
  density of a leaf is proportional to ``sum(shape) / prod(shape)`` (all
  dimensions, convolution windows included); leaves whose density would exceed 1
  are kept dense and the rest are rescaled, so that exactly
  ``num_to_prune(s, total_size)`` entries are pruned in all.

Per-leaf overrides fix the sparsity of named leaves; those leaves are left out
of the distribution, which spreads the main sparsity over the remaining leaves.

Every count is formed in exact integer arithmetic from a traced sparsity
(rounded like :func:`cyclax.num_to_prune`), so totals beyond ``2**31`` entries
stay exact on a 32-bit JAX.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from cyclax import _exact, _leaves, _validation

DISTRIBUTIONS = ("uniform", "global", "erk")

# A mapping ``{"path/of/leaf": sparsity}`` or a callable ``(path, leaf) -> sparsity or None``;
# each sparsity is a number or an optax-style schedule.
Overrides = Union[
  Mapping[str, optax.ScalarOrSchedule], Callable[[tuple, Any], Optional[optax.ScalarOrSchedule]]
]


class _ErkPlan(NamedTuple):
  """The static part of the ERK allocation, in the order of the ERK ranking (see :func:`_erk_plan`)."""

  order: np.ndarray  # int32: the position among the leaves of each ranked leaf
  sizes: np.ndarray  # int32: entries of each ranked leaf
  dim_sums: _exact.Wide  # the sum of the dimensions of each ranked leaf
  dense_prefix: _exact.Wide  # per j = 0..num, the entries of the first j ranked leaves
  rest_sums: np.ndarray  # int32: per j = 0..num, the dimension sums of the ranked leaves from j on
  dense_above: _exact.Wide  # per j: leaf j is dense too when the kept total exceeds this
  total: int  # entries of all leaves


def _erk_plan(shapes: Sequence[tuple[int, ...]]) -> _ErkPlan:
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
  return _ErkPlan(
    order=np.asarray(order, np.int32),
    sizes=np.asarray(n, np.int32),
    dim_sums=_exact.constant(dim),
    dense_prefix=_exact.constant(prefix),
    rest_sums=np.asarray(rest, np.int32),
    dense_above=_exact.constant([prefix[j] + (rest[j] * n[j]) // dim[j] for j in range(len(n))]),
    total=sum(n),
  )


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
  kept_total = _exact.sub(_exact.constant(plan.total), _exact.num_to_prune_total(sparsity, [plan.total]))
  above = _exact.less(plan.dense_above, _exact.Wide(kept_total.limbs[:, None]))
  num_dense = jnp.sum(jnp.cumprod(above.astype(jnp.int32)), dtype=jnp.int32)
  budget = _exact.sub(kept_total, _exact.Wide(jnp.asarray(plan.dense_prefix.limbs)[:, num_dense]))
  rest = jnp.maximum(jnp.asarray(plan.rest_sums)[num_dense], 1)
  floors, remainders = _exact.divmod_int32(
    _exact.mul(_exact.Wide(budget.limbs[:, None]), plan.dim_sums), rest
  )
  nondense = jnp.arange(num) >= num_dense
  floors = jnp.where(nondense, floors, 0)
  left_over = _exact.to_int32(_exact.sub(budget, _exact.sum_int32(floors)))
  # Largest remainders first; among equal remainders the earlier leaf (flatten order) first.
  rank_key = jnp.asarray(plan.order)
  r = jnp.where(nondense, remainders, -1)
  beats = (r[None, :] > r[:, None]) | ((r[None, :] == r[:, None]) & (rank_key[None, :] < rank_key[:, None]))
  rank = jnp.sum(beats & nondense[None, :], axis=1, dtype=jnp.int32)
  kept = jnp.where(nondense, floors + (rank < left_over).astype(jnp.int32), plan.sizes)
  pruned = plan.sizes - kept
  for pos, i in enumerate(plan.order):
    out[nonempty[int(i)]] = pruned[pos]
  return out


# ---------------------------------------------------------------------------
# Checks and overrides
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
