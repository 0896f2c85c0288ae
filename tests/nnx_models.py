"""Flax NNX models shared by the tests that need flax (`reference.py` stays free of flax)."""

from flax import nnx


class MLP(nnx.Module):
  """``Linear(6, 9)``, then ``activation``, then ``Linear(9, 3)``: two kernels to prune, two dense biases."""

  def __init__(self, rngs, activation=nnx.relu):
    self.hidden = nnx.Linear(6, 9, rngs=rngs)
    self.out = nnx.Linear(9, 3, rngs=rngs)
    self.activation = activation

  def __call__(self, x):
    return self.out(self.activation(self.hidden(x)))
