"""Quickstart: prune a small MLP with cyclical pruning and print per-leaf sparsity.

Run: python examples/quickstart.py

The model is a plain-JAX MLP (a dict of arrays) trained on a synthetic
classification task. The only pruning-specific line is the last element of the
optax chain.
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


def make_data(key: jax.Array, n: int = 4096):
  k1, k2 = jax.random.split(key)
  x = jax.random.normal(k1, (n, 32))
  teacher = jax.random.normal(k2, (32, 10))
  return x, jnp.argmax(x @ teacher + 0.5 * jnp.sin(3 * x[:, :10]), axis=-1)


def main() -> None:
  x, y = make_data(jax.random.key(1))
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
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  key = jax.random.key(2)
  for t in range(NUM_CYCLES * CYCLE_STEPS):
    key, sub = jax.random.split(key)
    idx = jax.random.randint(sub, (128,), 0, x.shape[0])
    params, opt_state, loss = step(params, opt_state, x[idx], y[idx])
    if (t + 1) % CYCLE_STEPS == 0:
      acc = float(jnp.mean(jnp.argmax(forward(params, x), -1) == y))
      total = float(cyclax.sparsity_report(params)["total"])
      print(
        f"end of cycle {(t + 1) // CYCLE_STEPS}: loss {float(loss):.3f}  acc {acc:.3f}  sparsity {total:.3f}"
      )

  print("\nper-leaf sparsity (kernels pruned to the target, biases dense):")
  for name, value in cyclax.sparsity_report(params).items():
    print(f"  {name:16s} {float(value):.4f}")


if __name__ == "__main__":
  main()
