"""N:M structured sparsity: the group kernel and the `pattern` option of the transformations."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference
from hypothesis import given, settings
from hypothesis import strategies as st

import cyclax


def random_with_ties(seed, shape, dtype):
  rng = np.random.default_rng(seed)
  # Few distinct magnitudes and both signs: many ties inside groups, and exact zeros.
  x = rng.integers(-3, 4, size=shape).astype(np.float64) * 0.5
  return jnp.asarray(x, dtype)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize(
  "shape,pattern,axis,sparsity",
  [
    ((8, 6), (2, 4), -2, 0.5),
    ((8, 6), (2, 4), -2, 0.2),
    ((3, 16), (1, 4), -1, 0.75),
    ((16, 3, 2), (4, 8), 0, 0.3),
    ((2, 9, 5), (2, 3), 1, 0.6),
  ],
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_nm_mask_matches_numpy_reference_with_ties(shape, pattern, axis, sparsity, dtype, jit):
  x = random_with_ties(sum(shape), shape, dtype)
  fn = lambda v, s: cyclax.nm_mask(v, s, pattern, axis=axis)
  if jit:
    fn = jax.jit(fn)
  got = np.asarray(fn(x, jnp.float32(sparsity)))
  np.testing.assert_array_equal(got, reference.nm_keep_mask(np.asarray(x), sparsity, *pattern, axis))


def test_nm_mask_keeps_nan_and_counts_exactly():
  x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
  x[1, 0] = x[5, 2] = np.nan
  got = np.asarray(cyclax.nm_mask(jnp.asarray(x), 0.5, (2, 4)))
  assert got[1, 0] and got[5, 2]
  np.testing.assert_array_equal(got, reference.nm_keep_mask(x, 0.5, 2, 4, -2))


@settings(max_examples=25, deadline=None)
@given(
  groups=st.integers(1, 4),
  other=st.integers(1, 5),
  pattern=st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 8), (4, 8), (2, 3)]),
  sparsity=st.floats(0.0, 0.99),
  seed=st.integers(0, 2**16),
)
def test_nm_mask_property_every_group_keeps_the_rounded_count(groups, other, pattern, sparsity, seed):
  n, m = pattern
  x = np.random.default_rng(seed).normal(size=(groups * m, other)).astype(np.float32)
  got = np.asarray(jax.jit(cyclax.nm_mask, static_argnums=(2,))(jnp.asarray(x), sparsity, pattern))
  np.testing.assert_array_equal(got, reference.nm_keep_mask(x, sparsity, n, m, -2))
  kept = got.reshape(groups, m, other).sum(axis=1)
  assert np.all(kept == max(n, m - reference.num_to_prune(sparsity, m)))


def _train(tx, params, steps, seed=0):
  """SGD on a random quadratic; returns (params, masks) after every step."""
  target = jax.tree.map(lambda p: jax.random.normal(jax.random.key(seed), p.shape, p.dtype), params)
  grad_fn = jax.grad(
    lambda p: sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(target)))
  )

  @jax.jit
  def step(p, s):
    updates, s = tx.update(grad_fn(p), s, p)
    return optax.apply_updates(p, updates), s

  state = tx.init(params)
  history = []
  for _ in range(steps):
    params, state = step(params, state)
    history.append((params, cyclax.get_masks(state)))
  return history


def test_cyclical_prune_with_pattern_reaches_exactly_n_of_m_at_the_target():
  key = jax.random.key(1)
  params = {"dense": {"kernel": jax.random.normal(key, (16, 6)), "bias": jnp.ones(6)}}
  tx = optax.chain(
    optax.sgd(0.05),
    cyclax.cyclical_prune(0.5, num_cycles=2, cycle_steps=10, update_every=2, pattern=(2, 4)),
  )
  history = _train(tx, params, 20)
  for t, (p, masks) in enumerate(history):
    level = reference.cyclical_sparsity(t - t % 2, 0.5, 2, 10, 0.25, 0.8)
    expected_keep = max(2, 4 - reference.num_to_prune(level, 4))
    kernel = np.asarray(p["dense"]["kernel"])
    kept = (kernel != 0).reshape(4, 4, 6).sum(axis=1)
    assert np.all(kept == expected_keep), t
    np.testing.assert_array_equal(np.asarray(masks["dense"]["kernel"]), kernel != 0)
    assert masks["dense"]["bias"] is None
  # The end of each cycle is the target: exactly 2 of every 4 inputs per output.
  for t in (9, 19):
    kept = (np.asarray(history[t][0]["dense"]["kernel"]) != 0).reshape(4, 4, 6).sum(axis=1)
    assert np.all(kept == 2)


@pytest.mark.parametrize("jit", [False, True])
def test_pattern_masks_equal_the_reference_on_the_candidate(jit):
  key = jax.random.key(2)
  params = {"w": jax.random.normal(key, (6, 8))}
  grads = {"w": jax.random.normal(jax.random.key(3), (6, 8))}
  tx = optax.chain(
    optax.sgd(0.3), cyclax.magnitude_prune(0.5, update_every=1, pattern=(2, 4), pattern_axis=1)
  )
  update = jax.jit(tx.update) if jit else tx.update
  updates, state = update(grads, tx.init(params), params)
  candidate = np.asarray(params["w"]) - np.float32(0.3) * np.asarray(grads["w"])
  expected = reference.nm_keep_mask(candidate, 0.5, 2, 4, 1)
  np.testing.assert_array_equal(np.asarray(cyclax.get_masks(state)["w"]), expected)
  new = np.asarray(optax.apply_updates(params, updates)["w"])
  np.testing.assert_array_equal(new, np.where(expected, candidate, 0.0).astype(np.float32))


def test_pattern_state_and_default_state_have_the_same_structure():
  params = {"w": jnp.ones((8, 4))}
  plain = cyclax.magnitude_prune(0.5).init(params)
  patterned = cyclax.magnitude_prune(0.5, pattern=(2, 4)).init(params)
  assert jax.tree.structure(plain) == jax.tree.structure(patterned)


def test_pattern_axis_not_divisible_raises_at_init_naming_the_leaf():
  tx = cyclax.magnitude_prune(0.5, pattern=(2, 4))
  with pytest.raises(ValueError, match=r"leaf 'layer/kernel'.*multiple of 4, got 6"):
    tx.init({"layer": {"kernel": jnp.ones((6, 8)), "bias": jnp.ones(8)}})
  with pytest.raises(ValueError, match="pattern_axis"):
    cyclax.magnitude_prune(0.5, pattern=(2, 4), pattern_axis=2).init({"w": jnp.ones((4, 4))})


@pytest.mark.parametrize("pattern", [(0, 4), (5, 4), (2, -4)])
def test_pattern_out_of_range_raises_value_error(pattern):
  with pytest.raises(ValueError, match="pattern"):
    cyclax.magnitude_prune(0.5, pattern=pattern)


@pytest.mark.parametrize("pattern", [2, (2.0, 4), (2, 4, 8), "2:4"])
def test_pattern_of_wrong_type_raises_type_error(pattern):
  with pytest.raises(TypeError, match="pattern"):
    cyclax.magnitude_prune(0.5, pattern=pattern)


def test_sparsity_above_the_pattern_raises():
  with pytest.raises(ValueError, match="target_sparsity"):
    cyclax.cyclical_prune(0.9, num_cycles=2, cycle_steps=10, pattern=(2, 4))
  with pytest.raises(ValueError, match="sparsity"):
    cyclax.magnitude_prune(0.8, pattern=(1, 2))
  cyclax.cyclical_prune(1 - 2 / 3, num_cycles=2, cycle_steps=10, pattern=(2, 3))  # exactly 2:3 is fine


def test_pattern_under_inject_hyperparams_with_traced_sparsity():
  params = {"w": jax.random.normal(jax.random.key(5), (8, 4))}
  grads = {"w": jax.random.normal(jax.random.key(6), (8, 4))}
  inject = optax.inject_hyperparams(cyclax.magnitude_prune, static_args=("pattern_axis",))
  tx = optax.chain(optax.sgd(0.1), inject(sparsity=0.3, update_every=1, pattern=(2, 4), pattern_axis=-1))
  state = tx.init(params)
  state[1].hyperparams["sparsity"] = jnp.asarray(0.5)  # changed after init, seen only as a traced value
  updates, state = jax.jit(tx.update)(grads, state, params)
  candidate = np.asarray(params["w"]) - np.float32(0.1) * np.asarray(grads["w"])
  np.testing.assert_array_equal(
    np.asarray(cyclax.get_masks(state)["w"]), reference.nm_keep_mask(candidate, 0.5, 2, 4, -1)
  )
  with pytest.raises(TypeError, match="static_args"):
    optax.inject_hyperparams(cyclax.magnitude_prune)(sparsity=0.5, pattern=(2, 4), pattern_axis=-2).init(
      params
    )
