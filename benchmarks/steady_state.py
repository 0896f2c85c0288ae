"""What does cyclax cost on a training step between mask refreshes?

Usage:
  python benchmarks/steady_state.py --tree 100m --repeats 15

Times one jitted step ``params, state = step(params, state, grads)`` (with
``--with-grads``: the gradients of a stand-in loss, every kernel applied to a
batch of 8 inputs, are computed inside the step) of
``optax.chain(optax.adamw(1e-3), cyclax.magnitude_prune(0.9, update_every=10**6))``
against ``optax.adamw(1e-3)`` alone, and the same for ``optax.sgd``, params and
state donated. ``update_every`` is so large that every timed step is a
non-refresh step (it applies the stored masks: one select per pruned weight).
All are timed in the same run, alternating step by step.

A third row per optimizer, "+ update read by a cond", is the floor of any
single-program design that can refresh masks: a transformation that returns
the update unchanged but hands it to a ``lax.cond`` whose branch (never taken
here) reduces it. A conditional's operands must be buffers, so XLA has to write
the update to memory on every step; cyclax pays that same write.
"""

from __future__ import annotations

import argparse
import resource

import _common
import jax
import jax.numpy as jnp
import numpy as np
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


def loss(params, inputs):
  """A stand-in training loss: every kernel maps its own batch of 8 inputs; norms are decayed."""
  total = jnp.zeros([], jnp.float32)
  for name, w in params.items():
    if w.ndim >= 2:
      total = total + jnp.mean(jnp.square(inputs[name] @ w))
    else:
      total = total + 1e-3 * jnp.sum(jnp.square(w))
  return total


def make_step(tx, with_grads: bool):
  def step(params, state, grads):
    if with_grads:  # ``grads`` holds the loss inputs; gradients are computed in the step
      grads = jax.grad(loss)(params, grads)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tree", choices=_common.TREES, default="100m")
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument(
    "--with-grads",
    action="store_true",
    help="compute the gradients inside the step (forward and backward of a stand-in loss)",
  )
  args = parser.parse_args()

  grads = _common.make_tree(args.tree, seed=1)
  if args.with_grads:
    keys = jax.random.split(jax.random.key(2), len(grads))
    grads = {
      n: jax.random.normal(k, (8, g.shape[0])) for k, (n, g) in zip(keys, grads.items()) if g.ndim >= 2
    }
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
    runs[name] = [params, tx.init(params), make_step(tx, args.with_grads)]

  faults = {name: [] for name in txs}

  def call(name):
    # Minor page faults of the process over one finished step: memory the step
    # touches for the first time (freshly mapped by the allocator).
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    run = runs[name]
    run[0], run[1] = run[2](run[0], run[1], grads)
    jax.block_until_ready(run[0])
    faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return run[0]

  # The first step of the pruned chain is its refresh (count 0): the warm-up takes it.
  times = _common.time_interleaved({n: (lambda n=n: call(n)) for n in txs}, args.repeats, warmup=2)
  n = _common.count_params(jax.tree.leaves(runs["adamw"][0]))
  masks = jax.tree.leaves(cyclax.get_masks(runs["adamw + magnitude_prune"][1]))
  sparsity = float(jnp.mean(jnp.stack([jnp.mean(m) for m in masks])))
  print(f"tree {args.tree}: {n / 1e6:.1f}M params; mean kept fraction of pruned leaves {sparsity:.3f}")
  print(_common.machine())
  what = "loss, gradients and optimizer" if args.with_grads else "optimizer only, gradients given"
  print(
    f"\none jitted step ({what}), donated buffers (median [min-max] of {args.repeats} steps, interleaved)"
  )
  rows = []
  for name, t in times.items():
    opt = name.split(" + ")[0]
    floor = times.get(f"{opt} + update read by a cond")
    vs_floor = _common.fmt_ratio(t, floor) if name == f"{opt} + magnitude_prune" else ""
    mib = np.median(faults[name][-args.repeats :]) * resource.getpagesize() / 2**20
    rows.append([name, _common.fmt_time(t), _common.fmt_ratio(t, times[opt]), vs_floor, f"{mib:.0f} MiB"])
  header = ["step", "time", "time / same optimizer alone", "time / cond floor", "page faults per step"]
  _common.print_table(header, rows)


if __name__ == "__main__":
  main()
