"""The pruning transformation's type and state, their consistency, and what a state reports to the host."""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple, Optional

import jax
import jax.core
import numpy as np
import optax
from jax import export

from cyclax import _cadence, _config, _packing


class PruningOrderWarning(UserWarning):
  """Params arrived non-zero where the previous mask pruned them.

  cyclax is not the last transformation of the chain, or params were changed
  outside the optimizer. Issued on the host by the helpers that read a state
  (:func:`cyclax.find_prune_state` and those built on it) when its
  ``misplaced_steps`` is above 0.
  """


class PruningValueWarning(UserWarning):
  """A state recorded bad values: NaN or inf params in pruned slots, or refreshes skipped (NaN sparsity)."""


class PruningTransformation(optax.GradientTransformationExtraArgs):
  """What :func:`magnitude_prune` and :func:`cyclical_prune` return.

  An ``optax.GradientTransformationExtraArgs`` (``init``, ``update``) with one
  more method, :meth:`refresh_due`. ``update(updates, state, params, *,
  refresh_masks=None)`` takes the keyword ``refresh_masks``, which
  ``optax.chain`` and ``nnx.Optimizer.update`` pass through:

  - ``None`` (default): the compiled step refreshes the masks when the count is
    due (see :meth:`refresh_due`), inside a ``lax.cond``;
  - ``True``: refresh at this step; ``False``: apply the stored masks. A Python
    bool decides at trace time, so no conditional is traced and a step that
    does not refresh costs about one select per pruned weight. Mark it static:
    ``jax.jit(train_step, static_argnames="refresh_masks")``.

  The flag wins over the count: ``True`` refreshes at the sparsity of the
  current count even off the cadence, ``False`` keeps the stored masks even when
  a refresh is due. The count advances either way, so a loop that passes
  ``refresh_masks=prune.refresh_due(step)`` equals the default loop bit for bit.
  """

  def refresh_due(self, step: int) -> bool:
    """Whether the default path refreshes the masks at this count (computed on the host).

    The rule: ``step % update_every == 0``, or the sparsity schedule drops at
    ``step`` (``s(step) < s(step - 1)``, a cycle start), or the schedule
    settles there (reaches a level that it then holds: the end of a ramp, a
    jump; cyclax's schedules declare it with a ``settles_at`` attribute). The
    schedule is evaluated on the host's CPU, compiled once.

    Args:
      step: the pruning state's count before the update: the number of
        ``update`` calls so far (the optimizer step, unless the chain is wrapped
        in ``optax.MultiSteps`` or similar).

    Returns:
      A Python bool, for ``update(..., refresh_masks=...)``.

    Example:
      >>> import cyclax
      >>> prune = cyclax.cyclical_prune(0.9, num_cycles=2, cycle_steps=150, update_every=40)
      >>> [t for t in range(300) if prune.refresh_due(t)]  # ramps end at 120 and 270
      [0, 40, 80, 120, 150, 160, 200, 240, 270, 280]
    """
    due = self.__dict__.get("_host_due")
    if due is None:  # built on first use: it compiles the schedule
      config = self.__dict__["_config"]
      due = self.__dict__["_host_due"] = _cadence.host_refresh_due(config.sparsity, config.update_every)
    return due(step)


class MagnitudePruneState(NamedTuple):
  """State of :func:`magnitude_prune` and :func:`cyclical_prune`.

  Attributes:
    count: int32 scalar, the number of ``update`` calls so far; the sparsity
      schedule is evaluated on it and it decides which steps refresh the masks.
    masks: a tree shaped like the params: a bool array (True = kept) for every
      pruned leaf, ``None`` for leaves left dense. With ``packed_masks=True``
      each pruned leaf holds a :class:`PackedMask` (one bit per weight) instead;
      :func:`get_masks` always returns bool arrays.
    misplaced_steps: int32 scalar, how many refreshes received finite params
      that were non-zero where the previous mask pruned them (should stay 0:
      cyclax is not last in the chain, or params were edited outside the
      optimizer).
    nonfinite_steps: int32 scalar, how many refreshes found NaN or inf params
      where the previous mask pruned them. No additive update can set such a
      weight to zero (``inf + (-inf)`` is NaN), so a diverged weight stays
      non-finite; it is reported here rather than as misplacement.
    skipped_refreshes: int32 scalar, how many refreshes were skipped because a
      sparsity (from a schedule or an injected value) was NaN; the previous
      masks were kept.
    ever_pruned: with ``track_regrowth=True``, a tree like ``masks`` that is
      True where a weight has been pruned at some refresh so far; otherwise None.
    last_regrown: with ``track_regrowth=True``, a tree like ``masks`` that is
      True where a weight was regrown at the latest refresh that lowered its
      leaf's number of pruned entries (a cycle start): kept by that refresh's
      mask and pruned by the mask before it. Otherwise None.
  """

  # optax's states name their step counter `count` too; the field shadows tuple.count.
  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  masks: Any
  misplaced_steps: jax.Array
  nonfinite_steps: jax.Array
  skipped_refreshes: jax.Array
  ever_pruned: Any = None
  last_regrown: Any = None


CyclicalPruneState = MagnitudePruneState


def _shape_of(x: Any) -> tuple[int, ...]:
  return tuple(x.shape)


def _flatten(plan: _config.Plan, tree: Any, what: str) -> list[Any]:
  try:
    return plan.treedef.flatten_up_to(tree)
  except (ValueError, TypeError) as e:
    raise ValueError(f"{what} must have the params' tree structure: {e}") from None


