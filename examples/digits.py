"""One-shot, gradual and cyclical pruning of Flax NNX models on scikit-learn's digits.

The 8x8 digits (1797 images, shipped with scikit-learn, no download) are split
75/25 into train and held-out test sets. For every seed an MLP and a small CNN
are trained dense, then pruned from that checkpoint by three methods that use
the same optimizer (Adam), the same number of steps and the same batches:

- one-shot: prune to the target at the first step, fine-tune on the fixed mask,
  cosine learning-rate decay;
- gradual (Zhu & Gupta): cubic sparsity ramp over the first 80% of the steps,
  mask refresh every ``UPDATE_EVERY`` steps, cosine learning-rate decay;
- cyclical: ``NUM_CYCLES`` cycles, each a cubic ramp (80% of the cycle) from
  ``0.5 * target`` (0 in the first cycle) to the target, with the learning rate
  restarted each cycle by ``cyclax.periodic``.

Every kernel (ndim >= 2) is pruned at the same sparsity (cyclax's default,
layer-wise uniform, as in the paper); biases stay dense. The whole training
loop is one jitted ``lax.scan`` and all seeds and sparsities of a method run
together under ``jax.vmap``.

Run ``python examples/digits.py`` for the full run (writes ``docs/digits.md``,
``docs/accuracy_vs_sparsity.png``, ``docs/regrowth.png``, ``docs/schedule.png``)
or ``--quick`` for a smoke test.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from _common import markdown_table, parse_args
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import cyclax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METHODS = ("one-shot", "gradual", "cyclical")


class Config(NamedTuple):
  """Sizes of one run."""

  sparsities: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
  seeds: int = 5
  dense_steps: int = 800
  prune_steps: int = 1200
  num_cycles: int = 3
  update_every: int = 20
  batch_size: int = 64
  learning_rate: float = 1e-3
  ramp_fraction: float = 0.8


QUICK = Config(sparsities=(0.5, 0.95), seeds=2, dense_steps=100, prune_steps=150, update_every=10)


class MLP(nnx.Module):
  """64 -> 128 -> 128 -> 10."""

  def __init__(self, rngs: nnx.Rngs):
    self.layers = nnx.List(
      [nnx.Linear(64, 128, rngs=rngs), nnx.Linear(128, 128, rngs=rngs), nnx.Linear(128, 10, rngs=rngs)]
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for layer in self.layers[:-1]:
      x = jax.nn.relu(layer(x))
    return self.layers[-1](x)


class CNN(nnx.Module):
  """Two 3x3 convolutions (16, 32 channels) with 2x2 average pooling, then a linear layer."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(16, 32, (3, 3), rngs=rngs)
    self.head = nnx.Linear(2 * 2 * 32, 10, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], 8, 8, 1)
    x = nnx.avg_pool(jax.nn.relu(self.conv1(x)), (2, 2), strides=(2, 2))
    x = nnx.avg_pool(jax.nn.relu(self.conv2(x)), (2, 2), strides=(2, 2))
    return self.head(x.reshape(x.shape[0], -1))


MODELS = {"MLP": MLP, "CNN": CNN}


def load_data():
  """Train/test split of the digits, pixels scaled to [0, 1]."""
  digits = load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  x_train, x_test, y_train, y_test = train_test_split(
    x, digits.target, test_size=0.25, random_state=0, stratify=digits.target
  )
  return jnp.asarray(x_train), jnp.asarray(y_train), jnp.asarray(x_test), jnp.asarray(y_test)


def schedules(method: str, target: jax.typing.ArrayLike, cfg: Config):
  """The learning-rate schedule and the pruning transformation of a method."""
  steps = cfg.prune_steps
  if method == "dense":
    return optax.cosine_decay_schedule(cfg.learning_rate, cfg.dense_steps), None
  if method == "one-shot":
    # One refresh at step 0, then the mask stays fixed (update_every > steps).
    lr = optax.cosine_decay_schedule(cfg.learning_rate, steps)
    return lr, cyclax.magnitude_prune(cyclax.one_shot_sparsity_schedule(target), update_every=steps + 1)
  if method == "gradual":
    lr = optax.cosine_decay_schedule(cfg.learning_rate, steps)
    sparsity = cyclax.gradual_sparsity_schedule(target, 0, int(cfg.ramp_fraction * steps))
    return lr, cyclax.magnitude_prune(sparsity, update_every=cfg.update_every)
  if method == "cyclical":
    cycle = steps // cfg.num_cycles
    lr = cyclax.periodic(optax.cosine_decay_schedule(cfg.learning_rate, cycle), cycle)
    prune = cyclax.cyclical_prune(
      target,
      num_cycles=cfg.num_cycles,
      cycle_steps=cycle,
      ramp_fraction=cfg.ramp_fraction,
      update_every=cfg.update_every,
    )
    return lr, prune
  raise ValueError(f"`method` must be 'dense' or one of {METHODS}, got {method!r}.")


