"""Zeroing the optimizer moments of weights that grow back.

When a refresh lets a pruned weight return, the inner optimizer still holds the
moments it accumulated before the weight was pruned (Adam's ``mu``/``nu``, a
momentum trace). This wrapper chains the inner optimizer and a cyclax pruning
transformation and, at every refresh, sets those moments to zero at the entries
whose mask goes from pruned to kept, so a regrown weight restarts like a fresh
one.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, cast

import jax
import jax.numpy as jnp
import optax
from jax import export, lax

from cyclax import _validation
from cyclax._inspect import lookup_prune_state, masks_of
from cyclax._state import MagnitudePruneState, PruningTransformation


class ResetRegrownMomentsState(NamedTuple):
  """State of :func:`reset_regrown_moments`.

  Attributes:
    inner_state: the inner optimizer's state.
    prune_state: the pruning transformation's state.
  """

  inner_state: optax.OptState
  prune_state: optax.OptState


def _params_shaped(x: Any, treedef: Any, shapes: list[tuple[int, ...]]) -> bool:
  """Whether ``x`` is a tree of arrays with the params' structure and leaf shapes."""
  if x is None or jax.tree.structure(x) != treedef:
    return False
  leaves = jax.tree.leaves(x)
  return all(hasattr(leaf, "shape") and tuple(leaf.shape) == s for leaf, s in zip(leaves, shapes))


export.register_namedtuple_serialization(
  ResetRegrownMomentsState, serialized_name="cyclax.ResetRegrownMomentsState"
)


def zero_moments_at(inner_state: optax.OptState, params: optax.Params, where: Any) -> optax.OptState:
  """Sets every params-shaped tree in ``inner_state`` to zero where ``where`` is True.

  Args:
    inner_state: an optimizer state; every subtree with the params' structure
      and leaf shapes (Adam's ``mu`` and ``nu``, a momentum ``trace``) is
      treated as per-parameter moments.
    params: the params (only their structure and shapes are used).
    where: a tree like ``params`` with a bool array per leaf to reset, None for
      leaves left alone.

  Returns:
    ``inner_state`` with the selected entries of every moment tree set to 0.
  """
  treedef = jax.tree.structure(params)
  shapes = [tuple(p.shape) for p in jax.tree.leaves(params)]
  where_leaves = treedef.flatten_up_to(where)
  is_moment = lambda x: _params_shaped(x, treedef, shapes)  # noqa: E731

  def reset(x: Any) -> Any:
    if not is_moment(x):
      return x
    leaves = treedef.flatten_up_to(x)
    out = [m if w is None else jnp.where(w, jnp.zeros_like(m), m) for m, w in zip(leaves, where_leaves)]
    return treedef.unflatten(out)

  return jax.tree.map(reset, inner_state, is_leaf=is_moment)


def _check_arguments(inner: Any, prune: Any) -> None:
  for name, tx in (("inner", inner), ("prune", prune)):
    if not isinstance(tx, optax.GradientTransformation) and not (
      callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))
    ):
      raise TypeError(f"`{name}` must be an optax GradientTransformation, got {type(tx).__name__}.")
  if isinstance(inner, PruningTransformation) and not isinstance(prune, PruningTransformation):
    raise TypeError(
      "the arguments look swapped: call reset_regrown_moments(inner, prune) with the optimizer first and "
      "the cyclax pruning transformation second, e.g. reset_regrown_moments(optax.adam(1e-3), "
      "cyclax.cyclical_prune(...))."
    )


def _check_states(state: ResetRegrownMomentsState) -> None:
  """At init: the pruning state must be in ``prune``'s state, and none in ``inner``'s."""
  is_prune_state = lambda x: isinstance(x, MagnitudePruneState)
  found = [x for x in jax.tree.leaves(state.prune_state, is_leaf=is_prune_state) if is_prune_state(x)]
  in_inner = [x for x in jax.tree.leaves(state.inner_state, is_leaf=is_prune_state) if is_prune_state(x)]
  if len(found) != 1 or in_inner:
    raise ValueError(
      "reset_regrown_moments(inner, prune): `prune` must be one cyclax pruning transformation "
      f"(cyclax.cyclical_prune or cyclax.magnitude_prune, possibly wrapped); found {len(found)} cyclax "
      f"pruning state(s) in `prune` and {len(in_inner)} in `inner`."
    )


