"""``optax.chain`` for a chain that ends with cyclax, with a default path at the optimizer's cost.

Inside ``optax.chain`` the pruning transformation only sees the update ``u``,
and the conditional that may refresh the masks must read it as a buffer: XLA
writes ``u`` to memory at every step. :func:`chain` owns the optimizer before
the pruning, so its conditional reads only what is in memory anyway (the
gradients, the optimizer state, the params and the masks) and recomputes the
optimizer's update inside the refresh branch. The update of the step is
computed once, after the conditional and in place: between refreshes a step
costs the optimizer's step and one select per pruned weight.
"""

from __future__ import annotations

from typing import Any, Optional, cast

import jax
import jax.numpy as jnp
import optax
from jax import lax

from cyclax import _cadence, _config, _packing, _state, _step, _validation
from cyclax._state import PruningTransformation


def _after(ok: jax.Array, tree: Any) -> Any:
  """``tree`` read through ``where(ok, x, 0)`` with an always-true ``ok``.

  The step's update then depends on the conditional, so XLA runs it after the
  conditional, in place in donated buffers, instead of copying every buffer the
  conditional reads.
  """

  def order(x: Any) -> Any:
    if not isinstance(x, jax.Array) or x.ndim == 0 or jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      return x
    return jnp.where(ok, x, jnp.zeros_like(x))

  return jax.tree.map(order, tree)


def chain(*transformations: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """``optax.chain(*transformations)`` whose default path reads no update buffer.

  The last transformation must be :func:`cyclax.magnitude_prune` or
  :func:`cyclax.cyclical_prune` (as it must be last in ``optax.chain``). The
  state is the state of ``optax.chain(*transformations)``, and the updates
  equal that chain's, so the two can replace each other in a training loop or
  a checkpoint. (Bit for bit when the optimizer works entry by entry, as
  ``sgd``, ``adam`` and ``adamw`` do; a transformation that reduces over the
  params, such as ``clip_by_global_norm``, may round its sum differently in the
  two compiled steps.) What differs is the compiled step of the
  default path (``refresh_masks=None``): the conditional that may refresh the
  masks reads only the gradients, the optimizer state, the params and the
  masks, and recomputes the optimizer's update inside its refresh branch. So a
  step between refreshes costs about what the optimizer alone costs, and a
  refresh computes the optimizer's update twice. With ``refresh_masks=True`` or
  ``False`` it is ``optax.chain`` itself.

  Args:
    *transformations: the optimizer's transformations, then the pruning
      transformation.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes
    ``refresh_masks`` as :class:`PruningTransformation` does.

  Raises:
    TypeError: if the last transformation is not a cyclax pruning
      transformation (one wrapped, e.g. by ``optax.inject_hyperparams``, does
      not count: use ``optax.chain`` for it).

  Example:
    >>> import jax, jax.numpy as jnp, optax, cyclax
    >>> params = {"w": jax.random.normal(jax.random.key(0), (8, 8))}
    >>> prune = cyclax.cyclical_prune(0.75, num_cycles=2, cycle_steps=10, update_every=5)
    >>> fast, plain = cyclax.chain(optax.adam(1e-2), prune), optax.chain(optax.adam(1e-2), prune)
    >>> grads = jax.tree.map(jnp.cos, params)
    >>> a, _ = jax.jit(fast.update)(grads, fast.init(params), params)
    >>> b, _ = jax.jit(plain.update)(grads, plain.init(params), params)
    >>> bool(jnp.array_equal(a["w"], b["w"]))
    True
  """
  if not transformations or not isinstance(transformations[-1], PruningTransformation):
    last = type(transformations[-1]).__name__ if transformations else "nothing"
    raise TypeError(
      "the last transformation of cyclax.chain must be cyclax.magnitude_prune(...) or "
      f"cyclax.cyclical_prune(...), got {last}; for any other chain use optax.chain."
    )
  prune = transformations[-1]
  config: _config.PruneConfig = prune.__dict__["_config"]
  inner = optax.with_extra_args_support(optax.chain(*transformations[:-1]))
  plain = optax.chain(*transformations)

  def update_fn(
    updates: optax.Updates,
    state: optax.OptState,
    params: Optional[optax.Params] = None,
    *,
    refresh_masks: Optional[bool] = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, optax.OptState]:
    _validation.require_params(params, "chain")
    assert params is not None  # require_params raised otherwise
    _validation.check_refresh_flag(refresh_masks)
    if refresh_masks is not None or config.refreshes_every_step:
      return plain.update(updates, state, params, refresh_masks=refresh_masks, **extra_args)
    # The state of optax.chain, as plain.init made it: a tuple, one entry per transformation.
    chain_state = cast(tuple, state)
    plan = _config.make_plan(config, params)
    _state.check_state(config, plan, chain_state[-1], updates, params)
    if not plan.pruned:
      return plain.update(updates, state, params, **extra_args)
    return _owned_step(config, plan, inner, updates, chain_state, params, extra_args)

  return optax.GradientTransformationExtraArgs(plain.init, update_fn)


def _owned_step(
  config: _config.PruneConfig,
  plan: _config.Plan,
  inner: optax.GradientTransformationExtraArgs,
  grads: optax.Updates,
  state: tuple,
  params: optax.Params,
  extra_args: dict,
) -> tuple[optax.Updates, tuple]:
  """The default path of :func:`chain`: refresh from buffers only, then one in-place update."""
  inner_state, prune_state = tuple(state[:-1]), state[-1]
  stored = _step.pruned_leaves(plan, prune_state.masks)

  def fresh(grads, inner_state, params, prune_state):
    updates, _ = inner.update(grads, inner_state, params, **extra_args)
    p_in, u_in = _step.pruned_leaves(plan, params), _step.pruned_leaves(plan, updates)
    result = _step.refresh(config, plan, prune_state, p_in, u_in)
    return _step.in_stored_form(config, result), jnp.ones([], jnp.bool_)

  def kept(grads, inner_state, params, prune_state):
    del grads, inner_state, params
    return _step.kept(config, plan, prune_state, stored, blank=False), jnp.ones([], jnp.bool_)

  due = _cadence.refresh_due(config.sparsity, config.update_every, prune_state.count)
  result, ok = lax.cond(due, fresh, kept, grads, inner_state, params, prune_state)
  grads, inner_state, params = _after(ok, (grads, inner_state, params))
  updates, inner_state = inner.update(grads, inner_state, params, **extra_args)
  assert isinstance(inner_state, tuple)  # optax.chain's update returns its state as a tuple
  masks = [_packing.as_bool(m) for m in result.masks]
  updates, prune_state = _step.project(
    config, plan, prune_state, updates, params, masks, result.masks, result
  )
  return updates, (*inner_state, prune_state)
