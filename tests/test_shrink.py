"""shrink_dense_stack: removing pruned hidden units keeps the stack's outputs, checked with NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import cyclax


def numpy_forward(layers, x, activation=lambda v: np.maximum(v, 0.0)):
  """The stack in float64: activation between layers, none after the last."""
  h = np.asarray(x, np.float64)
  for i, (kernel, bias) in enumerate(layers):
    h = h @ np.asarray(kernel, np.float64)
    if bias is not None:
      h = h + np.asarray(bias, np.float64)
    if i < len(layers) - 1:
      h = activation(h)
  return h


def _stack(seed, sizes, *, ints=False, bias=True):
  rng = np.random.default_rng(seed)
  draw = (
    (lambda shape: rng.integers(-3, 4, size=shape).astype(np.float32))
    if ints
    else (lambda shape: rng.normal(size=shape).astype(np.float32))
  )
  return [(draw((a, b)), draw((b,)) if bias else None) for a, b in zip(sizes[:-1], sizes[1:])]


def _channel_masks(seed, layers, pruned_fraction):
  """Random whole-column masks (True = kept) for every layer."""
  rng = np.random.default_rng(seed)
  return [np.broadcast_to(rng.random(k.shape[1]) >= pruned_fraction, k.shape) for k, _ in layers]


def _masked(layers, masks):
  return [(np.where(m, k, 0.0), b) for (k, b), m in zip(layers, masks)]


@pytest.mark.parametrize("ints", [True, False])
def test_shrunk_pairs_equal_the_masked_stack_and_drop_exactly_the_pruned_units(ints):
  layers = _stack(0, [12, 16, 10, 9, 5], ints=ints)
  masks = _channel_masks(1, layers, 0.4)
  shrunk = cyclax.shrink_dense_stack([(jnp.asarray(k), jnp.asarray(b)) for k, b in layers], masks)
  x = np.random.default_rng(2).integers(-2, 3, size=(64, 12)).astype(np.float32)
  want = numpy_forward(_masked(layers, masks), x)
  got = numpy_forward(shrunk, x)
  if ints:  # every product and sum is a small integer: exact
    np.testing.assert_array_equal(got, want)
  else:
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # hidden layers keep exactly the units with a kept column; the outputs all stay
  kept = [int(m[0].sum()) for m in masks[:-1]]
  assert [k.shape for k, _ in shrunk] == [(a, b) for a, b in zip([12] + kept, kept + [5])]
  assert [b.shape[0] for _, b in shrunk] == kept + [5]


def test_a_pruned_unit_with_a_positive_bias_is_folded_into_the_next_bias():
  kernel1 = np.array([[1.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], np.float32)  # unit 1's column is pruned
  bias1 = np.array([0.0, 3.0, -0.5], np.float32)  # relu(3) = 3 feeds the next layer
  kernel2 = np.array([[1.0, 0.5], [2.0, -1.0], [-1.0, 1.0]], np.float32)
  bias2 = np.array([0.25, 0.0], np.float32)
  layers = [(kernel1, bias1), (kernel2, bias2)]
  [(k1, b1), (k2, b2)] = cyclax.shrink_dense_stack(layers)
  np.testing.assert_array_equal(np.asarray(b2), bias2 + 3.0 * kernel2[1])
  np.testing.assert_array_equal(np.asarray(k1), kernel1[:, [0, 2]])
  np.testing.assert_array_equal(np.asarray(k2), kernel2[[0, 2]])
  x = np.random.default_rng(3).integers(-3, 4, size=(20, 2)).astype(np.float32)
  np.testing.assert_array_equal(numpy_forward([(k1, b1), (k2, b2)], x), numpy_forward(layers, x))
  # any elementwise activation, e.g. a linear stack or tanh
  for act, np_act in ((None, lambda v: v), (jnp.tanh, np.tanh)):
    shrunk = cyclax.shrink_dense_stack(layers, activation=act)
    np.testing.assert_allclose(
      numpy_forward(shrunk, x, np_act), numpy_forward(layers, x, np_act), rtol=1e-6, atol=1e-6
    )


def test_units_nothing_reads_are_removed_and_a_fold_needs_a_bias():
  layers = _stack(4, [6, 8, 3], ints=True)
  layers[1][0][[2, 5]] = 0.0  # hidden units 2 and 5 feed nothing
  shrunk = cyclax.shrink_dense_stack(layers)
  assert shrunk[0][0].shape == (6, 6) and shrunk[1][0].shape == (6, 3)
  x = np.random.default_rng(5).integers(-2, 3, size=(16, 6)).astype(np.float32)
  np.testing.assert_array_equal(numpy_forward(shrunk, x), numpy_forward(layers, x))
  no_bias = _stack(6, [4, 5, 2], ints=True, bias=False)
  no_bias[0][0][:, 1] = 0.0
  # relu(0) = 0: nothing to fold, so a stack without biases shrinks too
  assert cyclax.shrink_dense_stack(no_bias)[0][0].shape == (4, 4)
  with pytest.raises(ValueError, match="fold.*layer 1"):
    cyclax.shrink_dense_stack(no_bias, activation=jax.nn.sigmoid)


def test_nnx_linear_stack_with_int_keyed_masks_like_an_nnx_list_state():
  """Whole-column masks keyed like the state of an nnx.List shrink nnx layers to the same outputs."""
  layers = nnx.List([nnx.Linear(7, 12, rngs=nnx.Rngs(0)), nnx.Linear(12, 9, rngs=nnx.Rngs(1))])
  layers.append(nnx.Linear(9, 4, rngs=nnx.Rngs(2)))
  # Prune whole columns of the hidden kernels by hand, as a Channel(-1) refresh would.
  rng = np.random.default_rng(7)
  masks = {}
  for i in range(3):
    kernel = layers[i].kernel.get_value()
    cols = rng.random(kernel.shape[1]) >= (0.5 if i < 2 else 0.0)
    masks[i] = {"kernel": np.broadcast_to(cols, kernel.shape), "bias": None}
    layers[i].kernel.set_value(jnp.where(cols, kernel, 0.0))
    layers[i].bias.set_value(jnp.asarray(rng.normal(size=kernel.shape[1]), jnp.float32))
  shrunk = cyclax.shrink_dense_stack(layers, masks)
  assert all(isinstance(layer, nnx.Linear) for layer in shrunk)
  assert [(lay.in_features, lay.out_features) for lay in shrunk] == [
    (7, int(masks[0]["kernel"][0].sum())),
    (int(masks[0]["kernel"][0].sum()), int(masks[1]["kernel"][0].sum())),
    (int(masks[1]["kernel"][0].sum()), 4),
  ]
  x = jnp.asarray(np.random.default_rng(8).normal(size=(32, 7)), jnp.float32)

  def run(stack):
    h = x
    for i, layer in enumerate(stack):
      h = layer(h)
      h = jax.nn.relu(h) if i < len(stack) - 1 else h
    return np.asarray(h)

  np.testing.assert_allclose(run(shrunk), run(layers), rtol=1e-5, atol=1e-5)
  assert layers[0].kernel.get_value().shape == (7, 12)  # the input layers are not modified


def test_masks_from_an_optimizer_state_of_a_pair_stack():
  layers = [(jnp.asarray(k), jnp.asarray(b)) for k, b in _stack(9, [5, 8, 3])]
  tx = optax.chain(optax.sgd(0.0), cyclax.magnitude_prune(0.5, update_every=1))
  state = tx.init(layers)
  zeros = jax.tree.map(jnp.zeros_like, layers)
  updates, state = tx.update(zeros, state, layers)
  pruned = optax.apply_updates(layers, updates)
  shrunk = cyclax.shrink_dense_stack(pruned, state)  # the masks are read from the state
  x = np.random.default_rng(10).normal(size=(8, 5)).astype(np.float32)
  masks = cyclax.get_masks(state)
  want = numpy_forward(_masked([(np.asarray(k), np.asarray(b)) for k, b in pruned], [m[0] for m in masks]), x)
  np.testing.assert_allclose(numpy_forward(shrunk, x), want, rtol=1e-5, atol=1e-5)


def test_bad_inputs_name_the_argument():
  layers = _stack(11, [4, 5, 3])
  with pytest.raises(ValueError, match="one entry per layer"):
    cyclax.shrink_dense_stack(layers, [None])
  with pytest.raises(ValueError, match=r"`masks\[1\]` has shape"):
    cyclax.shrink_dense_stack(layers, [None, np.ones((3, 3), bool)])
  with pytest.raises(ValueError, match=r"`layers\[1\]` takes 4 inputs"):
    cyclax.shrink_dense_stack([layers[0], (np.ones((4, 3)), None)])
  with pytest.raises(TypeError, match=r"`layers\[0\]` must be"):
    cyclax.shrink_dense_stack([np.ones((4, 5))] * 2)
  with pytest.raises(TypeError, match="keyed 0..n-1"):
    cyclax.shrink_dense_stack(layers, {"a": None, "b": None})