def reset_regrown_moments(
  inner: optax.GradientTransformation,
  prune: optax.GradientTransformation,
  *,
  enabled: bool = True,
) -> optax.GradientTransformation:
  """``optax.chain(inner, prune)`` that zeroes the inner moments of regrown weights.

  At a step where the pruning mask of an entry goes from pruned to kept, every
  per-parameter tree in the inner optimizer's state (found as the subtrees
  shaped like the params: Adam's ``mu`` and ``nu``, SGD momentum's ``trace``)
  is set to 0 at that entry, after the inner update of this step. Nothing else
  changes: with ``enabled=False`` the updates and states equal those of
  ``optax.chain(inner, prune)`` bit for bit. Moments nested under
  ``optax.masked`` (where the tree is not params-shaped) are left alone.

  Args:
    inner: the optimizer whose moments are reset, e.g. ``optax.adamw(1e-3)``.
    prune: a cyclax pruning transformation (:func:`cyclical_prune`,
      :func:`magnitude_prune`, possibly wrapped, e.g. by
      ``optax.inject_hyperparams``); it runs last.
    enabled: turn the reset off to get the plain chain.

  Returns:
    An ``optax.GradientTransformation`` with a :class:`ResetRegrownMomentsState`;
    :func:`get_masks` and :func:`pruning_metrics` work on it as on a chain.

  Example:
    >>> import jax, jax.numpy as jnp, optax, cyclax
    >>> params = {"w": jax.random.normal(jax.random.key(0), (8, 8))}
    >>> tx = cyclax.reset_regrown_moments(
    ...     optax.adam(1e-2), cyclax.cyclical_prune(0.75, num_cycles=2, cycle_steps=10, update_every=5)
    ... )
    >>> state, update = tx.init(params), jax.jit(tx.update)
    >>> grad_fn = jax.grad(lambda p: jnp.sum(jnp.sin(3 * p["w"])))
    >>> for _ in range(10):
    ...   updates, state = update(grad_fn(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> before = cyclax.get_masks(state)["w"]
    >>> updates, state = update(grad_fn(params), state, params)  # step 10: cycle 2, sparsity drops
    >>> regrown = cyclax.get_masks(state)["w"] & ~before
    >>> int(regrown.sum()), bool(jnp.all(state.inner_state[0].mu["w"][regrown] == 0))
    (24, True)
  """

  _check_arguments(inner, prune)

  def init_fn(params: optax.Params) -> ResetRegrownMomentsState:
    state = ResetRegrownMomentsState(inner_state=inner.init(params), prune_state=prune.init(params))
    _check_states(state)
    return state

  def update_fn(
    updates: optax.Updates,
    state: optax.OptState,
    params: Optional[optax.Params] = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, ResetRegrownMomentsState]:
    _validation.require_params(params, "reset_regrown_moments")
    assert params is not None  # require_params raised otherwise
    state = cast(ResetRegrownMomentsState, state)  # the state init_fn made
    updates, inner_state = optax.with_extra_args_support(inner).update(
      updates, state.inner_state, params, **extra_args
    )
    updates, prune_state = optax.with_extra_args_support(prune).update(
      updates, state.prune_state, params, **extra_args
    )
    if enabled:
      old = masks_of(lookup_prune_state(state.prune_state))
      new = masks_of(lookup_prune_state(prune_state))
      treedef = jax.tree.structure(params)
      regrown = [
        None if n is None else jnp.logical_and(n, jnp.logical_not(o))
        for o, n in zip(treedef.flatten_up_to(old), treedef.flatten_up_to(new))
      ]
      flags = [jnp.any(r) for r in regrown if r is not None]
      if flags:
        where = treedef.unflatten(regrown)
        # Moments are touched only at steps where something regrew (refresh steps).
        inner_state = lax.cond(
          jnp.any(jnp.stack(flags)),
          lambda s: zero_moments_at(s, params, where),
          lambda s: s,
          inner_state,
        )
    return updates, ResetRegrownMomentsState(inner_state=inner_state, prune_state=prune_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
