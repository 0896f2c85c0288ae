"""What do bit-packed masks cost per optimizer step, between refreshes and at a refresh?

Usage:
  python benchmarks/packed_masks.py --leaves 10 --rows 1024 --cols 1024 --repeats 30

``packed_masks=True`` stores 1 bit per weight in the state instead of 1 byte.
Three jitted steps (params and state donated) run on the same tree of
``--leaves`` float32 leaves of ``--rows x --cols``: ``adamw`` alone, ``adamw`` +
pruning with bool masks, and ``adamw`` + pruning with packed masks, first with
no refresh in the timed steps, then with a refresh at every step. All variants
of a phase are timed in the same run, alternating step by step.
"""

from __future__ import annotations

import argparse

import _common
import jax
import jax.numpy as jnp
import optax

import cyclax


def _make_step(tx: optax.GradientTransformation):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1))


def _state_mask_bytes(state) -> int:
  try:
    masks = cyclax.find_prune_state(state).masks
  except ValueError:
    return 0
  return sum(x.nbytes for x in jax.tree.leaves(masks))


def _time_phase(txs: dict, params0: dict, grads: dict, repeats: int) -> tuple[dict, dict]:
  """Seconds per step of every transformation, and the bytes of its masks."""
  runs = {}
  for name, tx in txs.items():
    params = jax.tree.map(jnp.copy, params0)
    runs[name] = [_make_step(tx), params, tx.init(params)]

  def call(name):
    step, params, state = runs[name]
    runs[name][1:] = step(params, state, grads)
    return runs[name][1:]

  # Two warm-up steps: the first compiles and (count 0) refreshes, the second is a plain step.
  times = _common.time_interleaved({n: (lambda n=n: call(n)) for n in txs}, repeats, warmup=2)
  return times, {name: _state_mask_bytes(runs[name][2]) for name in txs}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--leaves", type=int, default=10)
  parser.add_argument("--rows", type=int, default=1024)
  parser.add_argument("--cols", type=int, default=1024)
  parser.add_argument("--repeats", type=int, default=30)
  parser.add_argument("--sparsity", type=float, default=0.9)
  args = parser.parse_args()

  key = jax.random.key(0)
  shape = (args.rows, args.cols)
  params0 = {f"w{i}": jax.random.normal(jax.random.fold_in(key, i), shape) for i in range(args.leaves)}
  grads = {
    k: 1e-3 * jax.random.normal(jax.random.fold_in(key, 1000 + i), shape) for i, k in enumerate(params0)
  }
  print(f"tree: {args.leaves} x {shape} float32, sparsity {args.sparsity}")
  print(_common.machine())
  rows = []
  for phase, every in [("between refreshes", 10**9), ("refresh every step", 1)]:
    prune = lambda packed: cyclax.magnitude_prune(args.sparsity, update_every=every, packed_masks=packed)
    txs = {
      "adamw": optax.adamw(1e-3),
      "adamw + prune (bool masks)": optax.chain(optax.adamw(1e-3), prune(False)),
      "adamw + prune (packed masks)": optax.chain(optax.adamw(1e-3), prune(True)),
    }
    times, mask_bytes = _time_phase(txs, params0, grads, args.repeats)
    base = times["adamw + prune (bool masks)"]
    for name, t in times.items():
      ratio = _common.fmt_ratio(t, base)
      rows.append([phase, name, _common.fmt_time(t), ratio, f"{mask_bytes[name] / 2**20:.2f} MiB"])
  print(f"\none jitted step (median [min-max] of {args.repeats} steps, interleaved; ratios per step)")
  _common.print_table(["phase", "step", "time", "time / bool masks", "mask state"], rows)


if __name__ == "__main__":
  main()
