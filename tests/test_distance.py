"""`mask_distance` against the Jaccard distance of Python sets of kept (leaf, index) pairs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference

import cyclax

SHAPES = {"dense1": (7, 5), "dense2": (5, 3), "conv": (2, 3, 4)}


def kept_set(masks: dict) -> set:
  """The kept entries of a dict of bool arrays, as a set of (leaf, flat index)."""
  return {(name, int(i)) for name, m in masks.items() if m is not None for i in np.flatnonzero(np.asarray(m))}


def jaccard_distance(a: set, b: set) -> float:
  union = a | b
  return 0.0 if not union else 1.0 - len(a & b) / len(union)


def random_masks(rng: np.random.Generator, density: float) -> dict:
  return {name: rng.random(shape) < density for name, shape in SHAPES.items()}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("densities", [(0.5, 0.5), (0.1, 0.9), (0.02, 0.03), (1.0, 0.3)])
def test_mask_distance_equals_jaccard_distance_of_kept_sets(seed, densities):
  rng = np.random.default_rng(seed)
  a, b = random_masks(rng, densities[0]), random_masks(rng, densities[1])
  a["bias"] = b["bias"] = None  # a dense leaf counts in neither set
  expected = jaccard_distance(kept_set(a), kept_set(b))
  to_jax = lambda t: {k: None if v is None else jnp.asarray(v) for k, v in t.items()}
  got = cyclax.mask_distance(to_jax(a), to_jax(b))
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(float(got), expected, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(float(jax.jit(cyclax.mask_distance)(to_jax(a), to_jax(b))), expected, rtol=1e-6)


def test_mask_distance_edge_cases():
  rng = np.random.default_rng(3)
  a = {k: jnp.asarray(v) for k, v in random_masks(rng, 0.4).items()}
  empty = {k: jnp.zeros(s, bool) for k, s in SHAPES.items()}
  complement = jax.tree.map(jnp.logical_not, a)
  assert float(cyclax.mask_distance(a, a)) == 0.0
  assert float(cyclax.mask_distance(empty, empty)) == 0.0  # two empty sets
  assert float(cyclax.mask_distance(a, empty)) == 1.0
  assert float(cyclax.mask_distance(a, complement)) == 1.0
  # Symmetric.
  b = {k: jnp.asarray(v) for k, v in random_masks(rng, 0.7).items()}
  assert float(cyclax.mask_distance(a, b)) == float(cyclax.mask_distance(b, a))


def test_mask_distance_pools_all_leaves_rather_than_averaging_them():
  # One leaf identical and large, one leaf disjoint and small: pooled, the distance is small.
  a = {"big": jnp.ones((10, 10), bool), "small": jnp.array([True, False])}
  b = {"big": jnp.ones((10, 10), bool), "small": jnp.array([False, True])}
  expected = jaccard_distance(kept_set(a), kept_set(b))
  assert expected == pytest.approx(1 - 100 / 102)
  np.testing.assert_allclose(float(cyclax.mask_distance(a, b)), expected, rtol=1e-6)


def test_mask_distance_vmaps_over_a_batch_of_masks():
  rng = np.random.default_rng(11)
  batch_a = [random_masks(rng, 0.3) for _ in range(4)]
  batch_b = [random_masks(rng, 0.6) for _ in range(4)]
  stack = lambda batch: {k: jnp.asarray(np.stack([m[k] for m in batch])) for k in SHAPES}
  got = jax.vmap(cyclax.mask_distance)(stack(batch_a), stack(batch_b))
  expected = [jaccard_distance(kept_set(x), kept_set(y)) for x, y in zip(batch_a, batch_b)]
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6)


def _pruning_run(packed_masks: bool):
  """States of a cyclical pruning run after 6 and after 20 Adam steps."""
  params = {
    "l1": {"kernel": jax.random.normal(jax.random.key(0), (8, 6)), "bias": jnp.zeros(6)},
    "l2": {"kernel": jax.random.normal(jax.random.key(1), (6, 4)), "bias": jnp.zeros(4)},
  }
  loss = reference.tanh_regression_loss(("l1", "l2"), 2, 3, num_examples=32, sizes=(8, 4))
  tx = optax.chain(
    optax.adam(0.1),
    cyclax.cyclical_prune(0.8, num_cycles=2, cycle_steps=10, update_every=2, packed_masks=packed_masks),
  )
  state = tx.init(params)
  states = []
  for t in range(20):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
    if t in (5, 19):
      states.append(state)
  return states


@pytest.mark.parametrize("packed_masks", [False, True])
def test_mask_distance_reads_optimizer_states(packed_masks):
  early, late = _pruning_run(packed_masks)
  masks_early, masks_late = cyclax.get_masks(early), cyclax.get_masks(late)
  flat = lambda masks: {k: masks[k]["kernel"] for k in ("l1", "l2")}
  expected = jaccard_distance(kept_set(flat(masks_early)), kept_set(flat(masks_late)))
  assert expected > 0  # the masks moved between the two states
  np.testing.assert_allclose(float(cyclax.mask_distance(early, late)), expected, rtol=1e-6)
  np.testing.assert_allclose(float(cyclax.mask_distance(early, masks_late)), expected, rtol=1e-6)
  # The raw (possibly packed) masks stored in the state work too.
  raw = cyclax.find_prune_state(late).masks
  np.testing.assert_allclose(float(cyclax.mask_distance(masks_early, raw)), expected, rtol=1e-6)


@pytest.mark.parametrize(
  "a, b, match",
  [
    ({"w": jnp.ones(3, bool)}, {"v": jnp.ones(3, bool)}, "same params tree"),
    (
      {"w": jnp.ones(3, bool), "b": None},
      {"w": jnp.ones(3, bool), "b": jnp.ones(2, bool)},
      "'b' is pruned only",
    ),
    ({"w": jnp.ones(3, bool)}, {"w": jnp.ones(4, bool)}, "'w' has shape"),
    ({"w": jnp.ones(3)}, {"w": jnp.ones(3, bool)}, "`a` leaf 'w' must be a bool keep-mask"),
  ],
)
def test_mask_distance_bad_input_raises_value_error(a, b, match):
  with pytest.raises(ValueError, match=match):
    cyclax.mask_distance(a, b)
