"""`reset_regrown_moments`: the plain chain when off; zeroed moments at regrown entries when on."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import cyclax

# Each inner optimizer with an accessor for its per-parameter moment trees, written out by hand.
INNER = {
  "adam": (lambda: optax.adam(0.05), lambda s: [s[0].mu, s[0].nu]),
  "sgd_momentum": (lambda: optax.sgd(0.05, momentum=0.9), lambda s: [s[0].trace]),
  "injected_adamw": (
    lambda: optax.inject_hyperparams(optax.adamw)(learning_rate=0.05),
    lambda s: [s.inner_state[0].mu, s.inner_state[0].nu],
  ),
}


def make_problem():
  k1, k2, kx, ky = jax.random.split(jax.random.key(11), 4)
  params = {
    "hidden": {"kernel": jax.random.normal(k1, (6, 8)), "bias": jnp.zeros(8)},
    "out": jax.random.normal(k2, (8, 2)),
  }
  x = jax.random.normal(kx, (20, 6))
  y = jax.random.normal(ky, (20, 2))

  def loss(p):
    return jnp.mean((jnp.tanh(x @ p["hidden"]["kernel"] + p["hidden"]["bias"]) @ p["out"] - y) ** 2)

  return params, jax.grad(loss)


def prune(cycle_steps=6, update_every=2):
  return cyclax.cyclical_prune(0.8, num_cycles=3, cycle_steps=cycle_steps, update_every=update_every)


def assert_trees_bitwise_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


@pytest.mark.parametrize("name", sorted(INNER))
def test_disabled_is_bitwise_identical_to_the_plain_chain(name):
  make_inner, _ = INNER[name]
  params, grad_fn = make_problem()
  wrapped = cyclax.reset_regrown_moments(make_inner(), prune(), enabled=False)
  plain = optax.chain(make_inner(), prune())

  def step(tx):
    @jax.jit
    def fn(p, s):
      updates, s = tx.update(grad_fn(p), s, p)
      return optax.apply_updates(p, updates), s

    return fn

  step_wrapped, step_plain = step(wrapped), step(plain)
  p1, s1 = params, wrapped.init(params)
  p2, s2 = params, plain.init(params)
  for _ in range(14):
    p1, s1 = step_wrapped(p1, s1)
    p2, s2 = step_plain(p2, s2)
    assert_trees_bitwise_equal(p1, p2)
    assert_trees_bitwise_equal((s1.inner_state, s1.prune_state), s2)


@pytest.mark.parametrize(
  "name,jit", [("adam", False), ("adam", True), ("sgd_momentum", True), ("injected_adamw", True)]
)
def test_enabled_zeroes_moments_exactly_where_masks_regrow(name, jit):
  make_inner, moments_of = INNER[name]
  params, grad_fn = make_problem()
  # Eager steps are slow, so the eager run uses short cycles: cycle 2 starts at step 2 instead of 6.
  steps, cycle_steps, update_every = (7, 6, 2) if jit else (3, 2, 1)
  wrapped = cyclax.reset_regrown_moments(make_inner(), prune(cycle_steps, update_every))
  plain = optax.chain(make_inner(), prune(cycle_steps, update_every))
  wrapped_update = jax.jit(wrapped.update) if jit else wrapped.update
  plain_update = jax.jit(plain.update) if jit else plain.update
  state = wrapped.init(params)
  regrown_total = reset_nonzero = 0
  # The last step starts cycle 2, where the sparsity drops from 0.8 to 0.4.
  for _ in range(steps):
    grads = grad_fn(params)
    updates, new_state = wrapped_update(grads, state, params)
    # Reference: the plain chain from the same state, then zero the moments with NumPy.
    ref_updates, (ref_inner, ref_prune) = plain_update(grads, (state.inner_state, state.prune_state), params)
    assert_trees_bitwise_equal(updates, ref_updates)
    assert_trees_bitwise_equal(new_state.prune_state, ref_prune)
    old_masks = cyclax.get_masks(state)
    new_masks = cyclax.get_masks(new_state)
    regrown = jax.tree.map(lambda o, n: np.asarray(n) & ~np.asarray(o), old_masks, new_masks)
    regrown_total += sum(int(r.sum()) for r in jax.tree.leaves(regrown))
    for got, ref in zip(moments_of(new_state.inner_state), moments_of(ref_inner)):
      at_regrown = jax.tree.map(
        lambda r, m: 0 if r is None else int(np.count_nonzero(np.asarray(m)[r])),
        regrown,
        ref,
        is_leaf=lambda x: x is None,
      )
      reset_nonzero += sum(jax.tree.leaves(at_regrown))
      expected = jax.tree.map(
        lambda r, m: np.asarray(m) if r is None else np.where(r, np.zeros_like(m), np.asarray(m)),
        regrown,
        ref,
        is_leaf=lambda x: x is None,
      )
      assert_trees_bitwise_equal(got, expected)
    # Everything that is not a moment (counts, hyperparameters) is untouched.
    strip = lambda s: [leaf for leaf in jax.tree.leaves(s) if leaf.shape == ()]  # noqa: E731
    assert_trees_bitwise_equal(strip(new_state.inner_state), strip(ref_inner))
    state, params = new_state, optax.apply_updates(params, updates)
  # The reset had something to do: weights did regrow, and their moments were non-zero before.
  assert regrown_total > 0 and reset_nonzero > 0


def test_packed_masks_give_the_same_reset():
  params, grad_fn = make_problem()
  results = []
  for packed in (False, True):
    prune_tx = cyclax.cyclical_prune(0.8, num_cycles=3, cycle_steps=6, update_every=2, packed_masks=packed)
    tx = cyclax.reset_regrown_moments(optax.adam(0.05), prune_tx)
    update = jax.jit(tx.update)
    p, s = params, tx.init(params)
    for _ in range(7):
      updates, s = update(grad_fn(p), s, p)
      p = optax.apply_updates(p, updates)
    results.append((p, s.inner_state))
  assert_trees_bitwise_equal(results[0], results[1])


def test_find_prune_state_and_metrics_work_on_the_wrapper():
  params, _ = make_problem()
  state = cyclax.reset_regrown_moments(optax.adam(0.1), prune()).init(params)
  assert isinstance(state, cyclax.ResetRegrownMomentsState)
  assert int(cyclax.find_prune_state(state).count) == 0
  assert float(cyclax.pruning_metrics(state)["sparsity/total"]) == 0.0


def test_update_without_params_raises():
  params, grad_fn = make_problem()
  tx = cyclax.reset_regrown_moments(optax.adam(0.1), prune())
  with pytest.raises(ValueError, match="params"):
    tx.update(grad_fn(params), tx.init(params))
