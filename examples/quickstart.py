"""Quickstart: prune a small MLP with cyclical pruning.

Run: python examples/quickstart.py   (needs only cyclax itself: jax and optax)

The model is a plain-JAX MLP (a dict of arrays) trained on a synthetic
classification task. The only pruning-specific line is the last element of the
optax chain. The script prints the kernels' sparsity and the accuracy on
held-out data at the first and last step of every cycle: each cycle after the
first starts at a lower sparsity, so weights pruned in the cycle before can
grow back, and ramps up to the target again.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import cyclax

NUM_CYCLES, CYCLE_STEPS, TARGET = 3, 200, 0.9


def init_mlp(key: jax.Array, sizes=(32, 256, 256, 10)) -> dict:
  params = {}
  for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
    key, sub = jax.random.split(key)
    params[f"dense{i}"] = {
      "kernel": jax.random.normal(sub, (n_in, n_out)) * jnp.sqrt(2.0 / n_in),
      "bias": jnp.zeros(n_out),
    }
  return params


def forward(params: dict, x: jax.Array) -> jax.Array:
  layers = [params[k] for k in sorted(params)]
  for layer in layers[:-1]:
    x = jax.nn.relu(x @ layer["kernel"] + layer["bias"])
  return x @ layers[-1]["kernel"] + layers[-1]["bias"]


def make_data(key: jax.Array, n: int):
  """Inputs and labels of a fixed nonlinear teacher; ``key`` picks the inputs."""
  x = jax.random.normal(key, (n, 32))
  teacher = jax.random.normal(jax.random.key(0), (32, 10))
  return x, jnp.argmax(x @ teacher + 0.5 * jnp.sin(3 * x[:, :10]), axis=-1)


def main() -> None:
  x, y = make_data(jax.random.key(1), 4096)
  x_test, y_test = make_data(jax.random.key(3), 1024)  # held out: never trained on
  params = init_mlp(jax.random.key(0))
  # The learning rate restarts with every pruning cycle, as in the paper.
  lr = cyclax.periodic(optax.cosine_decay_schedule(3e-3, CYCLE_STEPS), CYCLE_STEPS)
  tx = optax.chain(
    optax.adamw(lr),
    cyclax.cyclical_prune(TARGET, num_cycles=NUM_CYCLES, cycle_steps=CYCLE_STEPS, update_every=20),
  )
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, xb, yb):
    loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(forward(p, xb), yb).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  print(f"{'step':>5} {'cycle':>5} {'kernel sparsity':>16} {'test accuracy':>14}")
  key = jax.random.key(2)
  for t in range(NUM_CYCLES * CYCLE_STEPS):
    key, sub = jax.random.split(key)
    idx = jax.random.randint(sub, (128,), 0, x.shape[0])
    params, opt_state = step(params, opt_state, x[idx], y[idx])
    cycle, within = divmod(t, CYCLE_STEPS)
    if within in (0, CYCLE_STEPS - 1):  # the first and the last step of a cycle
      kernels = float(cyclax.sparsity_report(params, filter=cyclax.default_filter)["total"])
      acc = float(jnp.mean(jnp.argmax(forward(params, x_test), -1) == y_test))
      note = "  <- cycle start" if within == 0 else ""
      print(f"{t + 1:5d} {cycle + 1:5d} {kernels:16.3f} {acc:14.3f}{note}")

  print("\nper-leaf sparsity (kernels pruned to the target, biases dense):")
  for name, value in cyclax.sparsity_report(params).items():
    print(f"  {name:16s} {float(value):.4f}")


if __name__ == "__main__":
  main()
