"""The transformation (`magnitude_prune`, `cyclical_prune`) against a NumPy run of Algorithm 1."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference

import cyclax

LR = 0.25  # a power of two: -LR * g is exact, so NumPy and XLA agree bit for bit


def _tree(seed):
  """Leaves of every pruned dtype, size-1 and odd shapes, and a dense bias."""
  rng = np.random.default_rng(seed)
  shapes = {
    "one": ((1, 1), jnp.float32),
    "odd": ((3, 5), jnp.float32),
    "cube": ((7, 3, 2), jnp.float32),
    "four": ((2, 1, 3, 3), jnp.float32),
    "half": ((4, 5), jnp.bfloat16),
    "f16": ((3, 3), jnp.float16),
    "bias": ((5,), jnp.float32),
  }
  params = {k: np.asarray(jnp.asarray(rng.standard_normal(s), d)) for k, (s, d) in shapes.items()}
  targets = {k: np.asarray(jnp.asarray(2 * rng.standard_normal(s), d)) for k, (s, d) in shapes.items()}
  return params, targets


def _grads(params, targets):
  """Gradient of 0.5 * |p - target|^2, in NumPy in each leaf's dtype."""
  return {k: (np.asarray(p) - targets[k]).astype(targets[k].dtype) for k, p in params.items()}


def _train(tx, params, targets, num_steps, jit):
  """Runs ``tx`` with NumPy gradients; returns params and states after every step."""
  params = jax.tree.map(jnp.asarray, params)
  return reference.run_history(tx, params, num_steps, lambda p, t: _grads(p, targets), jit=jit)


# name: (sparsity, update_every, the steps where the schedule settles)
SCHEDULES = {
  "constant": (lambda: 0.6, 1, set()),
  "gradual": (lambda: cyclax.gradual_sparsity_schedule(0.9, 0, 9), 2, reference.gradual_settle_steps(0, 9)),
  "one_shot": (lambda: cyclax.one_shot_sparsity_schedule(0.7), 100, {0}),
  "cyclical_every_3": (
    lambda: cyclax.cyclical_sparsity_schedule(0.95, num_cycles=3, cycle_steps=4),
    3,
    reference.cyclical_settle_steps(3, 4, 0.8),
  ),
}


def _check_against_algorithm_1(name, jit, num_steps, leaves=None):
  make, update_every, settles = SCHEDULES[name]
  sparsity = make()
  schedule = sparsity if callable(sparsity) else (lambda t: sparsity)
  params, targets = _tree(seed=len(name))
  if leaves is not None:
    params = {k: params[k] for k in leaves}
    targets = {k: targets[k] for k in leaves}
  tx = optax.chain(optax.sgd(LR), cyclax.magnitude_prune(sparsity, update_every=update_every))
  history = _train(tx, params, targets, num_steps, jit)
  pruned = [k for k, v in params.items() if v.ndim >= 2]
  ref_params, ref_masks = reference.tv_pgd(
    params,
    lambda p: _grads(p, targets),
    LR,
    lambda t: float(schedule(max(t, 0))),
    update_every,
    num_steps,
    pruned,
    settles,
  )
  for t, ((got, state), want, want_masks) in enumerate(zip(history, ref_params, ref_masks)):
    masks = cyclax.get_masks(state)
    assert masks["bias"] is None
    sched = lambda s: float(schedule(max(s, 0)))
    refresh = max(r for r in range(t + 1) if reference.refresh_due(sched, update_every, r, settles))
    for k in params:
      assert got[k].dtype == params[k].dtype
      np.testing.assert_array_equal(
        reference.bits(got[k]), reference.bits(want[k]), err_msg=f"step {t} leaf {k}"
      )
      if k in pruned:
        np.testing.assert_array_equal(np.asarray(masks[k]), want_masks[k], err_msg=f"step {t} leaf {k}")
        # Exact count per leaf: k = (round(s * 2**24) * n + 2**23) >> 24 at the last refresh.
        expected = reference.num_to_prune(float(schedule(refresh)), params[k].size)
        assert int(np.sum(~np.asarray(masks[k]))) == expected
        assert int(np.sum(np.asarray(got[k]) == 0)) == expected, f"step {t} leaf {k}"
    assert int(cyclax.find_prune_state(state).count) == t + 1


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_jitted_run_equals_numpy_algorithm_1(name):
  _check_against_algorithm_1(name, jit=True, num_steps=10)


def test_eager_run_equals_numpy_algorithm_1():
  _check_against_algorithm_1("constant", jit=False, num_steps=2, leaves=["odd", "half", "bias"])


