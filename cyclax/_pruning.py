"""Magnitude pruning as the last transformation of an optax chain.

At step ``t``, with ``u`` the update from the rest of the chain and ``p`` the
current params, the candidate is ``c = p + u`` (the dense point after the
optimizer's step). Every ``update_every`` steps the masks are recomputed from
``|c|`` at sparsity ``s(t)``; the returned update is ``where(mask, u, -p)``, so
that ``p + update`` equals ``c`` where a weight is kept and is exactly ``+0.0``
where it is pruned. This is projected gradient descent onto an L0 ball whose
radius follows the sparsity schedule (the paper's Algorithm 1).
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.custom_batching import custom_vmap
from jax.typing import ArrayLike

from cyclax import _distribution, _leaves, _packing, _patterns, _schedules, _sharding, _validation


class PruningOrderWarning(UserWarning):
  """Params arrived non-zero where the previous mask pruned them.

  Raised (once per run) from inside the compiled step when cyclax is not the
  last transformation of the chain, or when params are changed outside the
  optimizer between steps.
  """


class MagnitudePruneState(NamedTuple):
  """State of :func:`magnitude_prune` and :func:`cyclical_prune`.

  Attributes:
    count: int32 scalar, the number of ``update`` calls so far; the sparsity
      schedule is evaluated on it and masks are refreshed when
      ``count % update_every == 0``.
    masks: a tree shaped like the params: a bool array (True = kept) for every
      pruned leaf, ``None`` for leaves left dense. With ``packed_masks=True``
      each pruned leaf holds a :class:`PackedMask` (one bit per weight) instead;
      :func:`get_masks` always returns bool arrays.
    misplaced_steps: int32 scalar, how many refresh steps received params that
      were non-zero where the previous mask pruned them (should stay 0).
    ever_pruned: with ``track_regrowth=True``, a tree like ``masks`` that is
      True where a weight has been pruned at some refresh so far; otherwise
      None (the state holds nothing extra).
  """

  count: jax.Array
  masks: Any
  misplaced_steps: jax.Array
  ever_pruned: Any = None


CyclicalPruneState = MagnitudePruneState


def _warn_misplaced(num_entries: Any) -> None:
  warnings.warn(
    f"cyclax: {int(num_entries)} params were non-zero where the previous mask pruned them. "
    "cyclax.magnitude_prune / cyclical_prune must be the LAST transformation of the optax "
    "chain, e.g. optax.chain(optax.adamw(1e-3), cyclax.cyclical_prune(0.9, ...)), and params "
    "must not be changed outside the optimizer. This is reported once; the state's "
    "`misplaced_steps` counts every mask refresh that finds it.",
    PruningOrderWarning,
    stacklevel=2,
  )


@custom_vmap
def _report_misplaced(first: jax.Array, stray: jax.Array) -> jax.Array:
  """Warns from inside the compiled step when ``first`` is True."""
  lax.cond(first, lambda: jax.debug.callback(_warn_misplaced, stray), lambda: None)
  return first


@_report_misplaced.def_vmap
def _report_misplaced_vmap(axis_size: int, in_batched: list[bool], first: jax.Array, stray: jax.Array) -> Any:
  # Under jax.vmap (e.g. seeds or trials batched) one host callback for the
  # whole batch, not one per element unrolled into the program.
  if not any(in_batched):
    return _report_misplaced(first, stray), False
  first, stray = (x if b else jnp.broadcast_to(x, (axis_size,)) for x, b in zip((first, stray), in_batched))
  _report_misplaced(jnp.any(first), jnp.sum(jnp.where(first, stray, 0)))
  return first, True


def _update_ever_pruned(ever_pruned: Any, treedef: Any, pruned: list[int], masks: list[jax.Array]) -> Any:
  """``ever_pruned | ~mask`` per pruned leaf; None when regrowth is not tracked."""
  if ever_pruned is None:
    return None
  leaves = treedef.flatten_up_to(ever_pruned)
  for i, m in zip(pruned, masks):
    leaves[i] = leaves[i] | ~m
  return treedef.unflatten(leaves)


def magnitude_prune(
  sparsity: optax.ScalarOrSchedule,
  *,
  update_every: int = 100,
  filter: Optional[_leaves.Filter] = None,
  allow_full_sparsity: bool = False,
  pattern: Optional[tuple[int, int]] = None,
  pattern_axis: Optional[int] = None,
  track_regrowth: bool = False,
  distribution: str = "uniform",
  overrides: Optional[_distribution.Overrides] = None,
  packed_masks: bool = False,
  axis_name: _sharding.AxisName = None,
  sharded_dims: _sharding.ShardedDims = 0,
) -> optax.GradientTransformation:
  """Keeps the largest-magnitude weights after each step; prunes the rest to 0.

  Time-varying projected gradient descent: the update from the rest of the
  chain is applied, then every pruned leaf is projected onto its largest-|w|
  entries. Each pruned leaf loses exactly ``k = round(s * leaf.size)`` entries
  (rounding rule: ``floor(s * size + 1/2)``, see :func:`cyclax.num_to_prune`); ties
  in ``|w|`` are pruned lowest row-major index first; a NaN counts as larger
  than every number, so it is kept and the count stays exact.

  It must be the LAST transformation of a chain, like
  ``optax.keep_params_nonnegative``: it rewrites the final update so that
  ``params + update`` is sparse, and any transformation after it would change
  the update again. Misplacement is detected at run time: at every refresh the
  incoming params are checked against the previous masks, the state's
  ``misplaced_steps`` counts the refreshes that find non-zeros where the
  previous mask pruned, and a :class:`PruningOrderWarning` is issued once. (The
  check runs at refreshes only, so that the steps in between cost nothing
  extra.)

  Args:
    sparsity: fraction of each pruned leaf set to zero: a float in [0, 1) or an
      optax-style schedule ``step -> sparsity`` (values are clipped to [0, 1]).
    update_every: masks are recomputed when ``count % update_every == 0``; in
      between, the stored masks are applied. ``1`` gives plain iterative hard
      thresholding.
    filter: which leaves to prune. None prunes floating-point leaves with
      ``ndim >= 2``; otherwise a callable ``(path, leaf) -> bool`` or a pytree
      of bools shaped like the params (or a prefix of it), as in
      ``optax.masked``.
    allow_full_sparsity: allow a constant ``sparsity`` of exactly 1.0 (every
      selected weight pruned).
    pattern: ``(n, m)`` for N:M structured sparsity, e.g. ``(2, 4)``: every
      group of ``m`` consecutive weights along ``pattern_axis`` keeps
      ``max(n, m - num_to_prune(s, m))`` of its largest-|w| entries (see
      :func:`nm_mask`), so the sparsity is capped at ``1 - n / m`` and a schedule
      reaching that value ends at exactly N:M. None (default) is unstructured.
    pattern_axis: the axis (a Python int) along which groups are formed; None
      means -2, the input dimension of a Flax ``Dense`` kernel ``(in, out)``.
      Every pruned leaf's length along it must be a multiple of ``m`` (checked
      at ``init``). Under ``optax.inject_hyperparams`` list it in
      ``static_args``.
    track_regrowth: also keep ``ever_pruned`` in the state (one bool per pruned
      weight), so that :func:`pruning_metrics` can report the fraction of
      weights that were pruned earlier and are kept now.
    distribution: how the sparsity is spread over the pruned leaves:
      ``"uniform"`` (default, the paper's: every leaf at sparsity ``s``),
      ``"global"`` (one magnitude threshold over all pruned leaves, exactly
      ``round(s * total)`` pruned in all) or ``"erk"`` (Erdos-Renyi-Kernel
      densities, see :func:`erk_num_to_prune`). Not combinable with ``pattern``.
    overrides: per-leaf sparsity: a mapping ``{"path/to/leaf": sparsity}``
      (paths as printed by :func:`sparsity_report`) or a callable
      ``(path, leaf) -> sparsity or None`` called for each pruned leaf; each
      sparsity is a float or a schedule ``step -> sparsity``. An overridden
      leaf is pruned on its own at that level and left out of the
      distribution, which spreads ``sparsity`` over the remaining leaves.
    packed_masks: store the masks at one bit per weight (:class:`PackedMask`)
      instead of one byte; the params produced are bitwise the same.
    axis_name: for ``update`` inside ``jax.shard_map`` (or ``pmap``) on params
      split over a mapped axis: that mesh axis name (or a tuple of names, major
      first, as in a ``PartitionSpec`` entry). Counts are summed over it with
      ``lax.psum`` and ties ranked by the index in the whole leaf, so the masks
      equal the unsharded run's. Not needed under ``jax.jit`` with sharded
      params, nor for replicated params (plain data parallelism).
    sharded_dims: with ``axis_name``, the dimension of each pruned leaf that is
      split over it, or None for a leaf replicated over it: an int or None for
      every leaf (default 0), a pytree of them shaped like the params (or a
      prefix), or a callable ``(path, leaf) -> int | None``.

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`MagnitudePruneState`. Its ``update`` requires ``params``.

  Raises:
    ValueError: for a sparsity outside [0, 1), a non-positive ``update_every``,
      a constant sparsity above a pattern's ``1 - n / m``, a pruned leaf whose
      ``pattern_axis`` length is not a multiple of ``m`` (at ``init``), or a
      filter tree that does not match the params (at ``init``); also for an
      unknown ``distribution``, ``distribution`` or ``overrides`` together with
      ``pattern``, an override outside [0, 1), or an ``overrides`` key that
      names no pruned leaf (at ``init``).
    TypeError: if the filter selects a non-floating-point leaf (at ``init``),
      ``pattern`` is not a pair of integers, ``packed_masks`` is not a bool,
      ``overrides`` is neither a mapping nor a callable, or ``axis_name`` is not
      a name or tuple of names. ``sharded_dims`` that do not fit the pruned
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
  if not callable(sparsity):
    _validation.check_sparsity("sparsity", sparsity, allow_full=allow_full_sparsity)
  _validation.check_positive_int("update_every", update_every)
  if pattern is not None:
    pattern = _patterns.check_pattern(pattern)
    pattern_axis = _patterns.check_axis_arg(pattern_axis)
    if not callable(sparsity):
      _patterns.check_pattern_sparsity("sparsity", sparsity, pattern)
  _distribution.check_distribution(distribution)
  _distribution.check_overrides(overrides, allow_full=allow_full_sparsity)
  if pattern is not None and (distribution != "uniform" or overrides is not None):
    raise ValueError("`pattern` works with distribution='uniform' and overrides=None only.")
  if not isinstance(packed_masks, bool):
    raise TypeError(f"`packed_masks` must be True or False, got {packed_masks!r}.")
  _sharding.check_axis_name(axis_name)
  if axis_name is not None and pattern is not None:
    raise ValueError("`axis_name` does not work with `pattern` (N:M groups are local to a shard anyway).")
  store = _packing.pack_mask if packed_masks else (lambda m: m)
  load = _packing.unpack_mask if packed_masks else (lambda m: m)

  def select_masks(
    candidates: list[jax.Array], level: jax.Array, leaf_levels: list, dims: Optional[list] = None
  ) -> list[jax.Array]:
    if axis_name is not None:
      return _sharding.prune_masks(candidates, level, leaf_levels, distribution, axis_name, dims)
    if pattern is None:
      return _distribution.prune_masks(candidates, level, leaf_levels, distribution)
    return [_patterns.nm_mask(c, level, pattern, pattern_axis) for c in candidates]

  def init_fn(params: optax.Params) -> MagnitudePruneState:
    flags = _leaves.select_leaves(params, filter)
    leaves, treedef = jax.tree.flatten(params)
    if pattern is not None:
      for f, (path, p) in zip(flags, jax.tree_util.tree_flatten_with_path(params)[0]):
        if f:
          name = f"leaf '{_leaves.path_str(path)}'"
          _patterns.check_pattern_axis(p.shape, pattern, pattern_axis, name=name)
    _distribution.resolve_overrides(params, flags, overrides, allow_full=allow_full_sparsity)
    if axis_name is not None:
      _sharding.resolve_sharded_dims(params, flags, sharded_dims)
    masks = [jnp.ones_like(p, dtype=jnp.bool_) if f else None for p, f in zip(leaves, flags)]
    ever_pruned = None
    if track_regrowth:
      ever_pruned = treedef.unflatten([None if m is None else jnp.zeros_like(m) for m in masks])
    return MagnitudePruneState(
      count=jnp.zeros([], jnp.int32),
      masks=treedef.unflatten([None if m is None else store(m) for m in masks]),
      misplaced_steps=jnp.zeros([], jnp.int32),
      ever_pruned=ever_pruned,
    )

  def update_fn(
    updates: optax.Updates, state: MagnitudePruneState, params: Optional[optax.Params] = None
  ) -> tuple[optax.Updates, MagnitudePruneState]:
    _validation.require_params(params, "magnitude_prune")
    treedef = jax.tree.structure(params)
    try:
      treedef.flatten_up_to(updates)
      m_leaves = treedef.flatten_up_to(state.masks)
    except (ValueError, TypeError) as e:
      raise ValueError(
        f"updates and the pruning state's masks must have the params' tree structure: {e}"
      ) from None
    if all(m is None for m in m_leaves):
      return updates, state._replace(count=optax.safe_increment(state.count))
    return apply_jit(updates, state, params)

  def apply(
    updates: optax.Updates, state: MagnitudePruneState, params: optax.Params
  ) -> tuple[optax.Updates, MagnitudePruneState]:
    p_leaves, treedef = jax.tree.flatten(params)
    u_leaves = treedef.flatten_up_to(updates)
    m_leaves = treedef.flatten_up_to(state.masks)
    pruned = [i for i, m in enumerate(m_leaves) if m is not None]
    count = state.count
    level = sparsity(count) if callable(sparsity) else sparsity
    level = jnp.clip(jnp.asarray(level, jnp.float32), 0.0, 1.0)
    every = jnp.maximum(jnp.asarray(update_every, jnp.int32), 1)
    old_stored = [m_leaves[i] for i in pruned]
    params_in = [p_leaves[i] for i in pruned]
    leaf_overrides = _distribution.resolve_overrides(
      params, [m is not None for m in m_leaves], overrides, allow_full=allow_full_sparsity
    )
    leaf_levels = [
      None if o is None else jnp.clip(jnp.asarray(o(count) if callable(o) else o, jnp.float32), 0.0, 1.0)
      for o in (leaf_overrides[i] for i in pruned)
    ]
    dims = None
    if axis_name is not None:
      dims = _sharding.resolve_sharded_dims(params, [m is not None for m in m_leaves], sharded_dims)
      dims = [dims[i] for i in pruned]

    def refresh():
      fresh = select_masks(
        [(p + u_leaves[i]).astype(p.dtype) for p, i in zip(params_in, pruned)], level, leaf_levels, dims
      )
      # Placement is checked against the previous masks at refresh steps only,
      # so that the steps in between cost no extra pass over the params.
      stray = _sharding.total(
        [
          jnp.sum(jnp.logical_and(jnp.logical_not(load(m)), p != 0), dtype=jnp.int32)
          for m, p in zip(old_stored, params_in)
        ],
        axis_name,
        dims,
      )
      ever = _update_ever_pruned(state.ever_pruned, treedef, pruned, fresh)
      return fresh, stray, ever

    if isinstance(update_every, int) and update_every == 1:
      # Every step refreshes: no conditional, so nothing is held back from fusion.
      new, stray, ever_pruned = refresh()
      new_stored = [store(m) for m in new]
    else:
      # All refresh work lives in one branch. A conditional's operands must be
      # buffers, so the incoming update is written to memory on every step,
      # refresh or not: that write is the steady-state cost (BENCHMARKS.md).
      # Bool masks do not pass through the conditional: the other branch only
      # writes blank masks (cheaper than copying the stored ones out and back)
      # and a select outside picks the stored masks on steps that keep them.
      is_refresh = count % every == 0
      if packed_masks:

        def stored_refresh():
          fresh, stray, ever = refresh()
          return [store(m) for m in fresh], stray, ever

        def keep():
          return old_stored, jnp.zeros([], jnp.int32), state.ever_pruned

        new_stored, stray, ever_pruned = lax.cond(is_refresh, stored_refresh, keep)
        new = [load(m) for m in new_stored]
      else:

        def blank():
          return (
            [jnp.zeros_like(p, jnp.bool_) for p in params_in],
            jnp.zeros([], jnp.int32),
            state.ever_pruned,
          )

        fresh, stray, ever_pruned = lax.cond(is_refresh, refresh, blank)
        new = [jnp.where(is_refresh, f, m) for f, m in zip(fresh, old_stored)]
        new_stored = new
    misplaced = stray > 0
    _report_misplaced(jnp.logical_and(misplaced, state.misplaced_steps == 0), stray)

    out_updates = list(u_leaves)
    out_masks = list(m_leaves)
    for i, m, stored, p in zip(pruned, new, new_stored, params_in):
      out_updates[i] = jnp.where(m, u_leaves[i], -p)
      out_masks[i] = stored
    new_state = MagnitudePruneState(
      count=optax.safe_increment(count),
      masks=treedef.unflatten(out_masks),
      misplaced_steps=state.misplaced_steps + misplaced.astype(jnp.int32),
      ever_pruned=ever_pruned,
    )
    return treedef.unflatten(out_updates), new_state

  # Inlined under an outer jit; when called eagerly it compiles once per
  # input structure instead of retracing the loops and conds every call.
  apply_jit = jax.jit(apply)

  return optax.GradientTransformation(init_fn, update_fn)


def cyclical_prune(
  target_sparsity: ArrayLike,
  *,
  num_cycles: int,
  cycle_steps: int,
  initial_sparsity: Optional[ArrayLike] = None,
  ramp_fraction: float = 0.8,
  update_every: int = 100,
  filter: Optional[_leaves.Filter] = None,
  allow_full_sparsity: bool = False,
  pattern: Optional[tuple[int, int]] = None,
  pattern_axis: Optional[int] = None,
  track_regrowth: bool = False,
  distribution: str = "uniform",
  overrides: Optional[_distribution.Overrides] = None,
  packed_masks: bool = False,
  axis_name: _sharding.AxisName = None,
  sharded_dims: _sharding.ShardedDims = 0,
) -> optax.GradientTransformation:
  """Cyclical pruning (Srinivas et al., 2022): magnitude pruning on a periodic schedule.

  Each of ``num_cycles`` cycles ramps the sparsity from a lower value up to
  ``target_sparsity`` (cubic ramp over ``ramp_fraction`` of the cycle, then
  hold); when the next cycle starts the sparsity drops and wrongly pruned
  weights can grow back. See :func:`cyclical_sparsity_schedule` and
  :func:`magnitude_prune`. Put it LAST in the chain. Pair it with a learning rate
  that restarts every cycle: ``cyclax.periodic(schedule, cycle_steps)``.

  Args:
    target_sparsity: sparsity reached at the end of every cycle, in [0, 1).
    num_cycles: number of cycles (>= 1); after the last one the target holds.
    cycle_steps: optimizer steps per cycle (>= 1).
    initial_sparsity: sparsity at the start of cycles 2, 3, ... (default
      ``0.5 * target_sparsity``); the first cycle starts dense.
    ramp_fraction: fraction of each cycle spent ramping, in (0, 1].
    update_every: steps between mask refreshes (>= 1).
    filter: which leaves to prune, as in :func:`magnitude_prune`.
    allow_full_sparsity: allow ``target_sparsity == 1.0``.
    pattern: ``(n, m)`` for N:M structured sparsity along ``pattern_axis``, as
      in :func:`magnitude_prune`; pass ``target_sparsity = 1 - n / m`` (0.5 for
      2:4) to end every cycle at exactly N:M.
    pattern_axis: the axis along which N:M groups are formed (None: -2), as in :func:`magnitude_prune`.
    track_regrowth: keep ``ever_pruned`` in the state, as in
      :func:`magnitude_prune`.
    distribution: ``"uniform"`` (default), ``"global"`` or ``"erk"``, as in
      :func:`magnitude_prune`.
    overrides: per-leaf sparsity by path, as in :func:`magnitude_prune`.
    packed_masks: store the masks at one bit per weight, as in
      :func:`magnitude_prune`.
    axis_name: mapped axis for ``update`` inside ``jax.shard_map`` on split
      params, as in :func:`magnitude_prune`.
    sharded_dims: with ``axis_name``, the split dimension of each pruned leaf
      (None: replicated), as in :func:`magnitude_prune`.

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`MagnitudePruneState`.

  Raises:
    ValueError: if an argument is out of range (see the schedule and
      :func:`magnitude_prune`).

  Example:
    >>> import jax, jax.numpy as jnp, optax, cyclax
    >>> params = {"w": jax.random.normal(jax.random.key(0), (8, 8))}
    >>> tx = optax.chain(
    ...     optax.adam(1e-2),
    ...     cyclax.cyclical_prune(0.75, num_cycles=2, cycle_steps=10, update_every=1),
    ... )
    >>> state = tx.init(params)
    >>> for _ in range(10):
    ...   grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
    ...   updates, state = tx.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> int(jnp.sum(params["w"] == 0))
    48
  """
  _validation.check_sparsity("target_sparsity", target_sparsity, allow_full=allow_full_sparsity)
  schedule = _schedules.cyclical_sparsity_schedule(
    target_sparsity,
    num_cycles=num_cycles,
    cycle_steps=cycle_steps,
    initial_sparsity=initial_sparsity,
    ramp_fraction=ramp_fraction,
  )
  if pattern is not None:
    _patterns.check_pattern_sparsity("target_sparsity", target_sparsity, _patterns.check_pattern(pattern))
  return magnitude_prune(
    schedule,
    update_every=update_every,
    filter=filter,
    allow_full_sparsity=allow_full_sparsity,
    pattern=pattern,
    pattern_axis=pattern_axis,
    track_regrowth=track_regrowth,
    distribution=distribution,
    overrides=overrides,
    packed_masks=packed_masks,
    axis_name=axis_name,
    sharded_dims=sharded_dims,
  )
