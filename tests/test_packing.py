"""Bit-packed masks (`cyclax._packing`) against `numpy.packbits`, and packed vs bool masks in training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cyclax

SHAPES = [(), (1,), (5,), (8,), (13,), (3, 9), (16, 4), (2, 3, 17), (4, 4), (0, 5), (7, 1)]


def packed_axis_reference(shape):
  """The longest axis, the last among equally long ones."""
  if not shape:
    return 0
  return len(shape) - 1 - int(np.argmax(list(reversed(shape))))


def pack_reference(mask):
  """``numpy.packbits`` along the packed axis, bit j of byte w = entry 8w + j."""
  mask = np.asarray(mask)
  ext = mask.reshape(mask.shape or (1,))
  return np.packbits(ext, axis=packed_axis_reference(ext.shape), bitorder="little")


_jit_pack = jax.jit(cyclax.pack_mask)
_jit_unpack = jax.jit(cyclax.unpack_mask)


@pytest.mark.parametrize("jit", [False, True])
def test_pack_equals_numpy_packbits_and_round_trips(jit):
  rng = np.random.default_rng(0)
  pack = _jit_pack if jit else cyclax.pack_mask
  unpack = _jit_unpack if jit else cyclax.unpack_mask
  for shape in SHAPES:
    for density in [0.1, 0.5, 0.9]:
      mask = rng.random(shape) < density
      packed = pack(jnp.asarray(mask))
      assert packed.shape == shape and packed.words.dtype == jnp.uint8
      np.testing.assert_array_equal(np.asarray(packed.words), pack_reference(mask), err_msg=str(shape))
      out = np.asarray(unpack(packed))
      assert out.dtype == np.bool_
      np.testing.assert_array_equal(out, mask)


def test_at_most_one_bit_per_weight_when_the_longest_axis_is_a_multiple_of_8():
  for shape in [(1024, 1024), (3, 3, 64, 128), (768, 3072), (16,), (3, 3, 16, 16)]:
    packed = cyclax.pack_mask(jnp.ones(shape, bool))
    assert packed.words.size * 8 == int(np.prod(shape))
  # Otherwise the overhead is the padding of one axis only.
  for shape in [(13,), (5, 9), (3, 3, 3)]:
    packed = cyclax.pack_mask(jnp.ones(shape, bool))
    axis = packed_axis_reference(shape)
    assert packed.words.size * 8 == int(np.prod(shape)) // shape[axis] * (-(-shape[axis] // 8) * 8)


@st.composite
def _masks(draw):
  shape = tuple(draw(st.lists(st.integers(0, 20), min_size=0, max_size=4)))
  return np.random.default_rng(draw(st.integers(0, 2**16))).random(shape) < draw(st.floats(0.0, 1.0))


@settings(max_examples=15, deadline=None)
@given(_masks())
def test_property_pack_matches_packbits_and_round_trips(mask):
  packed = cyclax.pack_mask(jnp.asarray(mask))
  np.testing.assert_array_equal(np.asarray(packed.words), pack_reference(mask))
  np.testing.assert_array_equal(np.asarray(cyclax.unpack_mask(packed)), mask)


def test_pack_rejects_non_bool():
  with pytest.raises(TypeError, match="`mask` must be a bool array"):
    cyclax.pack_mask(jnp.ones((2, 2)))


# ---------------------------------------------------------------------------
# In the transformation
# ---------------------------------------------------------------------------


def _params():
  rng = np.random.default_rng(4)
  return {
    "w1": jnp.asarray(rng.standard_normal((10, 13)), jnp.float32),
    "w2": jnp.asarray(rng.standard_normal((3, 3, 2, 8)), jnp.bfloat16),
    "b": jnp.asarray(rng.standard_normal(13), jnp.float32),
  }


def _loss(p):
  return sum(jnp.sum(jnp.sin(x.astype(jnp.float32)) ** 2) for x in jax.tree.leaves(p))


def _train(tx, steps, jit):
  params = _params()
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  history = []
  for _ in range(steps):
    updates, state = update(jax.grad(_loss)(params), state, params)
    params = optax.apply_updates(params, updates)
    history.append((params, cyclax.get_masks(state)))
  return history, state


def _assert_same_runs(plain, packed):
  for (p_a, m_a), (p_b, m_b) in zip(plain, packed):
    for a, b in zip(jax.tree.leaves(p_a), jax.tree.leaves(p_b)):
      np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))
    for a, b in zip(jax.tree.leaves(m_a), jax.tree.leaves(m_b)):
      assert b.dtype == np.bool_
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _cyclical(distribution, packed, opt):
  return optax.chain(
    opt,
    cyclax.cyclical_prune(
      0.8, num_cycles=2, cycle_steps=4, update_every=2, distribution=distribution, packed_masks=packed
    ),
  )


@pytest.mark.parametrize("distribution", ["uniform", "global", "erk"])
def test_packed_and_bool_masks_give_bitwise_identical_params(distribution):
  plain, _ = _train(_cyclical(distribution, False, optax.adam(0.05)), 8, jit=True)
  packed, state = _train(_cyclical(distribution, True, optax.adam(0.05)), 8, jit=True)
  _assert_same_runs(plain, packed)
  stored = cyclax.find_prune_state(state).masks
  assert isinstance(stored["w1"], cyclax.PackedMask) and stored["w1"].words.dtype == jnp.uint8
  assert stored["b"] is None


def test_packed_and_bool_masks_identical_without_jit():
  make = lambda packed: optax.chain(
    optax.sgd(0.1), cyclax.magnitude_prune(0.6, update_every=1, packed_masks=packed)
  )
  plain, _ = _train(make(False), 2, jit=False)
  packed, _ = _train(make(True), 2, jit=False)
  _assert_same_runs(plain, packed)


def test_packed_state_avals_are_stable_and_init_accepts_shape_dtype_structs():
  tx = optax.chain(optax.sgd(0.1), cyclax.magnitude_prune(0.5, update_every=1, packed_masks=True))
  params = _params()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  state = tx.init(abstract)
  _, new_state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), state, params)
  assert jax.tree.structure(state) == jax.tree.structure(new_state)
  assert jax.tree.map(jax.typeof, state) == jax.tree.map(jax.typeof, new_state)


def test_packed_masks_must_be_a_bool():
  with pytest.raises(TypeError, match="`packed_masks` must be True or False"):
    cyclax.magnitude_prune(0.5, packed_masks="yes")
