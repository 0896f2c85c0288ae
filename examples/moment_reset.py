"""Does zeroing the Adam moments of regrown weights help? Cyclical pruning of an MLP on digits.

Trains the same MLP on scikit-learn's 8x8 digits with
``optax.chain(optax.adam(lr), cyclax.cyclical_prune(...))`` and with
``cyclax.reset_regrown_moments(optax.adam(lr), cyclax.cyclical_prune(...))`` over several seeds,
and prints test accuracy, test loss and the regrown fraction at each cycle start (mean and
standard deviation over seeds).

  python examples/moment_reset.py            # 8 seeds, 3 cycles of 400 steps
  python examples/moment_reset.py --quick    # 2 seeds, 3 cycles of 60 steps
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import cyclax


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(256)(x))
    x = nn.relu(nn.Dense(128)(x))
    return nn.Dense(10)(x)


def load_data():
  digits = load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  return train_test_split(x, digits.target, test_size=0.25, random_state=0, stratify=digits.target)


def make_tx(reset: bool, target: float, num_cycles: int, cycle_steps: int) -> optax.GradientTransformation:
  lr = cyclax.periodic(optax.cosine_decay_schedule(3e-3, cycle_steps), cycle_steps)
  prune = cyclax.cyclical_prune(
    target, num_cycles=num_cycles, cycle_steps=cycle_steps, update_every=10, track_regrowth=True
  )
  return cyclax.reset_regrown_moments(optax.adam(lr), prune, enabled=reset)


def make_step(model: MLP, reset: bool, args):
  """The transformation and its jitted training step (compiled once for every seed)."""
  tx = make_tx(reset, args.target, args.num_cycles, args.cycle_steps)

  def loss_fn(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()

  @jax.jit
  def step(p, s, x, y):
    updates, s = tx.update(jax.grad(loss_fn)(p, x, y), s, p)
    return optax.apply_updates(p, updates), s

  return tx, step


def train(seed: int, model: MLP, tx: optax.GradientTransformation, step, data, args) -> dict[str, float]:
  x_train, x_test, y_train, y_test = data
  params = model.init(jax.random.key(seed), x_train[:1])
  state = tx.init(params)

  rng = np.random.default_rng(seed)
  regrown = []
  total_steps = args.num_cycles * args.cycle_steps
  for t in range(total_steps):
    batch = rng.choice(len(x_train), size=128, replace=False)
    params, state = step(params, state, x_train[batch], y_train[batch])
    if t > 0 and t % args.cycle_steps == 0:  # the refresh that opens a new cycle
      regrown.append(float(cyclax.pruning_metrics(state)["regrown/total"]))
  logits = model.apply(params, x_test)
  metrics = cyclax.pruning_metrics(state, params)
  return {
    "test_accuracy": float(jnp.mean(jnp.argmax(logits, -1) == y_test)),
    "test_loss": float(optax.softmax_cross_entropy_with_integer_labels(logits, y_test).mean()),
    "sparsity": float(metrics["sparsity/total"]),
    "regrown_at_cycle_starts": regrown,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="2 seeds and short cycles (under a minute)")
  args = parser.parse_args()
  args.target, args.num_cycles = 0.95, 3
  args.cycle_steps = 60 if args.quick else 400
  seeds = range(2 if args.quick else 8)
  data = load_data()
  print(
    f"digits MLP 64-256-128-10, adam(3e-3, cosine restarted per cycle), cyclical_prune(target={args.target}, "
    f"num_cycles={args.num_cycles}, cycle_steps={args.cycle_steps}, update_every=10), seeds={len(seeds)}"
  )
  print("| moments of regrown weights | test accuracy | test loss | sparsity | regrown at cycle starts |")
  print("| --- | --- | --- | --- | --- |")
  accuracy = {}
  for reset in (False, True):
    model = MLP()
    tx, step = make_step(model, reset, args)
    runs = [train(seed, model, tx, step, data, args) for seed in seeds]
    accuracy[reset] = np.array([r["test_accuracy"] for r in runs])
    acc = np.array([r["test_accuracy"] for r in runs])
    loss = np.array([r["test_loss"] for r in runs])
    regrown = np.array([r["regrown_at_cycle_starts"] for r in runs])
    label = "zeroed (reset_regrown_moments)" if reset else "kept (plain chain)"
    regrown_text = ", ".join(f"{m:.3f}" for m in regrown.mean(axis=0))
    print(
      f"| {label} | {acc.mean():.4f} ± {acc.std(ddof=1):.4f} | {loss.mean():.4f} ± {loss.std(ddof=1):.4f} "
      f"| {runs[0]['sparsity']:.3f} | {regrown_text} |"
    )
  # Same seed, same init and batches: the paired difference is the fair comparison.
  diff = accuracy[True] - accuracy[False]
  print(
    f"paired test-accuracy difference (zeroed - kept): {diff.mean():+.4f} ± {diff.std(ddof=1):.4f} (std over "
    f"seeds), zeroed better in {int(np.sum(diff > 0))}/{len(diff)} seeds, worse in {int(np.sum(diff < 0))}"
  )


if __name__ == "__main__":
  main()
