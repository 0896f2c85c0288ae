"""One pruning step: ``init``, the mask refresh, and ``update`` of a :class:`PruneConfig`.

With ``u`` the update from the rest of the chain and ``p`` the params, the
candidate is ``c = p + u``. A refresh ranks ``|c|`` and returns new keep-masks;
every step returns ``where(mask, u, -p)``, so ``p + update`` is ``c`` where a
weight is kept and exactly ``+0.0`` where it is pruned.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax import lax

from cyclax import _cadence, _config, _masks, _packing, _select, _state, _validation
from cyclax._state import MagnitudePruneState


def init(config: _config.PruneConfig, params: optax.Params) -> MagnitudePruneState:
  """All-kept masks for the pruned leaves (None for the others) and zero counters."""
  plan = _config.make_plan(config, params)
  leaves = jax.tree.leaves(params)
  masks: list[Any] = [None] * len(leaves)
  for i in plan.pruned:
    masks[i] = jnp.ones_like(leaves[i], dtype=jnp.bool_)
  # Every field gets its own buffers: a donated state must not hold one buffer twice.
  zero = lambda: jnp.zeros([], jnp.int32)
  tracked = lambda: (
    plan.treedef.unflatten([None if m is None else jnp.zeros_like(m) for m in masks])
    if config.track_regrowth
    else None
  )
  return MagnitudePruneState(
    count=zero(),
    masks=plan.treedef.unflatten([None if m is None else as_stored(config, m) for m in masks]),
    misplaced_steps=zero(),
    nonfinite_steps=zero(),
    skipped_refreshes=zero(),
    ever_pruned=tracked(),
    last_regrown=tracked(),
  )


def as_stored(config: _config.PruneConfig, mask: jax.Array) -> Any:
  """A bool mask in the form the state keeps (bit-packed with ``packed_masks``)."""
  return _packing.pack_mask(mask) if config.packed_masks else mask


def in_stored_form(config: _config.PruneConfig, result: _Refresh) -> _Refresh:
  """``result`` with its masks as the state keeps them (see :func:`as_stored`)."""
  return result._replace(masks=[as_stored(config, m) for m in result.masks])


class _Refresh(NamedTuple):
  """What a refresh computes, per pruned leaf where it is a list."""

  masks: list[jax.Array]
  misplaced: jax.Array  # finite non-zero params where the previous mask pruned
  nonfinite: jax.Array  # NaN or inf params where the previous mask pruned
  skipped: jax.Array  # the sparsity was NaN: the previous masks were kept
  ever_pruned: Optional[list[jax.Array]]
  last_regrown: Optional[list[jax.Array]]


def _levels(config: _config.PruneConfig, plan: _config.Plan, count: jax.Array) -> tuple[jax.Array, list]:
  level = _cadence.sparsity_at(config.sparsity, count)
  leaf_levels = [
    None if o is None else _cadence.sparsity_at(o, count, f"overrides['{name}']")
    for o, name in zip(plan.overrides, plan.names)
  ]
  return level, leaf_levels


def _leaf_counts(preds: list[list[jax.Array]], plan: _config.Plan, axis_name: Any) -> list[list[jax.Array]]:
  """Per pruned leaf, the number of True entries of each of its predicates over the whole leaf.

  One fused pass per leaf (``count_true``); a leaf split over ``axis_name`` is
  summed over it.
  """
  axes = [None if plan.dims is None or plan.dims[k] is None else axis_name for k in range(len(preds))]
  return [_select.count_true(p, axis) for p, axis in zip(preds, axes)]


def refresh(
  config: _config.PruneConfig,
  plan: _config.Plan,
  state: MagnitudePruneState,
  params: list[jax.Array],
  updates: list[jax.Array],
) -> _Refresh:
  """New masks from ``|p + u|`` at the sparsity of ``state.count``, and the placement checks.

  A NaN sparsity (from a schedule or an injected value) keeps the previous masks
  and is reported in ``skipped``.
  """
  level, leaf_levels = _levels(config, plan, state.count)
  valid = jnp.all(jnp.isfinite(jnp.stack([level] + [x for x in leaf_levels if x is not None])))
  fresh = _masks.select_masks(
    [(p + u).astype(p.dtype) for p, u in zip(params, updates)],
    jnp.where(valid, level, 0.0),
    [None if x is None else jnp.where(valid, x, 0.0) for x in leaf_levels],
    distribution=config.distribution,
    pattern=config.pattern,
    pattern_axis=config.pattern_axis,
    axis_name=config.axis_name,
    sharded_dims=None if plan.dims is None else list(plan.dims),
    names=[f"leaf '{name}'" for name in plan.names],
  )
  old = [_packing.as_bool(m) for m in pruned_leaves(plan, state.masks)]
  new = [jnp.where(valid, f, o) for f, o in zip(fresh, old)]
  counts = _leaf_counts(_checks(config, old, new, params), plan, config.axis_name)
  # The new masks are read only after the checks, which read the params: so XLA updates
  # donated params in place after them instead of copying them first.
  new = [jnp.where(c[0] >= 0, m, False) for c, m in zip(counts, new)]
  misplaced = jnp.any(jnp.stack([c[0] > 0 for c in counts]))
  nonfinite = jnp.any(jnp.stack([c[1] > 0 for c in counts]))
  ever = regrown = None
  if config.track_regrowth:
    ever, regrown = _regrowth(plan, state, old, new, [c[2:] for c in counts])
  return _Refresh(new, misplaced, nonfinite, jnp.logical_not(valid), ever, regrown)


def _checks(
  config: _config.PruneConfig, old: list[jax.Array], new: list[jax.Array], params: list[jax.Array]
) -> list[list[jax.Array]]:
  """Per leaf, the predicates counted at a refresh.

  Finite non-zero params where the previous mask pruned (misplacement), NaN or
  inf params there (divergence), and with regrowth tracking the entries pruned
  before and after the refresh.
  """
  out = []
  for o, n, p in zip(old, new, params):
    pruned, finite = jnp.logical_not(o), jnp.isfinite(p)
    preds = [pruned & finite & (p != 0), pruned & jnp.logical_not(finite)]
    if config.track_regrowth:
      preds += [pruned, jnp.logical_not(n)]
    out.append(preds)
  return out


def _regrowth(
  plan: _config.Plan,
  state: MagnitudePruneState,
  old: list[jax.Array],
  new: list[jax.Array],
  pruned_counts: list[list[jax.Array]],
) -> tuple[list[jax.Array], list[jax.Array]]:
  """The tracked trees after a refresh: ever pruned, and regrown at the latest drop of each leaf."""
  ever = plan.treedef.flatten_up_to(state.ever_pruned)
  last = plan.treedef.flatten_up_to(state.last_regrown)
  ever = [ever[i] | jnp.logical_not(m) for i, m in zip(plan.pruned, new)]
  # A leaf whose number pruned goes down (a cycle start) records the weights it lets back.
  regrown = [
    jnp.where(after < before, m & jnp.logical_not(o), last[i])
    for i, m, o, (before, after) in zip(plan.pruned, new, old, pruned_counts)
  ]
  return ever, regrown


def kept(
  config: _config.PruneConfig,
  plan: _config.Plan,
  state: MagnitudePruneState,
  stored: list,
  blank: bool = True,
) -> _Refresh:
  """The result of a step that does not refresh, shaped like :func:`refresh`'s (masks as stored).

  With ``blank``, bool masks come back all False, cheaper to write than a copy
  of the stored ones; a select outside the conditional then picks the stored
  masks. Packed masks always come back as stored.
  """
  no = jnp.zeros([], jnp.bool_)
  tracked: list[Any] = [None, None]
  if config.track_regrowth:
    tracked = [pruned_leaves(plan, t) for t in (state.ever_pruned, state.last_regrown)]
  if blank and not config.packed_masks:
    stored = [jnp.zeros_like(m) for m in stored]  # zeros_like keeps each mask's sharding
  return _Refresh(stored, no, no, no, tracked[0], tracked[1])


def _refreshed_masks(
  config: _config.PruneConfig,
  plan: _config.Plan,
  state: MagnitudePruneState,
  refresh_masks: Optional[bool],
  new_masks: Callable[[], _Refresh],
) -> tuple[list[jax.Array], list[Any], Optional[_Refresh]]:
  """The masks of this step (bool), as stored, and the refresh result (None if none can happen).

  ``new_masks`` computes a refresh (:func:`refresh` on this step's pruned leaves).
  """
  stored = pruned_leaves(plan, state.masks)
  if refresh_masks is False:
    return [_packing.as_bool(m) for m in stored], stored, None
  if refresh_masks or (refresh_masks is None and config.refreshes_every_step):
    result = new_masks()
    return result.masks, [as_stored(config, m) for m in result.masks], result
  # All refresh work lives in one branch. A conditional's operands are buffers,
  # so the incoming update is written to memory every step (BENCHMARKS.md).
  due = _cadence.refresh_due(config.sparsity, config.update_every, state.count)

  result = lax.cond(
    due, lambda: in_stored_form(config, new_masks()), lambda: kept(config, plan, state, stored)
  )
  if config.packed_masks:
    return [_packing.as_bool(m) for m in result.masks], result.masks, result
  masks = [jnp.where(due, f, m) for f, m in zip(result.masks, stored)]
  return masks, masks, result


def apply(
  config: _config.PruneConfig,
  updates: optax.Updates,
  state: MagnitudePruneState,
  params: optax.Params,
  refresh_masks: Optional[bool] = None,
) -> tuple[optax.Updates, MagnitudePruneState]:
  """The projected update and the new state (the array work of ``update``)."""
  plan = _config.make_plan(config, params)
  p_in, u_in = pruned_leaves(plan, params), pruned_leaves(plan, updates)
  new_masks = lambda: refresh(config, plan, state, p_in, u_in)
  masks, stored, result = _refreshed_masks(config, plan, state, refresh_masks, new_masks)
  return project(config, plan, state, updates, params, masks, stored, result)


def project(
  config: _config.PruneConfig,
  plan: _config.Plan,
  state: MagnitudePruneState,
  updates: optax.Updates,
  params: optax.Params,
  masks: list[jax.Array],
  stored: list[Any],
  result: Optional[_Refresh],
) -> tuple[optax.Updates, MagnitudePruneState]:
  """``where(mask, u, -p)`` on the pruned leaves, and the state after this step."""
  out = plan.treedef.flatten_up_to(updates)
  p_leaves = plan.treedef.flatten_up_to(params)
  for i, m in zip(plan.pruned, masks):
    out[i] = jnp.where(m, out[i], -p_leaves[i])
  new_state = state._replace(
    count=optax.safe_increment(state.count), masks=_replace_leaves(plan, state.masks, stored)
  )
  if result is not None:
    new_state = new_state._replace(
      misplaced_steps=state.misplaced_steps + result.misplaced.astype(jnp.int32),
      nonfinite_steps=state.nonfinite_steps + result.nonfinite.astype(jnp.int32),
      skipped_refreshes=state.skipped_refreshes + result.skipped.astype(jnp.int32),
    )
    if config.track_regrowth:
      # refresh and kept fill both with regrowth tracking on.
      assert result.ever_pruned is not None and result.last_regrown is not None
      new_state = new_state._replace(
        ever_pruned=_replace_leaves(plan, state.ever_pruned, result.ever_pruned),
        last_regrown=_replace_leaves(plan, state.last_regrown, result.last_regrown),
      )
  return plan.treedef.unflatten(out), new_state


def pruned_leaves(plan: _config.Plan, tree: Any) -> list[Any]:
  """The leaves of ``tree`` (shaped like the params) at the pruned positions."""
  leaves = plan.treedef.flatten_up_to(tree)
  return [leaves[i] for i in plan.pruned]


def _replace_leaves(plan: _config.Plan, tree: Any, pruned_leaves: list[jax.Array]) -> Any:
  leaves = plan.treedef.flatten_up_to(tree)
  for i, x in zip(plan.pruned, pruned_leaves):
    leaves[i] = x
  return plan.treedef.unflatten(leaves)


def update(
  config: _config.PruneConfig,
  jitted_apply: Any,
  updates: optax.Updates,
  state: optax.OptState,
  params: Optional[optax.Params],
  refresh_masks: Optional[bool],
) -> tuple[optax.Updates, MagnitudePruneState]:
  """Checks the inputs against the config (naming leaves), then runs ``jitted_apply``."""
  _validation.require_params(params, "magnitude_prune")
  assert params is not None  # require_params raised otherwise
  _validation.check_refresh_flag(refresh_masks)
  plan = _config.make_plan(config, params)
  _state.check_state(config, plan, state, updates, params)
  assert isinstance(state, MagnitudePruneState)  # check_state raised otherwise
  if not plan.pruned:
    return updates, state._replace(count=optax.safe_increment(state.count))
  return jitted_apply(updates, state, params, refresh_masks=refresh_masks)


def make_jitted_apply(config: _config.PruneConfig) -> Any:
  """``apply`` for one config under ``jax.jit``: inlined under an outer jit; compiled once when eager."""
  return jax.jit(functools.partial(apply, config), static_argnames="refresh_masks")
