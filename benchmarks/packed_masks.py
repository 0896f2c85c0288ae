"""Per-step cost of bit-packed masks vs bool masks in `chain(adamw, magnitude_prune)`.

Question: what does ``packed_masks=True`` (1 bit per weight in the state instead
of 1 byte) cost per optimizer step, between refreshes and at a refresh?

Three jitted steps run on the same tree (``--leaves`` float32 leaves of
``--rows x --cols``): ``adamw`` alone, ``adamw`` + pruning with bool masks, and
``adamw`` + pruning with packed masks. Each repetition times every variant once,
in rotating order, so that the ratios are taken in the same run under the same
load; the table gives medians with the interquartile range, and the ratio's
median over repetitions.

Run:  python3 benchmarks/packed_masks.py [--leaves 10 --rows 1024 --cols 1024 --repeats 30]
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
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


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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

  variants = {}
  for phase, every in [("between refreshes", 10**9), ("refresh every step", 1)]:
    prune = lambda packed: cyclax.magnitude_prune(args.sparsity, update_every=every, packed_masks=packed)
    variants[phase] = {
      "adamw": optax.adamw(1e-3),
      "adamw + prune (bool masks)": optax.chain(optax.adamw(1e-3), prune(False)),
      "adamw + prune (packed masks)": optax.chain(optax.adamw(1e-3), prune(True)),
    }

  print(
    f"# {platform.processor() or platform.machine()}, {jax.devices()[0].device_kind}, jax {jax.__version__}"
  )
  print(f"# tree: {args.leaves} x {shape} float32, sparsity {args.sparsity}, {args.repeats} repetitions")
  print()
  print(
    "| phase | variant | step ms (median) | IQR ms | ratio vs bool masks (median, IQR) | mask state MiB |"
  )
  print("|---|---|---|---|---|---|")
  for phase, txs in variants.items():
    names = list(txs)
    runs = {}
    for name, tx in txs.items():
      params = jax.tree.map(jnp.copy, params0)
      state = tx.init(params)
      step = _make_step(tx)
      # The first call compiles and (count 0) refreshes; the second is a plain step.
      for _ in range(2):
        params, state = step(params, state, grads)
      jax.block_until_ready(params)
      runs[name] = [step, params, state, []]
    for rep in range(args.repeats):
      order = names[rep % len(names) :] + names[: rep % len(names)]
      for name in order:
        step, params, state, times = runs[name]
        start = time.perf_counter()
        params, state = step(params, state, grads)
        jax.block_until_ready((params, state))
        times.append(time.perf_counter() - start)
        runs[name][1:3] = [params, state]
    base = np.asarray(runs["adamw + prune (bool masks)"][3])
    for name in names:
      t = np.asarray(runs[name][3]) * 1e3
      q1, med, q3 = np.percentile(t, [25, 50, 75])
      r1, ratio, r3 = np.percentile(np.asarray(runs[name][3]) / base, [25, 50, 75])
      mib = _state_mask_bytes(runs[name][2]) / 2**20
      print(
        f"| {phase} | {name} | {med:.2f} | {q1:.2f}-{q3:.2f} | {ratio:.3f} ({r1:.3f}-{r3:.3f}) | {mib:.2f} |"
      )


if __name__ == "__main__":
  main()