def check_state(
  config: _config.PruneConfig, plan: _config.Plan, state: Any, updates: optax.Updates, params: optax.Params
) -> None:
  """Raises a clear error when ``updates`` or ``state`` do not fit the params and the config.

  Raises:
    TypeError: if ``state`` is not a :class:`MagnitudePruneState`.
    ValueError: naming the leaf and the setting that differs (``filter``,
      ``packed_masks``, ``track_regrowth``) or the shapes that do not match.
  """
  if not isinstance(state, MagnitudePruneState):
    raise TypeError(
      "the state must be the MagnitudePruneState made by this transformation's init, got "
      f"{type(state).__name__}."
    )
  p_leaves = plan.treedef.flatten_up_to(params)
  u_leaves = _flatten(plan, updates, "`updates`")
  m_leaves = _flatten(plan, state.masks, "the pruning state's masks")
  pruned = set(plan.pruned)
  names = dict(zip(plan.pruned, plan.names))
  for i, (p, u, m) in enumerate(zip(p_leaves, u_leaves, m_leaves)):
    if i not in pruned:
      if m is not None:
        raise ValueError(
          "the pruning state's masks were made with another `filter`: a leaf this transformation leaves "
          f"dense has a mask of shape {_shape_of(m)} (leaf {i} in flatten order)."
        )
      continue
    name = names[i]
    if m is None:
      raise ValueError(
        f"the pruning state's masks were made with another `filter`: leaf '{name}' is pruned by this "
        "transformation but has no mask in the state. Re-create the state with this transformation's init."
      )
    if _packing.is_packed(m) != config.packed_masks:
      raise ValueError(
        f"the pruning state was made with packed_masks={_packing.is_packed(m)} but this transformation has "
        f"packed_masks={config.packed_masks} (leaf '{name}'); use the same setting for init and update."
      )
    if u is None:
      raise ValueError(f"`updates` has None for the pruned leaf '{name}'; every pruned leaf needs an update.")
    for what, x in (("its update", u), ("its mask in the pruning state", m)):
      if _shape_of(x) != _shape_of(p):
        raise ValueError(
          f"leaf '{name}' has shape {_shape_of(p)} in params but {_shape_of(x)} in {what}: updates and "
          "state must be made for these params (was the model resized? then re-run init)."
        )
  tracked = state.ever_pruned is not None, state.last_regrown is not None
  if tracked != (config.track_regrowth, config.track_regrowth):
    raise ValueError(
      f"the pruning state was made with track_regrowth={tracked[0]} but this transformation has "
      f"track_regrowth={config.track_regrowth}; use the same setting for init and update."
    )
  _check_mapped_axes(config, plan, p_leaves)


def _varying_axes(x: Any) -> set:
  """The manual mesh axes over which ``x`` differs between devices (empty outside shard_map)."""
  try:
    aval = jax.typeof(x)
  except TypeError:
    return set()
  manual = getattr(aval, "manual_axis_type", None)  # jax >= 0.9
  varying = getattr(manual, "varying", None) if manual is not None else getattr(aval, "vma", None)
  return set(varying or ())


def _check_mapped_axes(config: _config.PruneConfig, plan: _config.Plan, p_leaves: list[Any]) -> None:
  """Inside ``shard_map``, a leaf that varies over a manual axis must be split over ``axis_name``."""
  named = set() if config.axis_name is None else set(np.atleast_1d(config.axis_name).tolist())
  for i, name in zip(plan.pruned, plan.names):
    missing = _varying_axes(p_leaves[i]) - named
    if missing:
      raise ValueError(
        f"leaf '{name}' differs between the devices of the mesh axes {sorted(missing)} (it is split inside "
        "shard_map), but axis_name does not name them: pass axis_name=<those axes> and sharded_dims=<the "
        "split dimension> so that the masks are computed over the whole leaf."
      )


def _host_count(x: Any) -> Optional[int]:
  """The largest value of a concrete integer counter (batched under vmap), else None."""
  if isinstance(x, jax.core.Tracer) or not hasattr(x, "dtype") or not np.issubdtype(x.dtype, np.integer):
    return None
  values = np.asarray(x)
  return int(values.max()) if values.size else 0


def report(state: MagnitudePruneState) -> None:
  """Warns on the host about what a concrete state recorded (nothing under ``jit``)."""
  counters = [_host_count(c) for c in (state.misplaced_steps, state.nonfinite_steps, state.skipped_refreshes)]
  if None in counters:
    return  # traced, or a tree of something else (e.g. optax.tree_map_params specs)
  misplaced, nonfinite, skipped = counters
  if misplaced:
    warnings.warn(
      f"cyclax: {misplaced} mask refreshes found params non-zero where the previous mask pruned them. "
      "cyclax.magnitude_prune / cyclical_prune must be the LAST transformation of the optax chain, e.g. "
      "optax.chain(optax.adamw(1e-3), cyclax.cyclical_prune(0.9, ...)), and params must not be changed "
      "outside the optimizer (the state's `misplaced_steps`).",
      PruningOrderWarning,
      stacklevel=3,
    )
  if nonfinite:
    warnings.warn(
      f"cyclax: {nonfinite} mask refreshes found NaN or inf params in pruned slots; no additive update can "
      "set them to zero, so training has diverged there (the state's `nonfinite_steps`).",
      PruningValueWarning,
      stacklevel=3,
    )
  if skipped:
    warnings.warn(
      f"cyclax: {skipped} mask refreshes were skipped because the sparsity was NaN; the previous masks were "
      "kept (the state's `skipped_refreshes`). Check the sparsity schedule or the injected value.",
      PruningValueWarning,
      stacklevel=3,
    )


# So that a step whose optimizer state holds a pruning state can be serialised with jax.export.
export.register_namedtuple_serialization(MagnitudePruneState, serialized_name="cyclax.MagnitudePruneState")
