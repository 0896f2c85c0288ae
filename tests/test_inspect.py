"""Finding the pruning state inside optimizer states, and the sparsity report."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference

import cyclax


def _params():
  rng = np.random.default_rng(0)
  return {
    "dense": {"kernel": jnp.asarray(rng.standard_normal((4, 6)), jnp.float32), "bias": jnp.zeros(6)},
    "head": jnp.asarray(rng.standard_normal((6, 3)), jnp.float32),
  }


def _prune():
  return cyclax.magnitude_prune(0.5, update_every=1)


WRAPPERS = {
  "bare": lambda: _prune(),
  "chain": lambda: optax.chain(optax.adam(0.1), _prune()),
  "nested_chain": lambda: optax.chain(optax.clip(1.0), optax.chain(optax.sgd(0.1), _prune())),
  "masked": lambda: optax.masked(optax.chain(optax.sgd(0.1), _prune()), {"dense": True, "head": True}),
  "inject_hyperparams": lambda: optax.chain(
    optax.sgd(0.1), optax.inject_hyperparams(cyclax.magnitude_prune)(sparsity=0.5, update_every=1)
  ),
  "multi_steps": lambda: optax.MultiSteps(optax.chain(optax.sgd(0.1), _prune()), every_k_schedule=1),
  "apply_if_finite": lambda: optax.apply_if_finite(optax.chain(optax.sgd(0.1), _prune()), 3),
  "all_of_them": lambda: optax.MultiSteps(
    optax.apply_if_finite(
      optax.masked(
        optax.chain(optax.sgd(0.1), optax.inject_hyperparams(cyclax.magnitude_prune)(sparsity=0.5)),
        {"dense": True, "head": True},
      ),
      3,
    ),
    every_k_schedule=1,
  ),
}


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_find_prune_state_and_get_masks_through_wrappers(name):
  tx = WRAPPERS[name]()
  params = _params()
  state = tx.init(params)
  found = cyclax.find_prune_state(state)
  assert isinstance(found, cyclax.MagnitudePruneState) and int(found.count) == 0
  grads = jax.tree.map(
    lambda p: jnp.asarray(np.random.default_rng(1).standard_normal(p.shape), p.dtype), params
  )
  updates, state = jax.jit(tx.update)(grads, state, params)
  new = optax.apply_updates(params, updates)
  found = cyclax.find_prune_state(state)
  assert int(found.count) == 1
  masks = cyclax.get_masks(state)
  assert masks["dense"]["bias"] is None
  for path in (("dense", "kernel"), ("head",)):
    mask, leaf = masks, new
    for key in path:
      mask, leaf = mask[key], leaf[key]
    # The masks returned are the ones applied to the params.
    np.testing.assert_array_equal(np.asarray(mask), np.asarray(leaf) != 0)
    assert int(np.sum(~np.asarray(mask))) == leaf.size // 2


def test_find_prune_state_without_or_with_two_states_raises():
  params = _params()
  with pytest.raises(ValueError, match="found 0"):
    cyclax.find_prune_state(optax.adam(0.1).init(params))
  two = optax.chain(_prune(), optax.sgd(0.1), _prune())
  with pytest.raises(ValueError, match="found 2"):
    cyclax.find_prune_state(two.init(params))


@pytest.mark.parametrize("jit", [True, False])
def test_sparsity_report_equals_numpy(jit):
  rng = np.random.default_rng(2)
  arrays = {
    "a": rng.standard_normal((5, 7)).astype(np.float32),
    "b": rng.standard_normal((3, 3, 2)).astype(np.float32),
    "c": rng.standard_normal(11).astype(np.float32),
  }
  for x in arrays.values():
    x[rng.random(x.shape) < 0.4] = 0.0
  arrays["b"].flat[0] = -0.0  # negative zero counts as zero
  params = {
    "enc": {"a": jnp.asarray(arrays["a"]), "c": jnp.asarray(arrays["c"], jnp.bfloat16)},
    "dec": [jnp.asarray(arrays["b"]), jnp.arange(4)],
  }
  report_fn = jax.jit(cyclax.sparsity_report) if jit else cyclax.sparsity_report
  report = {k: float(v) for k, v in report_fn(params).items()}
  expected = {
    "enc/a": np.mean(arrays["a"] == 0),
    "enc/c": np.mean(arrays["c"] == 0),
    "dec/0": np.mean(arrays["b"] == 0),
  }
  total = sum(np.sum(x == 0) for x in arrays.values()) / sum(x.size for x in arrays.values())
  assert set(report) == set(expected) | {"total"}  # integer leaves are not reported
  for k, v in expected.items():
    np.testing.assert_allclose(report[k], v, rtol=1e-6)
  np.testing.assert_allclose(report["total"], total, rtol=1e-6)


def test_sparsity_report_with_filter_reports_selected_leaves():
  rng = np.random.default_rng(3)
  w = rng.standard_normal((6, 4)).astype(np.float32)
  w[:, :3] = 0.0
  params = {"w": jnp.asarray(w), "b": jnp.zeros(4)}
  report = cyclax.sparsity_report(params, filter=cyclax.default_filter)
  assert set(report) == {"w", "total"}
  np.testing.assert_allclose(float(report["w"]), 0.75)
  np.testing.assert_allclose(float(report["total"]), 0.75)


def test_sparsity_report_after_pruning_matches_the_rounding_rule():
  rng = np.random.default_rng(4)
  params = {"w": jnp.asarray(rng.standard_normal((7, 9)), jnp.float32), "b": jnp.ones(9)}
  tx = optax.chain(optax.sgd(0.1), cyclax.magnitude_prune(0.3, update_every=1))
  state = tx.init(params)
  updates, state = tx.update(params, state, params)
  report = cyclax.sparsity_report(optax.apply_updates(params, updates))
  k = int(cyclax.num_to_prune(0.3, 63))
  assert k == reference.num_to_prune(0.3, 63)
  np.testing.assert_allclose(float(report["w"]), k / 63, rtol=1e-6)
  np.testing.assert_allclose(float(report["b"]), 0.0)
  np.testing.assert_allclose(float(report["total"]), k / 72, rtol=1e-6)