@pytest.mark.parametrize("jit", [True, False])
def test_pruned_entries_are_positive_zero_and_kept_entries_equal_p_plus_u(jit):
  rng = np.random.default_rng(0)
  params = {
    "w": jnp.asarray(rng.standard_normal((6, 7)), jnp.float32),
    "v": jnp.asarray(rng.standard_normal((5, 3)), jnp.bfloat16),
  }
  sparsity = cyclax.gradual_sparsity_schedule(0.7, 0, 4) if jit else 0.6
  tx = cyclax.magnitude_prune(sparsity, update_every=2)

  def step(params, state, updates):
    out, state = tx.update(updates, state, params)
    return optax.apply_updates(params, out), optax.apply_updates(params, updates), state

  step = jax.jit(step) if jit else step
  state = tx.init(params)
  saw_negative_pruned = False
  for t in range(6 if jit else 2):
    # Any update from the rest of the chain: random, not a function of params.
    u = jax.tree.map(lambda p: jnp.asarray(0.3 * rng.standard_normal(p.shape), p.dtype), params)
    before = params
    params, dense, state = step(params, state, u)
    masks = cyclax.get_masks(state)
    for k in params:
      m = np.asarray(masks[k])
      new = np.asarray(params[k])
      assert 0 < int(np.sum(~m)) < m.size or (jit and t < 2)  # gradual: first s > 0 at step 2
      saw_negative_pruned |= bool(np.any(np.asarray(before[k])[~m] < 0))
      # Pruned: exactly +0.0 (sign bit clear), whatever the sign of the weight before.
      np.testing.assert_array_equal(reference.bits(new[~m]), 0, err_msg=f"step {t} leaf {k}")
      # Kept: bit for bit the dense step p + u.
      np.testing.assert_array_equal(
        reference.bits(new[m]), reference.bits(np.asarray(dense[k])[m]), err_msg=f"step {t} leaf {k}"
      )
  assert saw_negative_pruned  # the -p update really met negative weights


def _recovery_run(prune, num_steps=40):
  """One 1x4 weight; the smallest at init has the largest optimum (3.0)."""
  w0 = np.array([[0.05, 0.8, 1.0, 1.5]], np.float32)
  target = np.array([[3.0, 0.5, 0.3, 1.5]], np.float32)
  history = _train(optax.chain(optax.sgd(2.0**-4), prune), {"w": w0}, {"w": target}, num_steps, jit=True)
  return np.array([np.asarray(p["w"])[0] for p, _ in history])


