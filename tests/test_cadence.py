"""When masks are refreshed, and the static ``refresh_masks`` flag against the default path."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference

import cyclax

LR = 0.25


def _params(seed=0):
  shapes = {"w": ((12, 8), jnp.float32), "v": ((4, 4, 3), jnp.bfloat16), "b": ((8,), jnp.float32)}
  return reference.random_tree(seed, shapes)


def _grads(params, t):
  """Seeded random gradients, so that masks move at every refresh."""
  return reference.random_like(params, 1000 + t)


CADENCES = {
  "cyclical 150/40": (
    dict(target=0.9, num_cycles=2, cycle_steps=150, ramp_fraction=0.8, initial=0.45, update_every=40),
    300,
  ),
  "cyclical 200/100": (
    dict(target=0.9, num_cycles=2, cycle_steps=200, ramp_fraction=0.8, initial=0.45, update_every=100),
    420,
  ),
  "cyclical odd ramp": (
    dict(target=0.8, num_cycles=3, cycle_steps=37, ramp_fraction=0.55, initial=0.2, update_every=10),
    130,
  ),
}


@pytest.mark.parametrize("name", sorted(CADENCES))
def test_refresh_due_follows_the_documented_rule(name):
  c, steps = CADENCES[name]
  prune = cyclax.cyclical_prune(
    c["target"],
    num_cycles=c["num_cycles"],
    cycle_steps=c["cycle_steps"],
    initial_sparsity=c["initial"],
    ramp_fraction=c["ramp_fraction"],
    update_every=c["update_every"],
  )

  def schedule(t):
    return reference.cyclical_sparsity(
      max(t, 0), c["target"], c["num_cycles"], c["cycle_steps"], c["initial"], c["ramp_fraction"]
    )

  settles = reference.cyclical_settle_steps(c["num_cycles"], c["cycle_steps"], c["ramp_fraction"])
  got = [t for t in range(steps) if prune.refresh_due(t)]
  want = [t for t in range(steps) if reference.refresh_due(schedule, c["update_every"], t, settles)]
  assert got == want
  # Every cycle start and every ramp end is among them, whatever update_every is.
  for cycle in range(c["num_cycles"]):
    start = cycle * c["cycle_steps"]
    ramp_end = start + int(np.ceil(c["ramp_fraction"] * c["cycle_steps"]))
    assert start in got and ramp_end in got


@pytest.mark.parametrize("ramp", ["cubic", "linear", "step"])
def test_schedules_settle_where_their_ramps_end_and_nowhere_else(ramp):
  cyclical = cyclax.cyclical_sparsity_schedule(0.9, num_cycles=3, cycle_steps=600, ramp=ramp)
  gradual = cyclax.gradual_sparsity_schedule(0.9, 100, 2500, ramp=ramp)
  cycle_settles = reference.cyclical_settle_steps(3, 600, 0.8, ramp)
  gradual_settles = reference.gradual_settle_steps(100, 2500, ramp)
  steps = jnp.arange(3000)
  assert set(np.flatnonzero(jax.vmap(cyclical.settles_at)(steps)).tolist()) == cycle_settles
  assert set(np.flatnonzero(jax.vmap(gradual.settles_at)(steps)).tolist()) == gradual_settles
  # At a settle step the schedule holds the level it reached (a long cubic ramp in float32 reaches
  # its target a few steps early and in plateaus: none of them is a refresh of its own).
  for schedule, settles in ((cyclical, cycle_settles), (gradual, gradual_settles)):
    values = np.asarray(jax.vmap(schedule)(steps))
    for t in settles:
      assert values[t] == np.float32(0.9) == values[min(t + 1, 2999)]
  prune = cyclax.magnitude_prune(gradual, update_every=100)
  assert [t for t in range(3000) if prune.refresh_due(t) and t % 100] == sorted(
    t for t in gradual_settles if t % 100
  )


def test_periodic_passes_settles_on_and_a_schedule_of_your_own_refreshes_at_drops():
  inner = cyclax.gradual_sparsity_schedule(0.8, 0, 7)
  prune = cyclax.magnitude_prune(cyclax.periodic(inner, 10, num_periods=3), update_every=100)
  assert [t for t in range(40) if prune.refresh_due(t)] == [0, 7, 10, 17, 20, 27]
  # A plain function: drops are found from its values; a ramp end is not (no settles_at).
  own = lambda count: jnp.where(count % 10 < 7, 0.1 * (count % 10), 0.7)
  prune = cyclax.magnitude_prune(own, update_every=100)
  assert [t for t in range(40) if prune.refresh_due(t)] == [0, 10, 20, 30]
  own.settles_at = lambda count: count % 10 == 7
  prune = cyclax.magnitude_prune(own, update_every=100)
  assert [t for t in range(25) if prune.refresh_due(t)] == [0, 7, 10, 17, 20]


def test_one_shot_at_a_later_step_refreshes_at_that_step_with_a_huge_update_every():
  prune = cyclax.magnitude_prune(cyclax.one_shot_sparsity_schedule(0.7, prune_step=13), update_every=2**40)
  assert [t for t in range(100) if prune.refresh_due(t)] == [0, 13]
  constant = cyclax.magnitude_prune(0.5, update_every=10**10)
  assert [t for t in range(50) if constant.refresh_due(t)] == [0]


def _run(prune, params, num_steps, static, jit=True, tx=None):
  """The default loop, or the static loop driven by ``refresh_due``; params and states after every step."""
  tx = optax.chain(optax.sgd(LR), prune if tx is None else tx)

  def step(params, state, grads, refresh_masks=None):
    updates, state = tx.update(grads, state, params, refresh_masks=refresh_masks)
    return optax.apply_updates(params, updates), state

  if jit:
    step = jax.jit(step, static_argnames="refresh_masks")
  state = tx.init(params)
  history = []
  for t in range(num_steps):
    flag = prune.refresh_due(t) if static else None
    params, state = step(params, state, _grads(params, t), refresh_masks=flag)
    history.append((params, state))
  return history


# Every distribution, packed masks, overrides, regrowth tracking and N:M, each on its own part of the
# params (optax.multi_transform), all on the same cadence, so one compiled step covers them all.
STATIC_CASES = {
  "uniform": {},
  "global_packed": {"distribution": "global", "packed_masks": True},
  "erk_overrides_regrowth": {
    "distribution": "erk",
    "overrides": {"erk_overrides_regrowth/v": 0.5},
    "track_regrowth": True,
  },
  "nm": {"pattern": (2, 4)},
}


def test_static_loop_equals_default_loop_bit_for_bit():
  prunes = {
    case: cyclax.cyclical_prune(
      0.5 if "pattern" in kw else 0.85, num_cycles=3, cycle_steps=9, update_every=4, **kw
    )
    for case, kw in STATIC_CASES.items()
  }
  due = [prunes["uniform"].refresh_due(t) for t in range(30)]
  assert all([p.refresh_due(t) for t in range(30)] == due for p in prunes.values())
  assert 0 < sum(due) < 30  # some steps refresh, others do not
  tx = optax.multi_transform(prunes, {case: case for case in STATIC_CASES})
  params = {case: _params(i) for i, case in enumerate(STATIC_CASES)}
  for default, static in zip(
    _run(prunes["uniform"], params, 30, static=False, tx=tx),
    _run(prunes["uniform"], params, 30, static=True, tx=tx),
  ):
    reference.assert_trees_bitwise_equal(default, static)


def test_static_loop_equals_default_loop_eagerly():
  prune = cyclax.cyclical_prune(0.85, num_cycles=3, cycle_steps=9, update_every=4)
  params = _params(3)
  for default, static in zip(
    _run(prune, params, 12, False, jit=False), _run(prune, params, 12, True, jit=False)
  ):
    reference.assert_trees_bitwise_equal(default, static)


def test_flag_wins_over_the_count():
  params = {"w": jnp.asarray(np.random.default_rng(4).standard_normal((10, 10)), jnp.float32)}
  prune = cyclax.magnitude_prune(cyclax.gradual_sparsity_schedule(0.9, 0, 20), update_every=1000)
  tx = optax.chain(optax.sgd(LR), prune)
  state = tx.init(params)
  step = jax.jit(
    lambda p, s, g, refresh_masks: tx.update(g, s, p, refresh_masks=refresh_masks),
    static_argnames="refresh_masks",
  )
  # Count 0 is due, but False keeps the all-kept masks of init.
  updates, state = step(params, state, _grads(params, 0), refresh_masks=False)
  assert bool(jnp.all(cyclax.get_masks(state)["w"]))
  params = optax.apply_updates(params, updates)
  # Count 1 is not due, but True refreshes at the schedule's sparsity at count 1.
  grads = _grads(params, 1)
  candidate = np.asarray(params["w"]) - np.float32(LR) * np.asarray(grads["w"])
  updates, state = step(params, state, grads, refresh_masks=True)
  level = float(cyclax.gradual_sparsity_schedule(0.9, 0, 20)(1))
  want = reference.keep_mask(candidate, reference.num_to_prune(level, 100))
  np.testing.assert_array_equal(np.asarray(cyclax.get_masks(state)["w"]), want)
  assert int(cyclax.find_prune_state(state).count) == 2


def _primitives(closed_jaxpr):
  """The names of the primitives in a jaxpr, sub-jaxprs included (as printed)."""
  return set(re.findall(r"\b([a-z_]+)\[", str(closed_jaxpr)))


@pytest.mark.parametrize("packed", [False, True])
def test_static_step_without_refresh_traces_no_control_flow(packed):
  params = _params(5)
  tx = optax.chain(optax.adamw(1e-3), cyclax.magnitude_prune(0.9, update_every=50, packed_masks=packed))
  state = tx.init(params)

  def step(p, s, g, refresh_masks):
    updates, s = tx.update(g, s, p, refresh_masks=refresh_masks)
    return optax.apply_updates(p, updates), s

  names = _primitives(jax.make_jaxpr(step, static_argnums=3)(params, state, _grads(params, 0), False))
  assert not names & {"cond", "while", "switch", "scan"}, names
  assert "cond" in _primitives(jax.make_jaxpr(step, static_argnums=3)(params, state, _grads(params, 0), None))


def test_cyclical_run_of_exactly_the_schedule_ends_at_the_target_with_default_update_every():
  params = {"w": jnp.asarray(np.random.default_rng(6).standard_normal((16, 16)), jnp.float32)}
  tx = optax.chain(optax.sgd(0.01), cyclax.cyclical_prune(0.9, num_cycles=2, cycle_steps=200))
  state = tx.init(params)

  @jax.jit
  def step(p, s, t):
    grads = {"w": jnp.sin(p["w"] * (t + 1.0))}
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s

  pruned = []
  for t in range(400):
    params, state = step(params, state, t)
    pruned.append(int(jnp.sum(~cyclax.get_masks(state)["w"])))
  assert pruned[-1] == int(jnp.sum(params["w"] == 0)) == reference.num_to_prune(0.9, 256)
  # The second cycle starts (and drops) at step 200 exactly, back to half the target.
  assert pruned[199] == reference.num_to_prune(0.9, 256)
  assert pruned[200] == reference.num_to_prune(0.45, 256)


@pytest.mark.parametrize("flag", [1, "yes", jnp.array(True)])
def test_refresh_flag_must_be_a_python_bool(flag):
  params = _params()
  tx = optax.chain(optax.sgd(LR), cyclax.magnitude_prune(0.5))
  with pytest.raises(TypeError, match="refresh_masks"):
    tx.update(_grads(params, 0), tx.init(params), params, refresh_masks=flag)


def test_nnx_optimizer_passes_refresh_masks_through():
  from flax import nnx

  model = nnx.Linear(6, 5, rngs=nnx.Rngs(0))
  prune = cyclax.magnitude_prune(0.6, update_every=1000)
  optimizer = nnx.Optimizer(model, optax.chain(optax.sgd(0.1), prune), wrt=nnx.Param)
  x = jnp.asarray(np.random.default_rng(7).standard_normal((4, 6)), jnp.float32)
  grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
  optimizer.update(model, grads, refresh_masks=False)  # count 0 is due; the flag keeps all weights
  assert int(jnp.sum(model.kernel[...] == 0)) == 0
  grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
  optimizer.update(model, grads, refresh_masks=True)
  assert int(jnp.sum(model.kernel[...] == 0)) == reference.num_to_prune(0.6, 30)
