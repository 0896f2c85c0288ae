"""Reading pruning results: the masks inside an optimizer state, and sparsity."""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from cyclax import _leaves, _packing
from cyclax._pruning import MagnitudePruneState


def find_prune_state(opt_state: optax.OptState) -> MagnitudePruneState:
  """Finds the :class:`MagnitudePruneState` inside any nested optimizer state.

  Works through ``optax.chain``, ``optax.masked``, ``optax.inject_hyperparams``,
  ``optax.MultiSteps``, ``optax.apply_if_finite`` and any other state that is a
  pytree of NamedTuples.

  Args:
    opt_state: the full optimizer state.

  Returns:
    The single pruning state in it.

  Raises:
    ValueError: if there is no pruning state, or more than one.

  Example:
    >>> import jax.numpy as jnp, optax, cyclax
    >>> tx = optax.chain(optax.sgd(0.1), cyclax.magnitude_prune(0.5))
    >>> state = tx.init({"w": jnp.ones((2, 2))})
    >>> int(cyclax.find_prune_state(state).count)
    0
  """
  is_state = lambda x: isinstance(x, MagnitudePruneState)  # noqa: E731
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(x)]
  if len(found) != 1:
    raise ValueError(
      f"expected exactly one cyclax pruning state in the optimizer state, found {len(found)}; "
      "with several, pick one from `opt_state` by its position in the chain."
    )
  return found[0]


def get_masks(opt_state: optax.OptState) -> Any:
  """The current keep-masks (True = kept, None = dense leaf) from an optimizer state.

  Args:
    opt_state: the full optimizer state holding one cyclax pruning state.

  Returns:
    A tree shaped like the params with a bool array per pruned leaf (masks
    stored with ``packed_masks=True`` are unpacked).

  Example:
    >>> import jax.numpy as jnp, optax, cyclax
    >>> tx = optax.chain(optax.sgd(0.1), cyclax.magnitude_prune(0.5))
    >>> masks = cyclax.get_masks(tx.init({"w": jnp.ones((2, 2)), "b": jnp.ones(2)}))
    >>> masks["b"] is None, masks["w"].shape
    (True, (2, 2))
  """
  masks = find_prune_state(opt_state).masks
  return jax.tree.map(
    lambda m: _packing.unpack_mask(m) if _packing.is_packed(m) else m, masks, is_leaf=_packing.is_packed
  )


def sparsity_report(params: optax.Params, *, filter: Optional[_leaves.Filter] = None) -> dict[str, jax.Array]:
  """Fraction of exact zeros per leaf and in total.

  Args:
    params: a params tree.
    filter: which leaves to report, as in :func:`magnitude_prune`; None reports
      every floating-point leaf.

  Returns:
    A flat dict ``{"path/to/leaf": sparsity, ..., "total": sparsity}`` of float32
    scalars, ready for any logger; ``total`` is over the reported leaves.

  Example:
    >>> import jax.numpy as jnp, cyclax
    >>> report = cyclax.sparsity_report({"w": jnp.array([[0.0, 1.0], [0.0, 0.0]])})
    >>> {k: float(v) for k, v in report.items()}
    {'w': 0.75, 'total': 0.75}
  """
  if filter is None:
    filter = lambda path, leaf: jnp.issubdtype(leaf.dtype, jnp.floating)  # noqa: E731
  flags = _leaves.select_leaves(params, filter)
  leaves_with_path = jax.tree_util.tree_flatten_with_path(params)[0]
  report: dict[str, jax.Array] = {}
  zeros_total = jnp.zeros([], jnp.float32)
  size_total = 0
  for flag, (path, leaf) in zip(flags, leaves_with_path):
    if not flag:
      continue
    zeros = jnp.sum(leaf == 0, dtype=jnp.int32)
    report[_leaves.path_str(path)] = zeros.astype(jnp.float32) / max(leaf.size, 1)
    zeros_total = zeros_total + zeros.astype(jnp.float32)
    size_total += leaf.size
  report["total"] = zeros_total / max(size_total, 1)
  return report
