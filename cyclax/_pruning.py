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
from jax.typing import ArrayLike

from cyclax import _leaves, _schedules, _select, _validation


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
      pruned leaf, ``None`` for leaves left dense.
    misplaced_steps: int32 scalar, how many steps received params that were
      non-zero where the previous mask pruned them (should stay 0).
  """

  count: jax.Array
  masks: Any
  misplaced_steps: jax.Array


CyclicalPruneState = MagnitudePruneState


def _warn_misplaced(num_entries: Any) -> None:
  warnings.warn(
    f"cyclax: {int(num_entries)} params were non-zero where the previous mask pruned them. "
    "cyclax.magnitude_prune / cyclical_prune must be the LAST transformation of the optax "
    "chain, e.g. optax.chain(optax.adamw(1e-3), cyclax.cyclical_prune(0.9, ...)), and params "
    "must not be changed outside the optimizer. This is reported once; the state's "
    "`misplaced_steps` counts every such step.",
    PruningOrderWarning,
    stacklevel=2,
  )


def _uniform_masks(candidates: list[jax.Array], sparsity: jax.Array) -> list[jax.Array]:
  ks = [_select.num_to_prune(sparsity, c.size) for c in candidates]
  return _select.prune_masks(candidates, ks)


def magnitude_prune(
  sparsity: optax.ScalarOrSchedule,
  *,
  update_every: int = 100,
  filter: Optional[_leaves.Filter] = None,
  allow_full_sparsity: bool = False,
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
  the update again. Misplacement is detected at run time: the state's
  ``misplaced_steps`` counts steps whose incoming params are non-zero where the
  previous mask pruned, and a :class:`PruningOrderWarning` is issued once.

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

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`MagnitudePruneState`. Its ``update`` requires ``params``.

  Raises:
    ValueError: for a sparsity outside [0, 1), a non-positive ``update_every``,
      or a filter tree that does not match the params (at ``init``).
    TypeError: if the filter selects a non-floating-point leaf (at ``init``).

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

  def init_fn(params: optax.Params) -> MagnitudePruneState:
    flags = _leaves.select_leaves(params, filter)
    leaves, treedef = jax.tree.flatten(params)
    masks = [jnp.ones_like(p, dtype=jnp.bool_) if f else None for p, f in zip(leaves, flags)]
    return MagnitudePruneState(
      count=jnp.zeros([], jnp.int32),
      masks=treedef.unflatten(masks),
      misplaced_steps=jnp.zeros([], jnp.int32),
    )

  def update_fn(
    updates: optax.Updates, state: MagnitudePruneState, params: Optional[optax.Params] = None
  ) -> tuple[optax.Updates, MagnitudePruneState]:
    if params is None:
      raise ValueError(
        "cyclax.magnitude_prune needs the current params: call "
        "`tx.update(updates, state, params)` (params=None was given)."
      )
    p_leaves, treedef = jax.tree.flatten(params)
    try:
      u_leaves = treedef.flatten_up_to(updates)
      m_leaves = treedef.flatten_up_to(state.masks)
    except (ValueError, TypeError) as e:
      raise ValueError(
        f"updates and the pruning state's masks must have the params' tree structure: {e}"
      ) from None
    pruned = [i for i, m in enumerate(m_leaves) if m is not None]
    if not pruned:
      return updates, state._replace(count=optax.safe_increment(state.count))

    count = state.count
    level = sparsity(count) if callable(sparsity) else sparsity
    level = jnp.clip(jnp.asarray(level, jnp.float32), 0.0, 1.0)
    every = jnp.maximum(jnp.asarray(update_every, jnp.int32), 1)
    old = [m_leaves[i] for i in pruned]
    params_in = [p_leaves[i] for i in pruned]
    candidates = [(p + u_leaves[i]).astype(p.dtype) for p, i in zip(params_in, pruned)]
    new = lax.cond(
      count % every == 0,
      lambda: _uniform_masks(candidates, level),
      lambda: old,
    )

    stray = sum(
      jnp.sum(jnp.logical_and(jnp.logical_not(m), p != 0), dtype=jnp.int32) for m, p in zip(old, params_in)
    )
    misplaced = stray > 0
    lax.cond(
      jnp.logical_and(misplaced, state.misplaced_steps == 0),
      lambda: jax.debug.callback(_warn_misplaced, stray),
      lambda: None,
    )

    out_updates = list(u_leaves)
    out_masks = list(m_leaves)
    for i, m, p in zip(pruned, new, params_in):
      out_updates[i] = jnp.where(m, u_leaves[i], -p)
      out_masks[i] = m
    new_state = MagnitudePruneState(
      count=optax.safe_increment(count),
      masks=treedef.unflatten(out_masks),
      misplaced_steps=state.misplaced_steps + misplaced.astype(jnp.int32),
    )
    return treedef.unflatten(out_updates), new_state

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
  return magnitude_prune(
    schedule, update_every=update_every, filter=filter, allow_full_sparsity=allow_full_sparsity
  )
