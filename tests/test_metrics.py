"""Regrowth tracking and `pruning_metrics`, against NumPy bookkeeping of the mask history."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference

import cyclax

LEAVES = {"layer1/kernel": (6, 5), "layer2/kernel": (5, 3)}


def make_params(seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {
    "layer1": {"kernel": jax.random.normal(k1, (6, 5)), "bias": jnp.ones(5)},
    "layer2": {"kernel": jax.random.normal(k2, (5, 3)), "bias": jnp.ones(3)},
  }


def kernels(tree):
  return {"layer1/kernel": tree["layer1"]["kernel"], "layer2/kernel": tree["layer2"]["kernel"]}


def run(track_regrowth, steps=24, jit=True, packed_masks=False):
  """Adam on a random regression with 2 pruning cycles; yields (params, state) after every step."""
  params = make_params()
  loss = reference.tanh_regression_loss(("layer1", "layer2"), 7, 8, num_examples=16, sizes=(6, 3))
  tx = optax.chain(
    optax.adam(0.1),
    cyclax.cyclical_prune(
      0.8,
      num_cycles=2,
      cycle_steps=12,
      update_every=2,
      track_regrowth=track_regrowth,
      packed_masks=packed_masks,
    ),
  )

  def step(p, s):
    updates, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, updates), s

  step = jax.jit(step) if jit else step
  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
    yield params, state


def test_default_state_does_not_grow():
  params = make_params()
  plain = cyclax.magnitude_prune(0.5).init(params)
  tracked = cyclax.magnitude_prune(0.5, track_regrowth=True).init(params)
  assert plain.ever_pruned is None and plain.last_regrown is None
  counters = 4  # count, misplaced_steps, nonfinite_steps, skipped_refreshes
  assert len(jax.tree.leaves(plain)) == counters + len(LEAVES)
  assert len(jax.tree.leaves(tracked)) == counters + 3 * len(LEAVES)
  assert jax.tree.structure(plain.masks) == jax.tree.structure(tracked.ever_pruned)
  assert jax.tree.structure(plain.masks) == jax.tree.structure(tracked.last_regrown)


@pytest.mark.parametrize("jit", [False, True])
def test_ever_pruned_is_the_union_of_all_pruned_masks(jit):
  union = {name: np.zeros(shape, bool) for name, shape in LEAVES.items()}
  for _, state in run(True, steps=16 if jit else 3, jit=jit):
    prune_state = cyclax.find_prune_state(state)
    for name, mask in kernels(prune_state.masks).items():
      union[name] |= ~np.asarray(mask)
      np.testing.assert_array_equal(np.asarray(kernels(prune_state.ever_pruned)[name]), union[name])


def test_pruning_metrics_match_numpy_bookkeeping():
  union = {name: np.zeros(shape, bool) for name, shape in LEAVES.items()}
  # Regrown at the latest refresh that lowered a leaf's number pruned: kept now, pruned just before.
  last_regrown = {name: np.zeros(shape, bool) for name, shape in LEAVES.items()}
  previous = {name: np.ones(shape, bool) for name, shape in LEAVES.items()}
  total = sum(np.prod(s) for s in LEAVES.values())
  regrown_at_cycle_start = survival_at_cycle_end = None
  for t, (params, state) in enumerate(run(True)):
    prune_state = cyclax.find_prune_state(state)
    masks = {k: np.asarray(v) for k, v in kernels(prune_state.masks).items()}
    values = {k: np.asarray(v) for k, v in kernels(params).items()}
    for name in LEAVES:
      union[name] |= ~masks[name]
      if np.sum(~masks[name]) < np.sum(~previous[name]):
        last_regrown[name] = masks[name] & ~previous[name]
      np.testing.assert_array_equal(np.asarray(kernels(prune_state.last_regrown)[name]), last_regrown[name])
    previous = masks
    metrics = cyclax.pruning_metrics(state, params)
    from_masks = cyclax.pruning_metrics(state)
    expected = {"count": t + 1, "misplaced_steps": 0, "nonfinite_steps": 0, "skipped_refreshes": 0}
    for name in LEAVES:
      expected[f"sparsity/{name}"] = np.mean(values[name] == 0)
      expected[f"regrown/{name}"] = np.mean(union[name] & masks[name])
      grown = np.sum(last_regrown[name])
      expected[f"survival/{name}"] = np.sum(last_regrown[name] & masks[name]) / grown if grown else 0.0
    expected["sparsity/total"] = sum(np.sum(v == 0) for v in values.values()) / total
    expected["regrown/total"] = sum(np.sum(union[n] & masks[n]) for n in LEAVES) / total
    expected["ever_pruned/total"] = sum(np.sum(u) for u in union.values()) / total
    grown = sum(np.sum(r) for r in last_regrown.values())
    kept = sum(np.sum(last_regrown[n] & masks[n]) for n in LEAVES)
    expected["survival/total"] = kept / grown if grown else 0.0
    assert sorted(metrics) == sorted(expected)
    for key, value in expected.items():
      np.testing.assert_allclose(np.asarray(metrics[key]), value, rtol=1e-6, err_msg=key)
      assert np.asarray(metrics[key]).shape == ()
    for name in LEAVES:
      np.testing.assert_allclose(np.asarray(from_masks[f"sparsity/{name}"]), np.mean(~masks[name]), rtol=1e-6)
    if t == 12:  # the refresh that opens cycle 2
      regrown_at_cycle_start = float(metrics["regrown/total"])
      assert float(metrics["survival/total"]) == 1.0  # just regrown: all kept
    if t == 23:
      survival_at_cycle_end = float(metrics["survival/total"])
  # Lowering the sparsity at the start of cycle 2 brings pruned weights back.
  assert regrown_at_cycle_start > 0.2
  assert 0.0 <= survival_at_cycle_end < 1.0


def test_pruning_metrics_without_tracking_has_no_regrowth_keys():
  params, state = next(run(False, steps=1))
  metrics = cyclax.pruning_metrics(state, params)
  assert sorted(metrics) == sorted(
    [
      "count",
      "misplaced_steps",
      "nonfinite_steps",
      "skipped_refreshes",
      "sparsity/layer1/kernel",
      "sparsity/layer2/kernel",
      "sparsity/total",
    ]
  )


def test_pruning_metrics_jitted_equals_eager():
  *_, (params, state) = run(True, steps=14)
  eager = cyclax.pruning_metrics(state, params)
  jitted = jax.jit(cyclax.pruning_metrics)(state, params)
  assert sorted(eager) == sorted(jitted)
  for key in eager:
    np.testing.assert_array_equal(np.asarray(eager[key]), np.asarray(jitted[key]))


def test_pruning_metrics_are_the_same_with_packed_masks():
  *_, (params, state) = run(True, steps=14)
  *_, (packed_params, packed_state) = run(True, steps=14, packed_masks=True)
  plain = cyclax.pruning_metrics(state, params)
  packed = cyclax.pruning_metrics(packed_state, packed_params)
  from_masks = cyclax.pruning_metrics(packed_state)
  assert sorted(plain) == sorted(packed)
  for key in plain:
    np.testing.assert_array_equal(np.asarray(packed[key]), np.asarray(plain[key]))
    if key.startswith("sparsity/"):
      np.testing.assert_array_equal(np.asarray(from_masks[key]), np.asarray(plain[key]))


def test_pruning_metrics_needs_a_pruning_state():
  with pytest.raises(ValueError, match="pruning state"):
    cyclax.pruning_metrics(optax.adam(1e-3).init(make_params()))


def test_pruning_metrics_take_flax_nnx_params():
  from flax import nnx

  model = nnx.Linear(6, 5, rngs=nnx.Rngs(0))
  tx = optax.chain(optax.sgd(0.1), cyclax.magnitude_prune(0.6, update_every=1))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x = jax.random.normal(jax.random.key(3), (4, 6))
  optimizer.update(model, nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model))
  metrics = cyclax.pruning_metrics(optimizer.opt_state, nnx.state(model, nnx.Param))
  kernel = np.asarray(model.kernel[...])
  assert sorted(k for k in metrics if k.startswith("sparsity/")) == ["sparsity/kernel", "sparsity/total"]
  np.testing.assert_allclose(float(metrics["sparsity/kernel"]), np.mean(kernel == 0), rtol=1e-6)
