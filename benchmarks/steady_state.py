"""What does cyclax cost on a training step between mask refreshes?

Usage:
  python benchmarks/steady_state.py --tree 100m --repeats 15

Times one jitted step ``params, state = step(params, state, grads)`` of
``optax.chain(optax.adamw(1e-3), cyclax.cyclical_prune(...))`` against
``optax.adamw(1e-3)`` alone, params and state donated, with ``update_every``
so large that every timed step is a non-refresh step (it applies the stored
masks: one select per pruned weight). Both are timed in the same run,
alternating step by step.
"""

from __future__ import annotations

import argparse

import _common
import jax
import jax.numpy as jnp
import optax

import cyclax


def make_step(tx):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tree", choices=_common.TREES, default="100m")
  parser.add_argument("--repeats", type=int, default=15)
  args = parser.parse_args()

  grads = _common.make_tree(args.tree, seed=1)
  # Each pruned chain is timed against its own optimizer alone. A refresh runs at
  # count 0 only (the warm-up), so the masks hold 90% sparsity while timed.
  prune = lambda: cyclax.magnitude_prune(0.9, update_every=10**6)
  txs = {
    "adamw": optax.adamw(1e-3),
    "adamw + magnitude_prune": optax.chain(optax.adamw(1e-3), prune()),
    "sgd": optax.sgd(1e-3),
    "sgd + magnitude_prune": optax.chain(optax.sgd(1e-3), prune()),
  }
  runs = {}
  for name, tx in txs.items():
    params = _common.make_tree(args.tree, seed=0)
    runs[name] = [params, tx.init(params), make_step(tx)]

  def call(name):
    run = runs[name]
    run[0], run[1] = run[2](run[0], run[1], grads)
    return run[0]

  # The first step of the pruned chain is its refresh (count 0): the warm-up takes it.
  times = _common.time_interleaved({n: (lambda n=n: call(n)) for n in txs}, args.repeats, warmup=2)
  n = _common.count_params(jax.tree.leaves(grads))
  masks = jax.tree.leaves(cyclax.get_masks(runs["adamw + magnitude_prune"][1]))
  sparsity = float(jnp.mean(jnp.stack([jnp.mean(m) for m in masks])))
  print(f"tree {args.tree}: {n / 1e6:.1f}M params; mean kept fraction of pruned leaves {sparsity:.3f}")
  print(_common.machine())
  print(f"\none jitted step, donated buffers (median [min-max] of {args.repeats} steps, interleaved)")
  rows = [
    [name, _common.fmt_time(t), _common.fmt_ratio(t, times[name.split(" + ")[0]])]
    for name, t in times.items()
  ]
  _common.print_table(["step", "time", "time / same optimizer alone"], rows)


if __name__ == "__main__":
  main()
