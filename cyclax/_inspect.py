"""Reading pruning results: the masks inside an optimizer state, and sparsity."""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from cyclax import _leaves, _packing, _state
from cyclax._state import MagnitudePruneState


def find_prune_state(opt_state: optax.OptState) -> MagnitudePruneState:
  """Finds the :class:`MagnitudePruneState` inside any nested optimizer state.

  Works through ``optax.chain``, ``optax.masked``, ``optax.inject_hyperparams``,
  ``optax.MultiSteps``, ``optax.apply_if_finite`` and any other state that is a
  pytree of NamedTuples.

  Args:
    opt_state: the full optimizer state.

  Returns:
    The single pruning state in it. Outside ``jax.jit``, a state whose counters
    recorded a misplaced chain (``misplaced_steps``) or bad values
    (``nonfinite_steps``, ``skipped_refreshes``) is reported with a
    :class:`PruningOrderWarning` or :class:`PruningValueWarning`; every helper
    that reads a state goes through here.

  Raises:
    ValueError: if there is no pruning state, or more than one.

  Example:
    >>> import jax.numpy as jnp, optax, cyclax
    >>> tx = optax.chain(optax.sgd(0.1), cyclax.magnitude_prune(0.5))
    >>> state = tx.init({"w": jnp.ones((2, 2))})
    >>> int(cyclax.find_prune_state(state).count)
    0
  """
  state = lookup_prune_state(opt_state)
  _state.report(state)
  return state


def lookup_prune_state(opt_state: optax.OptState) -> MagnitudePruneState:
  """:func:`find_prune_state` without the host report (for library code that reads a state)."""
  is_state = lambda x: isinstance(x, MagnitudePruneState)
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
  return masks_of(find_prune_state(opt_state))


def masks_of(state: MagnitudePruneState) -> Any:
  """The bool keep-masks of one pruning state (packed masks unpacked)."""
  return _unpacked(state.masks)


def _unpacked(masks: Any) -> Any:
  return jax.tree.map(_packing.as_bool, masks, is_leaf=_packing.is_packed)


def masks_from(source: Any) -> Any:
  """Bool keep-masks from an optimizer state or from a masks tree.

  Args:
    source: an optimizer state holding one cyclax pruning state (its masks are
      read as :func:`get_masks` reads them), or a masks tree (bool arrays,
      :class:`PackedMask` leaves, None for dense leaves).

  Returns:
    The masks tree with every :class:`PackedMask` unpacked to a bool array.

  Raises:
    ValueError: if ``source`` holds more than one pruning state.
  """
  is_state = lambda x: isinstance(x, MagnitudePruneState)
  found = [x for x in jax.tree.leaves(source, is_leaf=is_state) if is_state(x)]
  if len(found) > 1:
    raise ValueError(
      f"`masks` holds {len(found)} cyclax pruning states; pass one state or its `masks` tree instead."
    )
  return get_masks(source) if found else _unpacked(source)


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


def _is_mask_entry(x: Any) -> bool:
  """A position holding one mask entry: an array, or None / ``optax.MaskedNode`` for a dense leaf."""
  return x is None or isinstance(x, optax.MaskedNode)


def _masked_subtree(leaf_paths: list[tuple], mask_paths: set[tuple]) -> tuple:
  """The key path of the one subtree whose leaves, from it, are exactly ``mask_paths``."""
  below: dict[tuple, set] = {}  # every subtree's key path -> the key paths of its leaves, from it
  for path in leaf_paths:
    for i in range(len(path) + 1):
      below.setdefault(path[:i], set()).add(path[i:])
  found = [prefix for prefix, paths in below.items() if paths == mask_paths]
  if len(found) == 1:
    return found[0]
  if not found:
    shown = ", ".join(f"'{_leaves.path_str(p)}'" for p in sorted(mask_paths, key=str)[:4])
    raise ValueError(
      "`masks` must be an optimizer state holding a cyclax pruning state, or a masks tree (bool arrays, "
      "None for dense leaves) shaped like the params or like one subtree of them (the tree the optimizer "
      f"was built over); no subtree of the params has the masks' leaves ({shown}"
      f"{', ...' if len(mask_paths) > 4 else ''})."
    )
  names = ", ".join(f"'{_leaves.path_str(p)}'" for p in found)
  raise ValueError(
    f"`masks` matches several subtrees of the params ({names}); pass the subtree the optimizer was built "
    "over as `params`."
  )


def align_masks(params: Any, masks: Any, *, is_leaf: Optional[Any] = None) -> list[Any]:
  """Per leaf of ``params``, its keep-mask from an optimizer state or a masks tree.

  The masks may cover the whole of ``params`` or one subtree of it, such as the
  ``params`` collection of Flax variables when the optimizer was built over
  that collection. Leaves are matched by key path, not by node type, so the
  masks of a Flax NNX optimizer (``OptVariable`` nodes) line up with the
  model's params state (``Param`` nodes).

  Args:
    params: a tree of arrays.
    masks: as in :func:`masks_from`.
    is_leaf: passed to the flattening of ``params``.

  Returns:
    A list aligned with ``jax.tree_util.tree_flatten_with_path(params,
    is_leaf=is_leaf)``: a bool array per pruned leaf, None for dense leaves and
    for leaves outside the masked subtree.

  Raises:
    ValueError: if the masks match no subtree of ``params``, or several.
  """
  masks = masks_from(masks)
  entry = lambda x: _is_mask_entry(x) or (is_leaf is not None and is_leaf(x))
  leaf_paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(params, is_leaf=entry)[0]]
  mask_entries = jax.tree_util.tree_flatten_with_path(masks, is_leaf=_is_mask_entry)[0]
  prefix = _masked_subtree(leaf_paths, {path for path, _ in mask_entries})
  mask_of = {prefix + path: m for path, m in mask_entries if not _is_mask_entry(m)}
  return [mask_of.get(path) for path, _ in jax.tree_util.tree_flatten_with_path(params, is_leaf=is_leaf)[0]]
