"""Pieces of a Flax NNX training run shared by the examples: the MLP, the digits split, one step.

Also the settings the two pruning studies (``digits.py``, ``mnist1d.py``) share.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import cyclax


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """The settings the pruning studies share; each study's ``Config`` adds its own sizes.

  Both refresh the masks every ``update_every`` steps, ramp the sparsity over ``ramp_fraction``
  of each cycle (or of the budget), and run SGD with this peak learning rate and momentum.
  """

  update_every: int = 20
  ramp_fraction: float = 0.8
  sgd_learning_rate: float = 0.1
  momentum: float = 0.9


# What every study's ``--quick`` smoke run shares: two seeds, a short dense phase, frequent refreshes, SGD.
QUICK_SIZES = {"seeds": 2, "dense_steps": 100, "update_every": 10, "optimizers": ("sgd",)}


class MLP(nnx.Module):
  """Dense layers of the given sizes (e.g. ``(64, 128, 128, 10)``) with ReLU between them.

  The input is flattened to ``(batch, -1)``; ``layers`` is the stack of ``nnx.Linear``.
  """

  def __init__(self, sizes: Sequence[int], rngs: nnx.Rngs):
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for layer in self.layers[:-1]:
      x = jax.nn.relu(layer(x))
    return self.layers[-1](x)


def load_digits_split():
  """scikit-learn's digits split 75/25 (stratified, fixed seed), pixels scaled to [0, 1]."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  digits = load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  x_train, x_test, y_train, y_test = train_test_split(
    x, digits.target, test_size=0.25, random_state=0, stratify=digits.target
  )
  return jnp.asarray(x_train), jnp.asarray(y_train), jnp.asarray(x_test), jnp.asarray(y_test)


def minibatch_step(
  graphdef, tx: optax.GradientTransformation, x_train: jax.Array, y_train: jax.Array, batch_size: int
) -> Callable:
  """A ``lax.scan`` body ``((params, opt_state), key) -> ((params, opt_state), None)``.

  One step of softmax cross-entropy on a batch of ``batch_size`` training examples
  drawn with replacement from ``key``.
  """

  def loss_fn(p, xb, yb):
    logits = nnx.merge(graphdef, p)(xb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  def step(carry, step_key):
    p, state = carry
    idx = jax.random.randint(step_key, (batch_size,), 0, x_train.shape[0])
    grads = jax.grad(loss_fn)(p, x_train[idx], y_train[idx])
    updates, state = tx.update(grads, state, p)
    return (optax.apply_updates(p, updates), state), None

  return step


def accuracy(graphdef, params, x: jax.Array, y: jax.Array) -> jax.Array:
  """Fraction of ``x`` whose arg-max logit is the label ``y``."""
  return jnp.mean(jnp.argmax(nnx.merge(graphdef, params)(x), -1) == y)


def pruning_masks(state) -> list:
  """The keep-masks of the pruned leaves of an optimizer state, in leaf order."""
  return [m for m in jax.tree.leaves(cyclax.get_masks(state)) if m is not None]


def measured_sparsity(batched_params) -> np.ndarray:
  """Fraction of zeros over the kernels of a batch of param trees (leading axis: the batch)."""
  report = jax.vmap(lambda p: cyclax.sparsity_report(p, filter=cyclax.default_filter)["total"])
  return np.asarray(report(batched_params), np.float64)