def test_weight_pruned_in_cycle_one_returns_in_cycle_two_but_not_under_gradual():
  cycle = 20
  cyclical = cyclax.cyclical_prune(0.5, num_cycles=2, cycle_steps=cycle, ramp_fraction=0.5, update_every=1)
  # The same ramp as the first cycle, held afterwards: gradual magnitude pruning.
  gradual = cyclax.magnitude_prune(cyclax.gradual_sparsity_schedule(0.5, 0, cycle // 2), update_every=1)
  w_cyc = _recovery_run(cyclical)
  w_grad = _recovery_run(gradual)
  np.testing.assert_array_equal(w_cyc[:cycle], w_grad[:cycle])  # identical first cycle
  assert w_cyc[0, 0] != 0 and np.all(w_cyc[1:cycle, 0] == 0)  # pruned early in cycle 1
  assert np.all(w_grad[1:, 0] == 0)  # gradual: dead for good
  assert np.all(w_cyc[cycle:, 0] != 0)  # cyclical: back at the start of cycle 2 and stays
  assert w_cyc[-1, 0] > 2.0  # and grows toward its optimum
  # Both end exactly at the target sparsity; cyclical reaches the lower loss.
  target = np.array([3.0, 0.5, 0.3, 1.5])
  assert np.sum(w_cyc[-1] == 0) == np.sum(w_grad[-1] == 0) == 2
  assert np.sum((w_cyc[-1] - target) ** 2) < np.sum((w_grad[-1] - target) ** 2)


def test_recovery_runs_equal_numpy_algorithm_1():
  w0 = {"w": np.array([[0.05, 0.8, 1.0, 1.5]], np.float32)}
  target = {"w": np.array([[3.0, 0.5, 0.3, 1.5]], np.float32)}
  schedule = cyclax.cyclical_sparsity_schedule(0.5, num_cycles=2, cycle_steps=20, ramp_fraction=0.5)
  got = _recovery_run(cyclax.magnitude_prune(schedule, update_every=1))
  want, _ = reference.tv_pgd(
    w0, lambda p: _grads(p, target), 2.0**-4, lambda t: float(schedule(t)), 1, 40, ["w"]
  )
  np.testing.assert_array_equal(got, np.array([p["w"][0] for p in want]))


@pytest.mark.parametrize("jit", [True, False])
def test_nan_candidates_are_kept_and_count_stays_exact(jit):
  rng = np.random.default_rng(1)
  params = {"w": jnp.asarray(rng.standard_normal((4, 5)), jnp.float32)}
  tx = optax.chain(optax.sgd(LR), cyclax.magnitude_prune(0.5, update_every=1))
  update = jax.jit(tx.update) if jit else tx.update
  state = tx.init(params)
  for num_nan in (3, 15):  # fewer NaNs than kept slots, then more
    grads = rng.standard_normal((4, 5)).astype(np.float32)
    grads.flat[rng.choice(20, num_nan, replace=False)] = np.nan
    updates, state = update({"w": jnp.asarray(grads)}, state, params)
    candidate = np.asarray(params["w"]) - np.float32(LR) * grads
    new = np.asarray(optax.apply_updates(params, updates)["w"])
    mask = np.asarray(cyclax.get_masks(state)["w"])
    np.testing.assert_array_equal(mask, reference.keep_mask(candidate, 10))
    assert int(np.sum(~mask)) == 10
    assert np.all(np.isnan(new[mask & np.isnan(candidate)]))
    np.testing.assert_array_equal(reference.bits(new[~mask]), 0)
    if num_nan <= 10:
      assert np.all(mask[np.isnan(candidate)])  # every NaN kept
    params = {"w": jnp.asarray(np.where(np.isnan(new), 1.0, new))}


def _misplaced_run(tx, num_steps, jit, edit_at=None, update_every=1):
  """Runs ``tx``; returns the warnings the steps issued, the counter, and the NumPy count of it."""
  rng = np.random.default_rng(2)
  params = {"w": jnp.asarray(rng.standard_normal((6, 6)), jnp.float32), "b": jnp.zeros(6)}
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  expected = 0
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for t in range(num_steps):
      if t == edit_at:
        params = {"w": params["w"] + 1.0, "b": params["b"]}
      [old] = [x for x in jax.tree.leaves(state, is_leaf=_is_prune_state) if _is_prune_state(x)]
      old_mask = np.asarray(old.masks["w"])
      # Placement is checked at refresh steps, against the previous masks.
      if t % update_every == 0:
        expected += int(np.any(np.asarray(params["w"])[~old_mask] != 0))
      grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
      updates, state = update(grads, state, params)
      params = optax.apply_updates(params, updates)
  from_steps = [w for w in caught if issubclass(w.category, cyclax.PruningOrderWarning)]
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    counter = int(cyclax.pruning_metrics(state)["misplaced_steps"])
  from_helper = [w for w in caught if issubclass(w.category, cyclax.PruningOrderWarning)]
  return from_steps, from_helper, counter, expected


def _is_prune_state(x):
  return isinstance(x, cyclax.MagnitudePruneState)


@pytest.mark.parametrize("jit", [True, False])
def test_misplaced_chain_is_counted_and_reported_by_the_helpers_not_the_step(jit):
  prune = cyclax.cyclical_prune(0.5, num_cycles=2, cycle_steps=3, update_every=1)
  from_steps, from_helper, counter, expected = _misplaced_run(
    optax.chain(prune, optax.adam(0.1)), 5 if jit else 3, jit
  )
  assert from_steps == []  # no host callback in the step
  assert len(from_helper) == 1 and "LAST" in str(from_helper[0].message)
  assert expected >= (3 if jit else 1)  # steps after the first pruning see stray non-zeros
  assert counter == expected


@pytest.mark.parametrize("jit", [True, False])
def test_correct_chain_never_warns_and_counter_stays_zero(jit):
  prune = cyclax.cyclical_prune(0.5, num_cycles=2, cycle_steps=3, update_every=1)
  from_steps, from_helper, counter, expected = _misplaced_run(
    optax.chain(optax.adam(0.1), prune), 5 if jit else 3, jit
  )
  assert from_steps == from_helper == [] and counter == 0 and expected == 0


def test_params_edited_outside_the_optimizer_are_reported():
  prune = cyclax.magnitude_prune(0.5, update_every=2)
  from_steps, from_helper, counter, expected = _misplaced_run(
    optax.chain(optax.sgd(0.1), prune), 6, jit=True, edit_at=4, update_every=2
  )
  assert from_steps == [] and len(from_helper) == 1 and counter == expected == 1


def _control_flow(jaxpr, out):
  """Names of every cond/while/scan in a jaxpr, sub-jaxprs included."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("cond", "while", "scan"):
      out.append(eqn.primitive.name)
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          _control_flow(inner, out)
  return sorted(out)


def test_refresh_control_flow_does_not_grow_with_the_number_of_leaves():
  # All leaves refresh under one lax.cond and share the selection loops.
  def control_flow(num_leaves):
    params = {f"w{i}": jnp.ones((3 + i, 4)) for i in range(num_leaves)}
    tx = cyclax.magnitude_prune(0.5, update_every=2)
    closed = jax.make_jaxpr(tx.update)(params, tx.init(params), params)
    return _control_flow(closed.jaxpr, [])

  one, five = control_flow(1), control_flow(5)
  assert "cond" in one and one == five


def test_default_filter_prunes_floating_leaves_with_two_or_more_dims():
  params = {
    "kernel": jnp.ones((3, 4)),
    "conv": jnp.ones((2, 2, 3, 4), jnp.bfloat16),
    "bias": jnp.ones(4),
    "scale": jnp.ones(()),
    "table": jnp.ones((3, 3), jnp.int32),
    "flags": jnp.ones((2, 2), bool),
  }
  masks = cyclax.magnitude_prune(0.5).init(params).masks
  assert {k for k, m in masks.items() if m is not None} == {"kernel", "conv"}
  for k in ("kernel", "conv"):
    assert masks[k].dtype == jnp.bool_ and masks[k].shape == params[k].shape and bool(jnp.all(masks[k]))


def test_filter_as_tree_prefix_and_as_callable():
  rng = np.random.default_rng(3)
  params = {
    "enc": {"w": jnp.asarray(rng.standard_normal((4, 4))), "b": jnp.asarray(rng.standard_normal(4))},
    "dec": {"w": jnp.asarray(rng.standard_normal((4, 4)))},
  }
  by_tree = cyclax.magnitude_prune(0.5, filter={"enc": True, "dec": False})
  by_fn = cyclax.magnitude_prune(0.5, filter=lambda path, leaf: path[0].key == "enc")
  for tx in (by_tree, by_fn):
    full = optax.chain(optax.sgd(LR), tx)
    state = full.init(params)
    updates, state = jax.jit(full.update)(params, state, params)
    new = optax.apply_updates(params, updates)
    masks = cyclax.get_masks(state)
    assert masks["dec"]["w"] is None
    for k, n in (("w", 16), ("b", 4)):
      candidate = np.asarray(params["enc"][k]) * np.float32(1 - LR)
      np.testing.assert_array_equal(np.asarray(masks["enc"][k]), reference.keep_mask(candidate, n // 2))
      assert int(jnp.sum(new["enc"][k] == 0)) == n // 2
    assert int(jnp.sum(new["dec"]["w"] == 0)) == 0


def test_no_pruned_leaf_passes_updates_through():
  params = {"b": jnp.arange(1.0, 5.0)}
  tx = cyclax.magnitude_prune(0.5)
  state = tx.init(params)
  grads = {"b": jnp.array([0.5, -1.0, 2.0, 3.0])}
  updates, state = tx.update(grads, state, params)
  np.testing.assert_array_equal(updates["b"], grads["b"])
  assert int(state.count) == 1


def test_full_sparsity_prunes_everything_when_allowed():
  params = {"w": jnp.asarray(np.random.default_rng(4).standard_normal((3, 3)), jnp.float32)}
  tx = optax.chain(optax.sgd(LR), cyclax.magnitude_prune(1.0, update_every=1, allow_full_sparsity=True))
  state = tx.init(params)
  updates, state = tx.update(params, state, params)
  np.testing.assert_array_equal(reference.bits(optax.apply_updates(params, updates)["w"]), 0)


# Bad input: each raises a clear error naming the argument.


@pytest.mark.parametrize(
  "make, name",
  [
    (lambda: cyclax.magnitude_prune(-0.1), "sparsity"),
    (lambda: cyclax.magnitude_prune(1.0), "sparsity"),
    (lambda: cyclax.magnitude_prune(1.5, allow_full_sparsity=True), "sparsity"),
    (lambda: cyclax.magnitude_prune(float("nan")), "sparsity"),
    (lambda: cyclax.magnitude_prune(0.5, update_every=0), "update_every"),
    (lambda: cyclax.magnitude_prune(0.5, update_every=-3), "update_every"),
    (lambda: cyclax.cyclical_prune(1.0, num_cycles=2, cycle_steps=10), "target_sparsity"),
    (lambda: cyclax.cyclical_prune(0.9, num_cycles=0, cycle_steps=10), "num_cycles"),
    (lambda: cyclax.cyclical_prune(0.9, num_cycles=2, cycle_steps=0), "cycle_steps"),
    (lambda: cyclax.cyclical_prune(0.9, num_cycles=2, cycle_steps=10, ramp_fraction=0.0), "ramp_fraction"),
    (lambda: cyclax.cyclical_prune(0.9, num_cycles=2, cycle_steps=10, ramp_fraction=1.2), "ramp_fraction"),
    (lambda: cyclax.cyclical_prune(0.9, num_cycles=2, cycle_steps=10, update_every=0), "update_every"),
    (
      lambda: cyclax.cyclical_prune(0.5, num_cycles=2, cycle_steps=10, initial_sparsity=0.7),
      "initial_sparsity",
    ),
  ],
)
def test_out_of_range_argument_raises_value_error_naming_it(make, name):
  with pytest.raises(ValueError, match=f"`{name}`"):
    make()


@pytest.mark.parametrize(
  "make, name",
  [
    (lambda: cyclax.magnitude_prune("0.5"), "sparsity"),
    (lambda: cyclax.magnitude_prune(0.5, update_every=2.5), "update_every"),
    (lambda: cyclax.cyclical_prune(0.9, num_cycles=1.5, cycle_steps=10), "num_cycles"),
  ],
)
def test_wrong_type_argument_raises_type_error_naming_it(make, name):
  with pytest.raises(TypeError, match=f"`{name}`"):
    make()


def test_full_sparsity_is_allowed_only_explicitly():
  cyclax.magnitude_prune(1.0, allow_full_sparsity=True)
  cyclax.cyclical_prune(1.0, num_cycles=1, cycle_steps=5, allow_full_sparsity=True)
  with pytest.raises(ValueError, match="allow_full_sparsity"):
    cyclax.magnitude_prune(1.0)


def test_update_without_params_raises_value_error():
  params = {"w": jnp.ones((2, 2))}
  tx = cyclax.magnitude_prune(0.5)
  state = tx.init(params)
  with pytest.raises(ValueError, match="params"):
    tx.update(params, state)
  with pytest.raises(ValueError, match="params"):
    tx.update(params, state, None)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.uint8])
def test_filter_selecting_a_non_float_leaf_raises_type_error(dtype):
  params = {"w": jnp.ones((2, 2)), "step": jnp.ones((2, 2), dtype)}
  for filter in ({"w": True, "step": True}, lambda path, leaf: True):
    with pytest.raises(TypeError, match="filter") as info:
      cyclax.magnitude_prune(0.5, filter=filter).init(params)
    assert "step" in str(info.value)


@pytest.mark.parametrize(
  "filter",
  [{"w": True}, {"w": True, "b": True, "extra": False}, [True, False], {"w": 1, "b": 0}],
  ids=["missing", "extra", "list", "not-bool"],
)
def test_filter_tree_not_matching_params_raises_value_error(filter):
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
  with pytest.raises(ValueError, match="filter"):
    cyclax.magnitude_prune(0.5, filter=filter).init(params)


def test_updates_with_wrong_structure_raise_value_error():
  params = {"w": jnp.ones((2, 2))}
  tx = cyclax.magnitude_prune(0.5)
  state = tx.init(params)
  with pytest.raises(ValueError, match="structure"):
    tx.update({"v": jnp.ones((2, 2))}, state, params)


def test_vmapped_update_counts_only_the_misplaced_element_and_the_helper_warns_once():
  # Three independent runs batched with vmap; run 1 has its params edited outside
  # the optimizer before the second refresh. Only that run's counter moves.
  rng = np.random.default_rng(5)
  params = {"w": jnp.asarray(rng.standard_normal((3, 6, 6)), jnp.float32)}
  tx = optax.chain(optax.sgd(0.1), cyclax.magnitude_prune(0.5, update_every=2))
  state = jax.vmap(tx.init)(params)
  update = jax.jit(jax.vmap(tx.update))
  for t in range(5):
    if t == 2:
      params = {"w": params["w"].at[1].add(1.0)}
    grads = {"w": jnp.asarray(rng.standard_normal((3, 6, 6)), jnp.float32)}
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    prune_state = cyclax.find_prune_state(state)
  assert len([w for w in caught if issubclass(w.category, cyclax.PruningOrderWarning)]) == 1
  np.testing.assert_array_equal(np.asarray(prune_state.misplaced_steps), [0, 1, 0])
