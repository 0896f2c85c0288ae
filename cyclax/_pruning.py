"""Magnitude pruning as the last transformation of an optax chain.

At step ``t``, with ``u`` the update from the rest of the chain and ``p`` the
current params, the candidate is ``c = p + u`` (the dense point after the
optimizer's step). At refresh steps the masks are recomputed from ``|c|`` at
sparsity ``s(t)``; the returned update is ``where(mask, u, -p)``, so that
``p + update`` equals ``c`` where a weight is kept and is exactly ``+0.0`` where
it is pruned. This is projected gradient descent onto an L0 ball whose radius
follows the sparsity schedule (the paper's Algorithm 1).
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import optax
from jax.typing import ArrayLike

from cyclax import (
  _config,
  _distribution,
  _layout,
  _leaves,
  _patterns,
  _schedules,
  _step,
  _structured,
  _validation,
)
from cyclax._state import MagnitudePruneState, PruningTransformation


def magnitude_prune(
  sparsity: optax.ScalarOrSchedule,
  *,
  update_every: int = 100,
  filter: Optional[_leaves.Filter] = None,
  allow_full_sparsity: bool = False,
  pattern: Any = None,
  pattern_axis: Optional[int] = None,
  track_regrowth: bool = False,
  distribution: str = "uniform",
  overrides: Optional[_distribution.Overrides] = None,
  packed_masks: bool = False,
  axis_name: _layout.AxisName = None,
  sharded_dims: _layout.ShardedDims = 0,
) -> PruningTransformation:
  """Keeps the largest-magnitude weights after each step; prunes the rest to 0.

  Time-varying projected gradient descent: the update from the rest of the
  chain is applied, then every pruned leaf is projected onto its largest-magnitude
  entries. A leaf of ``n`` entries at sparsity ``s`` loses exactly
  ``k = floor(s' * n + 1/2)`` entries, where ``s'`` is ``s`` clipped to [0, 1]
  and rounded to a multiple of ``2**-24`` (so 0.9 of 50,000,000 entries prunes
  44,999,999; see :func:`cyclax.num_to_prune`). Ties in ``|w|`` are pruned
  lowest row-major index first; a NaN counts as larger than every number, so
  it is kept and the count stays exact.

  When the masks are refreshed (the default cadence): at every step ``t``
  with ``t % update_every == 0``, and also where the sparsity schedule drops
  (``s(t) < s(t - 1)``, a cycle start) or settles (the end of a ramp, a one-shot
  jump: cyclax's schedules declare these steps with a ``settles_at(count)``
  attribute, which a schedule of your own may carry too), so that a cyclical
  run of ``num_cycles * cycle_steps`` steps ends exactly at the target whatever
  ``update_every`` is (with ``ramp_fraction < 1``). :meth:`PruningTransformation.refresh_due` gives
  the rule on the host, and ``update(..., refresh_masks=True/False)`` decides
  statically (see :class:`PruningTransformation`).

  It must be the LAST transformation of a chain, like
  ``optax.keep_params_nonnegative``: it rewrites the final update so that
  ``params + update`` is sparse, and any transformation after it would change
  the update again. At every refresh the incoming params are checked against
  the previous masks: the state's ``misplaced_steps`` counts the refreshes that
  find finite non-zeros where the previous mask pruned, and ``nonfinite_steps``
  those that find NaN or inf there (diverged weights, which no additive update
  can zero). The compiled step holds no host callback, so it exports with
  ``jax.export`` and lowers for other platforms; the counters are reported
  with a :class:`PruningOrderWarning` (or :class:`PruningValueWarning`) by the
  helpers that read the state on the host (:func:`find_prune_state`,
  :func:`get_masks`, :func:`pruning_metrics`, :func:`to_bcoo`, ...).

  A sparsity that is NaN at a refresh (a schedule's or an injected value)
  keeps the previous masks and is counted in ``skipped_refreshes``. Injected
  values (``optax.inject_hyperparams``) cannot be checked when they are set, so
  they are clipped into range: a sparsity into [0, 1], ``update_every`` to at
  least 1. Callable arguments (``filter``, ``overrides``, ``sharded_dims``) must
  be listed in ``static_args`` there, or optax calls them as schedules.

  Args:
    sparsity: fraction of each pruned leaf set to zero: a float in [0, 1) or an
      optax-style schedule ``step -> sparsity`` (values are clipped to [0, 1];
      a schedule must return a scalar).
    update_every: steps between mask refreshes on the cadence (>= 1; any size:
      a value past the run refreshes only at step 0 and where the schedule
      drops or settles). ``1`` gives plain iterative hard thresholding.
    filter: which leaves to prune. None prunes floating-point leaves with
      ``ndim >= 2``; otherwise a callable ``(path, leaf) -> bool``, a callable
      ``params -> tree of bools`` (the ``optax.masked`` form), or a pytree of
      bools shaped like the params (or a prefix of it).
    allow_full_sparsity: allow a constant ``sparsity`` of exactly 1.0 (every
      selected weight pruned).
    pattern: None (default) for unstructured sparsity; ``(n, m)`` for N:M,
      e.g. ``(2, 4)``: every group of ``m`` consecutive weights along
      ``pattern_axis`` keeps ``max(n, m - num_to_prune(s, m))`` of its
      largest-magnitude entries (see :func:`nm_mask`), so the sparsity is capped
      at ``1 - n / m`` and a schedule reaching that value ends at exactly N:M;
      :class:`Block` ``(shape)`` or :class:`Channel` ``(axis)`` to prune whole
      blocks or channels: each leaf loses exactly ``num_to_prune(s, units)``
      whole units of the smallest mean ``|w|`` (blocks) or L2 norm (channels),
      with the same tie and NaN rules; ``"global"`` works with Block, not with
      Channel, and ``"erk"`` with neither.
    pattern_axis: the axis (a Python int) along which N:M groups are formed;
      None means -2, the input dimension of a Flax ``Dense`` kernel ``(in, out)``.
      Every pruned leaf's length along it must be a multiple of ``m`` (checked
      at ``init``). Under ``optax.inject_hyperparams`` list it in ``static_args``.
    track_regrowth: also keep ``ever_pruned`` and ``last_regrown`` in the state
      (one bool per pruned weight each), so that :func:`pruning_metrics` can
      report regrowth and the survival of regrown weights.
    distribution: how the sparsity is spread over the pruned leaves:
      ``"uniform"`` (default, the paper's: every leaf at sparsity ``s``),
      ``"global"`` (one magnitude threshold over all pruned leaves, exactly
      ``floor(s' * total + 1/2)`` pruned in all) or ``"erk"`` (Erdos-Renyi-Kernel
      densities, see :func:`erk_num_to_prune`). Not combinable with ``pattern``.
    overrides: per-leaf sparsity: a mapping ``{"path/to/leaf": sparsity}``
      (paths as printed by :func:`sparsity_report`) or a callable
      ``(path, leaf) -> sparsity or None`` called for each pruned leaf; each
      sparsity is a float or a schedule ``step -> sparsity``. An overridden
      leaf is pruned on its own at that level and left out of the
      distribution, which spreads ``sparsity`` over the remaining leaves.
      Overridden leaves refresh on the main cadence.
    packed_masks: store the masks at one bit per weight (:class:`PackedMask`)
      instead of one byte; the params produced are bitwise the same.
    axis_name: for ``update`` inside ``jax.shard_map`` (or ``pmap``) on params
      split over a mapped axis: that mesh axis name (or a tuple of names, major
      first, as in a ``PartitionSpec`` entry). Counts are summed over it with
      ``lax.psum`` and ties ranked by the index in the whole leaf, so the masks
      equal the unsharded run's. Not needed under ``jax.jit`` with sharded
      params, nor for replicated params (plain data parallelism). A pruned leaf
      that varies over a manual mesh axis not named here is an error at trace
      time (detected when ``shard_map`` checks varying axes, its default).
    sharded_dims: with ``axis_name``, the dimension of each pruned leaf that is
      split over it, or None for a leaf replicated over it: an int or None for
      every leaf (default 0), a pytree of them shaped like the params (or a
      prefix), or a callable ``(path, leaf) -> int | None``.

  Returns:
    A :class:`PruningTransformation` whose state is a
    :class:`MagnitudePruneState`. Its ``update`` requires ``params``.

  Raises:
    ValueError: for a sparsity outside [0, 1), a non-positive ``update_every``,
      a constant sparsity above a pattern's ``1 - n / m``, an unknown
      ``distribution``, ``distribution`` or ``overrides`` together with
      ``pattern``, an override outside [0, 1); at ``init``: a pruned leaf with
      ``2**31`` or more entries, a leaf whose ``pattern_axis`` length is not a
      multiple of ``m``, a filter tree that does not match the params, or an
      ``overrides`` key that names no pruned leaf; at ``update``: updates or a
      state that do not fit the params or this transformation's settings (the
      error names the leaf and the setting).
    TypeError: for a filter that selects a non-floating-point leaf (at
      ``init``), a ``pattern`` that is not a pair of integers, a non-bool flag,
      ``overrides`` neither a mapping nor a callable, or ``axis_name`` not a
      name or tuple of names. ``sharded_dims`` that do not fit the pruned
      leaves, or ``axis_name`` with ``pattern``, raise ValueError.

  Example:
    >>> import jax.numpy as jnp, optax, cyclax
    >>> params = {"w": jnp.array([[0.5, -2.0], [0.1, 1.0]]), "b": jnp.ones(2)}
    >>> tx = optax.chain(optax.sgd(0.1), cyclax.magnitude_prune(0.5, update_every=1))
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    >>> updates, state = tx.update(grads, state, params)
    >>> new_params = optax.apply_updates(params, updates)
    >>> (new_params["w"] == 0).tolist()  # 0.5 - 0.1 and 0.1 - 0.1 are the two smallest
    [[True, False], [True, False]]
  """
  options = dict(locals())  # the arguments, by name (nothing else is defined yet)
  config = _config.make_config(options.pop("sparsity"), options)
  jitted_apply = _step.make_jitted_apply(config)

  def init_fn(params: optax.Params) -> MagnitudePruneState:
    return _step.init(config, params)

  def update_fn(
    updates: optax.Updates,
    state: optax.OptState,
    params: Optional[optax.Params] = None,
    *,
    refresh_masks: Optional[bool] = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, MagnitudePruneState]:
    del extra_args  # other transformations' extra arguments
    return _step.update(config, jitted_apply, updates, state, params, refresh_masks)

  tx = PruningTransformation(init_fn, update_fn)
  tx.__dict__["_config"] = config  # read by refresh_due and cyclax.chain
  return tx


# The keyword arguments cyclical_prune shares with magnitude_prune, forwarded as they are.
_SHARED = tuple(inspect.signature(magnitude_prune).parameters)[1:]


def cyclical_prune(
  target_sparsity: ArrayLike,
  *,
  num_cycles: int,
  cycle_steps: int,
  initial_sparsity: Optional[ArrayLike] = None,
  ramp_fraction: float = 0.8,
  ramp: _schedules.Ramp = "cubic",
  update_every: int = 100,
  filter: Optional[_leaves.Filter] = None,
  allow_full_sparsity: bool = False,
  pattern: Any = None,
  pattern_axis: Optional[int] = None,
  track_regrowth: bool = False,
  distribution: str = "uniform",
  overrides: Optional[_distribution.Overrides] = None,
  packed_masks: bool = False,
  axis_name: _layout.AxisName = None,
  sharded_dims: _layout.ShardedDims = 0,
) -> PruningTransformation:
  """Cyclical pruning (Srinivas et al., 2022): magnitude pruning on a periodic schedule.

  Each of ``num_cycles`` cycles ramps the sparsity from a lower value up to
  ``target_sparsity`` (over ``ramp_fraction`` of the cycle, then hold); when the
  next cycle starts the sparsity drops and wrongly pruned weights can grow
  back. The masks are refreshed at every cycle start and ramp end besides every
  ``update_every`` steps, so the run ends exactly at the target. This is
  :func:`magnitude_prune` with :func:`cyclical_sparsity_schedule`; put it LAST
  in the chain and pair it with a learning rate that restarts every cycle:
  ``cyclax.periodic(schedule, cycle_steps)``.

  Args:
    target_sparsity: sparsity reached at the end of every cycle, in [0, 1).
    num_cycles: number of cycles (>= 1); after the last one the target holds.
    cycle_steps: optimizer steps per cycle (>= 1);
      ``num_cycles * cycle_steps`` must fit the int32 step count.
    initial_sparsity: sparsity at the start of cycles 2, 3, ... (default
      ``0.5 * target_sparsity``); the first cycle starts dense.
    ramp_fraction: fraction of each cycle spent ramping, in (0, 1].
    ramp: the shape of the ramp: ``"cubic"`` (default, the paper's),
      ``"linear"`` or ``"step"`` (the sparsity jumps to the target half way
      through the ramp), see :func:`cyclical_sparsity_schedule`.
    update_every: steps between mask refreshes (>= 1).
    filter: which leaves to prune.
    allow_full_sparsity: allow ``target_sparsity == 1.0``.
    pattern: structured sparsity: ``(n, m)`` for N:M (pass ``target_sparsity =
      1 - n / m``, 0.5 for 2:4, to end every cycle at exactly N:M),
      :class:`Block` or :class:`Channel`.
    pattern_axis: the axis of the N:M groups.
    track_regrowth: keep what :func:`pruning_metrics` needs for regrowth and survival.
    distribution: ``"uniform"``, ``"global"`` or ``"erk"``.
    overrides: per-leaf sparsity by path.
    packed_masks: store the masks at one bit per weight.
    axis_name: mapped axis for ``update`` inside ``jax.shard_map``.
    sharded_dims: with ``axis_name``, the split dimension of each pruned leaf.

  Every argument from ``update_every`` on means what it means in
  :func:`magnitude_prune`, where each is documented in full.

  Returns:
    A :class:`PruningTransformation` whose state is a
    :class:`MagnitudePruneState`.

  Raises:
    ValueError: if an argument is out of range (see the schedule and
      :func:`magnitude_prune`).

  Example:
    >>> import jax, jax.numpy as jnp, optax, cyclax
    >>> params = {"w": jax.random.normal(jax.random.key(0), (8, 8))}
    >>> tx = optax.chain(
    ...     optax.adam(1e-2),
    ...     cyclax.cyclical_prune(0.75, num_cycles=2, cycle_steps=10, update_every=5),
    ... )
    >>> state = tx.init(params)
    >>> for _ in range(10):
    ...   grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
    ...   updates, state = tx.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> int(jnp.sum(params["w"] == 0))  # 0.75 of 64 since the ramp ended at step 8
    48
  """
  shared = {name: value for name, value in locals().items() if name in _SHARED}
  _validation.check_sparsity("target_sparsity", target_sparsity, allow_full=allow_full_sparsity)
  schedule = _schedules.cyclical_sparsity_schedule(
    target_sparsity,
    num_cycles=num_cycles,
    cycle_steps=cycle_steps,
    initial_sparsity=initial_sparsity,
    ramp_fraction=ramp_fraction,
    ramp=ramp,
  )
  if pattern is not None and not _structured.is_structured(pattern):
    _patterns.check_pattern_sparsity("target_sparsity", target_sparsity, _patterns.check_pattern(pattern))
  return magnitude_prune(schedule, **shared)
