"""`cyclax.chain` against `optax.chain`: the same state and the same updates, bit for bit."""

import jax
import jax.numpy as jnp
import optax
import pytest
import reference

import cyclax


def _params(seed=0):
  return reference.random_tree(
    seed, {"w": ((12, 8), jnp.float32), "v": ((4, 8), jnp.bfloat16), "b": (8, jnp.float32)}
  )


def _grads(params, t):
  return reference.random_tree(500 + t, {k: (v.shape, v.dtype) for k, v in params.items()})


def _run(tx, params, num_steps):
  return reference.run_history(tx, params, num_steps, _grads, donate=True)


CASES = {
  "adam uniform": (lambda: optax.adam(0.05), {}),
  "sgd momentum global": (lambda: optax.sgd(0.1, momentum=0.9), {"distribution": "global"}),
  "adamw packed regrowth": (lambda: optax.adamw(0.05), {"packed_masks": True, "track_regrowth": True}),
  "clip adam nm": (lambda: optax.chain(optax.clip(0.5), optax.adam(0.05)), {"pattern": (2, 4)}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cyclax_chain_equals_optax_chain_bit_for_bit(case):
  make_opt, kwargs = CASES[case]
  target = 0.5 if "pattern" in kwargs else 0.8
  prune = cyclax.cyclical_prune(target, num_cycles=3, cycle_steps=7, update_every=3, **kwargs)
  params = _params(len(case))
  plain = _run(optax.chain(make_opt(), prune), params, 22)
  fast = _run(cyclax.chain(make_opt(), prune), params, 22)
  for a, b in zip(plain, fast):
    reference.assert_trees_bitwise_equal(a, b)


def test_static_flag_passes_through_and_state_is_optax_chains():
  prune = cyclax.magnitude_prune(0.5, update_every=10)
  params = _params(1)
  fast, plain = cyclax.chain(optax.sgd(0.1), prune), optax.chain(optax.sgd(0.1), prune)
  state = fast.init(params)
  assert jax.tree.structure(state) == jax.tree.structure(plain.init(params))
  grads = _grads(params, 0)
  for flag in (True, False, None):
    a = fast.update(grads, state, params, refresh_masks=flag)
    b = plain.update(grads, state, params, refresh_masks=flag)
    reference.assert_trees_bitwise_equal(a, b)


@pytest.mark.parametrize(
  "last", [optax.sgd(0.1), optax.inject_hyperparams(cyclax.magnitude_prune)(sparsity=0.5)]
)
def test_last_transformation_must_be_a_cyclax_pruning_transformation(last):
  with pytest.raises(TypeError, match="last transformation of cyclax.chain"):
    cyclax.chain(optax.adam(1e-3), last)
