"""What does cyclax cost on a training step between mask refreshes?

Usage:
  python benchmarks/steady_state.py --tree 100m --repeats 15

Times one jitted step ``params, state = step(params, state, grads)`` of
``optax.chain(optax.adamw(1e-3), cyclax.cyclical_prune(...))`` against
``optax.adamw(1e-3)`` alone, params and state donated, with ``update_every``
so large that every timed step is a non-refresh step (it applies the stored
masks: one select per pruned weight). Both are timed in the same run,
alternating step by step.

A third row per optimizer, "+ update read by a cond", is the floor of any
single-program design that can refresh masks: a transformation that returns
the update unchanged but hands it to a ``lax.cond`` whose branch (never taken
here) reduces it. A conditional's operands must be buffers, so XLA has to write
the update to memory on every step; cyclax pays that same write.
"""

from __future__ import annotations

import argparse

import _common
import jax
import jax.numpy as jnp
import optax
from jax import lax

import cyclax


def update_read_by_cond(every: int = 10**6) -> optax.GradientTransformation:
  """Passes updates through; a never-taken cond branch reads them (the floor)."""

  def init(params):
    del params
    return jnp.zeros([], jnp.int32), jnp.zeros([], jnp.float32)

  def update(updates, state, params=None):
    del params
    count, _ = state
    total = lax.cond(
      count % every == 1,
      lambda: sum(jnp.sum(u) for u in jax.tree.leaves(updates)),
      lambda: jnp.zeros([], jnp.float32),
    )
    return updates, (count + 1, total)

  return optax.GradientTransformation(init, update)


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
    "adamw + update read by a cond": optax.chain(optax.adamw(1e-3), update_read_by_cond()),
    "sgd": optax.sgd(1e-3),
    "sgd + magnitude_prune": optax.chain(optax.sgd(1e-3), prune()),
    "sgd + update read by a cond": optax.chain(optax.sgd(1e-3), update_read_by_cond()),
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
  rows = []
  for name, t in times.items():
    opt = name.split(" + ")[0]
    floor = times.get(f"{opt} + update read by a cond")
    vs_floor = _common.fmt_ratio(t, floor) if name == f"{opt} + magnitude_prune" else ""
    rows.append([name, _common.fmt_time(t), _common.fmt_ratio(t, times[opt]), vs_floor])
  _common.print_table(["step", "time", "time / same optimizer alone", "time / cond floor"], rows)


if __name__ == "__main__":
  main()