def sparsity_of(method: str, target: float, cfg: Config) -> optax.Schedule:
  """The sparsity schedule a method follows (for the schedule plot)."""
  steps = cfg.prune_steps
  if method == "one-shot":
    return cyclax.one_shot_sparsity_schedule(target)
  if method == "gradual":
    return cyclax.gradual_sparsity_schedule(target, 0, int(cfg.ramp_fraction * steps))
  return cyclax.cyclical_sparsity_schedule(
    target, num_cycles=cfg.num_cycles, cycle_steps=steps // cfg.num_cycles, ramp_fraction=cfg.ramp_fraction
  )


def accuracy(graphdef, params, x, y) -> jax.Array:
  logits = nnx.merge(graphdef, params)(x)
  return jnp.mean(jnp.argmax(logits, -1) == y)


def train(graphdef, params, key, target, data, *, method: str, cfg: Config):
  """One run as a ``lax.scan`` over refresh intervals of ``cfg.update_every`` steps.

  Returns the final params and, per interval, the test accuracy at its end and
  the fraction of pruned-leaf weights regrown at the refresh that opened it
  (pruned at an earlier refresh, kept now).
  """
  x_train, y_train, x_test, y_test = data
  lr, prune = schedules(method, target, cfg)
  tx = optax.adam(lr) if prune is None else optax.chain(optax.adam(lr), prune)
  steps = cfg.dense_steps if method == "dense" else cfg.prune_steps
  chunks = steps // cfg.update_every

  def loss_fn(p, xb, yb):
    logits = nnx.merge(graphdef, p)(xb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  def step(carry, step_key):
    p, state = carry
    idx = jax.random.randint(step_key, (cfg.batch_size,), 0, x_train.shape[0])
    grads = jax.grad(loss_fn)(p, x_train[idx], y_train[idx])
    updates, state = tx.update(grads, state, p)
    return (optax.apply_updates(p, updates), state), None

  def masks_of(state):
    if prune is None:
      return []
    return [m for m in jax.tree.leaves(cyclax.get_masks(state)) if m is not None]

  def chunk(carry, chunk_key):
    p, state, ever_pruned = carry
    (p, state), _ = jax.lax.scan(step, (p, state), jax.random.split(chunk_key, cfg.update_every))
    masks = masks_of(state)
    total = sum(m.size for m in masks) or 1
    regrown = sum(jnp.sum(e & m) for e, m in zip(ever_pruned, masks)) / total
    ever_pruned = [e | ~m for e, m in zip(ever_pruned, masks)]
    return (p, state, ever_pruned), (accuracy(graphdef, p, x_test, y_test), jnp.asarray(regrown, jnp.float32))

  state = tx.init(params)
  ever = [jnp.zeros_like(m) for m in masks_of(state)]
  (params, state, _), (acc, regrown) = jax.lax.scan(
    chunk, (params, state, ever), jax.random.split(key, chunks)
  )
  return params, acc, regrown


def run_model(name: str, data, cfg: Config, progress: tqdm) -> dict:
  """Dense pre-training, then every method at every sparsity, all seeds batched."""
  model_cls = MODELS[name]
  graphdef, _ = nnx.split(model_cls(nnx.Rngs(0)))
  init = jax.vmap(lambda k: nnx.split(model_cls(nnx.Rngs(k)))[1])
  seed_keys = jax.random.split(jax.random.key(0), cfg.seeds)
  dense_fn = jax.jit(
    jax.vmap(functools.partial(train, graphdef, method="dense", cfg=cfg), in_axes=(0, 0, None, None))
  )
  dense, dense_acc, _ = dense_fn(
    init(seed_keys), jax.vmap(lambda k: jax.random.fold_in(k, 1))(seed_keys), 0.0, data
  )
  progress.update(1)

  # One batch entry per (seed, sparsity): the checkpoint repeated, the same batches for every method.
  num_s = len(cfg.sparsities)
  params = jax.tree.map(lambda x: jnp.repeat(x, num_s, axis=0), dense)
  targets = jnp.tile(jnp.asarray(cfg.sparsities, jnp.float32), cfg.seeds)
  keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(jnp.repeat(seed_keys, num_s))
  keys = jax.vmap(jax.random.fold_in)(keys, jnp.tile(jnp.arange(num_s), cfg.seeds))
  out = {"dense_acc": np.asarray(dense_acc[:, -1]).tolist(), "methods": {}}
  for method in METHODS:
    fn = jax.jit(
      jax.vmap(functools.partial(train, graphdef, method=method, cfg=cfg), in_axes=(0, 0, 0, None))
    )
    final, acc, regrown = fn(params, keys, targets, data)
    zeros = jax.vmap(lambda p: cyclax.sparsity_report(p, filter=cyclax.default_filter)["total"])(final)
    shape = (cfg.seeds, num_s, -1)
    out["methods"][method] = {
      "final_acc": np.asarray(acc[:, -1]).reshape(cfg.seeds, num_s).tolist(),
      "acc_curve": np.asarray(acc).reshape(shape).tolist(),
      "regrown": np.asarray(regrown).reshape(shape).tolist(),
      "measured_sparsity": np.asarray(zeros).reshape(cfg.seeds, num_s).tolist(),
    }
    progress.update(1)
  return out


def results_table(results: dict, cfg: Config) -> str:
  lines = []
  for name, res in results.items():
    dense = np.asarray(res["dense_acc"]) * 100
    lines += [
      f"### {name} (dense: {dense.mean():.2f} +- {dense.std():.2f}%)",
      "",
      "Held-out test accuracy (%), mean +- std over seeds; in brackets the measured sparsity of the "
      "pruned kernels.",
      "",
    ]
    rows = []
    for j, s in enumerate(cfg.sparsities):
      means = {m: np.mean(np.asarray(res["methods"][m]["final_acc"])[:, j]) * 100 for m in METHODS}
      best = max(means, key=means.get)
      row = [f"{s:.0%}"]
      for m in METHODS:
        acc = np.asarray(res["methods"][m]["final_acc"])[:, j] * 100
        cell = f"{acc.mean():.2f} +- {acc.std():.2f}"
        measured = np.mean(np.asarray(res["methods"][m]["measured_sparsity"])[:, j])
        cell += f" [{measured:.3f}]"
        row.append(f"**{cell}**" if m == best else cell)
      rows.append(row)
    lines += [markdown_table(["sparsity", *METHODS], rows), ""]
  return "\n".join(lines)


def plot_accuracy(results: dict, cfg: Config, path: str) -> None:
  fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.8), squeeze=False)
  for ax, (name, res) in zip(axes[0], results.items()):
    for m in METHODS:
      acc = np.asarray(res["methods"][m]["final_acc"]) * 100
      ax.errorbar(list(cfg.sparsities), acc.mean(0), yerr=acc.std(0), marker="o", capsize=3, label=m)
    ax.axhline(np.mean(res["dense_acc"]) * 100, color="gray", ls=":", label="dense")
    ax.set_xscale("logit")
    ax.set_xticks(list(cfg.sparsities), minor=False)
    ax.minorticks_off()
    ax.set_xticklabels([f"{s:.0%}" for s in cfg.sparsities])
    ax.set_xlabel("sparsity of every kernel")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"digits, {name}, {cfg.seeds} seeds (mean +- std)")
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_regrowth(results: dict, cfg: Config, target: float, path: str) -> None:
  """Figure-1 analogue: regrowth at each refresh and accuracy at the end of each cycle."""
  j = cfg.sparsities.index(target)
  steps = (np.arange(cfg.prune_steps // cfg.update_every)) * cfg.update_every
  cycle = cfg.prune_steps // cfg.num_cycles
  fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 3.8), squeeze=False)
  for ax, (name, res) in zip(axes[0], results.items()):
    regrown = np.asarray(res["methods"]["cyclical"]["regrown"])[:, j] * 100
    ax.bar(steps, regrown.mean(0), width=cfg.update_every * 0.8, align="edge", color="tab:green", alpha=0.6)
    ax.set_xlabel("step")
    ax.set_ylabel("weights regrown at the refresh (%)", color="tab:green")
    twin = ax.twinx()
    for m in METHODS:
      acc = np.asarray(res["methods"][m]["acc_curve"])[:, j] * 100
      twin.plot(steps + cfg.update_every, acc.mean(0), label=m, lw=1.2)
    ends = np.arange(1, cfg.num_cycles + 1) * cycle
    cyc = np.asarray(res["methods"]["cyclical"]["acc_curve"])[:, j] * 100
    end_acc = cyc.mean(0)[ends // cfg.update_every - 1]
    twin.plot(ends, end_acc, "k*", ms=10, label="cyclical, end of cycle")
    for e, a in zip(ends, end_acc):
      twin.annotate(f"{a:.1f}", (e, a), textcoords="offset points", xytext=(-10, 6))
    twin.set_ylabel("test accuracy (%)")
    twin.legend(loc="best", fontsize=8, framealpha=0.6)
    ax.set_title(f"{name}, target {target:.0%}: cyclical regrowth and accuracy")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_schedule(cfg: Config, target: float, path: str) -> None:
  steps = np.arange(cfg.prune_steps)
  fig, (ax_s, ax_lr) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
  for m in METHODS:
    lr, _ = schedules(m, target, cfg)
    style = "--" if m == "one-shot" else "-"  # one-shot and gradual share the learning rate
    ax_s.plot(steps, np.asarray(jax.vmap(sparsity_of(m, target, cfg))(steps)), style, label=m)
    ax_lr.plot(steps, np.asarray(jax.vmap(lr)(steps)), style, label=m)
  ax_s.set_ylabel("sparsity")
  ax_s.set_title(f"schedules used by examples/digits.py (target {target:.0%})")
  ax_s.legend()
  ax_lr.set_ylabel("learning rate (Adam)")
  ax_lr.legend()
  ax_lr.set_xlabel("step after the dense checkpoint")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main() -> None:
  args = parse_args(
    "Prune Flax NNX models on scikit-learn digits: one-shot vs gradual vs cyclical.", replot=True
  )
  cfg = QUICK if args.quick else Config()
  data = load_data()
  json_path = os.path.join(args.out, "digits.json")
  if args.replot:
    with open(json_path) as f:
      saved = json.load(f)
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["config"].items()})
    results, seconds = saved["results"], saved.get("seconds")
  else:
    start = time.perf_counter()
    results = {}
    # The quick smoke test trains the MLP only, to keep compile time short.
    models = ["MLP"] if args.quick else list(MODELS)
    with tqdm(total=len(models) * (1 + len(METHODS)), desc="digits runs") as progress:
      for name in models:
        results[name] = run_model(name, data, cfg, progress)
    seconds = time.perf_counter() - start
    with open(json_path, "w") as f:
      json.dump({"config": cfg._asdict(), "results": results, "seconds": seconds}, f)
  target = 0.95 if 0.95 in cfg.sparsities else cfg.sparsities[-1]
  plot_accuracy(results, cfg, os.path.join(args.out, "accuracy_vs_sparsity.png"))
  plot_regrowth(results, cfg, target, os.path.join(args.out, "regrowth.png"))
  plot_schedule(cfg, target, os.path.join(args.out, "schedule.png"))
  text = "\n".join(
    [
      "# Digits: one-shot vs gradual vs cyclical",
      "",
      f"Config: {cfg._asdict()}; {len(data[0])} train / {len(data[2])} test images"
      + ("." if seconds is None else f"; {seconds:.0f} s for all runs."),
      "",
      results_table(results, cfg),
    ]
  )
  with open(os.path.join(args.out, "digits.md"), "w") as f:
    f.write(text)
  print(text)
  print(f"wrote {args.out}/digits.md, digits.json, accuracy_vs_sparsity.png, regrowth.png, schedule.png")


if __name__ == "__main__":
  main()
