"""One-shot, gradual and cyclical pruning of Flax NNX models on scikit-learn's digits.

The 8x8 digits (1797 images, shipped with scikit-learn, no download) are split
75/25 into train and held-out test sets. For every seed an MLP and a small CNN
are trained dense, then pruned from that checkpoint by three methods that use
the same optimizer, the same number of steps and the same batches. Every method
runs with Adam and with SGD with momentum (the paper's CIFAR optimizer):

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
together under ``jax.vmap``. Snapshots of the masks in the scan give the
regrowth at every cycle start, how many of the regrown weights survive to the
end of their cycle, and the mask distance between cycles (``_mask_history``).

Run ``python examples/digits.py`` for the full run (writes ``docs/digits.md``,
``docs/accuracy_vs_sparsity.png``, ``docs/regrowth.png``, ``docs/schedule.png``)
or ``--quick`` for a smoke test; ``--optimizer adam`` or ``--optimizer sgd``
runs one optimizer only.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time

import _mask_history as mask_history
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from _common import accuracy_panel, markdown_table, parse_args, save_markdown
from _training import (
  MLP,
  QUICK_SIZES,
  StudyConfig,
  accuracy,
  load_digits_split,
  measured_sparsity,
  minibatch_step,
  pruning_masks,
)
from flax import nnx
from scipy import stats
from tqdm import tqdm

import cyclax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METHODS = ("one-shot", "gradual", "cyclical")
OPTIMIZERS = ("adam", "sgd")


@dataclasses.dataclass(frozen=True)
class Config(StudyConfig):
  """Sizes of one run (and the settings in ``StudyConfig``)."""

  sparsities: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
  seeds: int = 5
  dense_steps: int = 800
  prune_steps: int = 1200
  num_cycles: int = 3
  batch_size: int = 64
  learning_rate: float = 1e-3  # Adam, dense pre-training and pruning
  optimizers: tuple[str, ...] = OPTIMIZERS


QUICK = Config(**QUICK_SIZES, sparsities=(0.5, 0.95), prune_steps=150, num_cycles=3)


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


MODELS = {"MLP": lambda rngs: MLP((64, 128, 128, 10), rngs), "CNN": CNN}


def peak_learning_rate(opt: str, cfg: Config) -> float:
  return cfg.learning_rate if opt == "adam" else cfg.sgd_learning_rate


def optimizer(opt: str, lr: optax.Schedule, cfg: Config) -> optax.GradientTransformation:
  """Adam, or SGD with momentum."""
  return optax.adam(lr) if opt == "adam" else optax.sgd(lr, momentum=cfg.momentum)


def schedules(method: str, target: jax.typing.ArrayLike, cfg: Config, opt: str = "adam"):
  """The learning-rate schedule and the pruning transformation of a method."""
  steps = cfg.prune_steps
  peak = peak_learning_rate(opt, cfg)
  if method == "dense":
    return optax.cosine_decay_schedule(cfg.learning_rate, cfg.dense_steps), None
  if method == "one-shot":
    # One refresh at step 0, then the mask stays fixed (update_every > steps).
    lr = optax.cosine_decay_schedule(peak, steps)
    return lr, cyclax.magnitude_prune(cyclax.one_shot_sparsity_schedule(target), update_every=steps + 1)
  if method == "gradual":
    lr = optax.cosine_decay_schedule(peak, steps)
    sparsity = cyclax.gradual_sparsity_schedule(target, 0, int(cfg.ramp_fraction * steps))
    return lr, cyclax.magnitude_prune(sparsity, update_every=cfg.update_every)
  if method == "cyclical":
    cycle = steps // cfg.num_cycles
    lr = cyclax.periodic(optax.cosine_decay_schedule(peak, cycle), cycle)
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


def train(graphdef, params, key, target, data, *, method: str, cfg: Config, opt: str = "adam"):
  """One run as a ``lax.scan`` over refresh intervals of ``cfg.update_every`` steps.

  Returns the final params and, per interval, the test accuracy at its end, the
  fraction of pruned-leaf weights regrown at the refresh that opened it (pruned
  at an earlier refresh, kept now), and the cycle statistics of
  ``_mask_history`` (survival of the weights regrown at the latest cycle start,
  mask distances to the end of cycle 1 and of the previous cycle).
  """
  x_train, y_train, x_test, y_test = data
  lr, prune = schedules(method, target, cfg, opt)
  tx = optimizer(opt, lr, cfg) if prune is None else optax.chain(optimizer(opt, lr, cfg), prune)
  steps = cfg.dense_steps if method == "dense" else cfg.prune_steps
  chunks = steps // cfg.update_every

  step = minibatch_step(graphdef, tx, x_train, y_train, cfg.batch_size)
  masks_of = (lambda state: []) if prune is None else pruning_masks

  def chunk(carry, xs):
    p, state, ever_pruned, history = carry
    chunk_key, flag = xs
    (p, state), _ = jax.lax.scan(step, (p, state), jax.random.split(chunk_key, cfg.update_every))
    masks = masks_of(state)
    total = sum(m.size for m in masks) or 1
    regrown = sum(jnp.sum(e & m) for e, m in zip(ever_pruned, masks)) / total
    ever_pruned = [e | ~m for e, m in zip(ever_pruned, masks)]
    out = {"acc": accuracy(graphdef, p, x_test, y_test), "regrown": jnp.asarray(regrown, jnp.float32)}
    if masks:
      history, stats = mask_history.update(history, masks, flag)
      # "regrown" above counts weights pruned at any earlier refresh; the history's counts the previous one.
      out.update({"regrown_at_refresh" if k == "regrown" else k: v for k, v in stats.items()})
    return (p, state, ever_pruned, history), out

  state = tx.init(params)
  masks = masks_of(state)
  ever = [jnp.zeros_like(m) for m in masks]
  history = mask_history.init(masks) if masks else None
  per_cycle = steps // (cfg.num_cycles if method == "cyclical" else 1) // cfg.update_every
  xs = (jax.random.split(key, chunks), mask_history.flags(chunks, per_cycle))
  (params, *_), out = jax.lax.scan(chunk, (params, state, ever, history), xs)
  return params, out


def run_model(name: str, data, cfg: Config, progress: tqdm) -> dict:
  """Dense pre-training, then every optimizer, method and sparsity, all seeds batched.

  Returns ``{optimizer: results}``; every optimizer starts from the same dense checkpoints.
  """
  model_cls = MODELS[name]
  graphdef, _ = nnx.split(model_cls(nnx.Rngs(0)))
  init = jax.vmap(lambda k: nnx.split(model_cls(nnx.Rngs(k)))[1])
  seed_keys = jax.random.split(jax.random.key(0), cfg.seeds)
  dense_fn = jax.jit(
    jax.vmap(functools.partial(train, graphdef, method="dense", cfg=cfg), in_axes=(0, 0, None, None))
  )
  dense, dense_out = dense_fn(
    init(seed_keys), jax.vmap(lambda k: jax.random.fold_in(k, 1))(seed_keys), 0.0, data
  )
  progress.update(1)

  # One batch entry per (seed, sparsity): the checkpoint repeated, the same batches for every method.
  num_s = len(cfg.sparsities)
  params = jax.tree.map(lambda x: jnp.repeat(x, num_s, axis=0), dense)
  targets = jnp.tile(jnp.asarray(cfg.sparsities, jnp.float32), cfg.seeds)
  keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(jnp.repeat(seed_keys, num_s))
  keys = jax.vmap(jax.random.fold_in)(keys, jnp.tile(jnp.arange(num_s), cfg.seeds))
  results = {}
  for opt in cfg.optimizers:
    out = {"dense_acc": np.asarray(dense_out["acc"][:, -1]).tolist(), "optimizer": opt, "methods": {}}
    for method in METHODS:
      fn = jax.jit(
        jax.vmap(functools.partial(train, graphdef, method=method, cfg=cfg, opt=opt), in_axes=(0, 0, 0, None))
      )
      final, curves = fn(params, keys, targets, data)
      shape = (cfg.seeds, num_s, -1)
      entry = {
        "final_acc": np.asarray(curves["acc"][:, -1]).reshape(cfg.seeds, num_s).tolist(),
        "measured_sparsity": measured_sparsity(final).reshape(cfg.seeds, num_s).tolist(),
      }
      out["methods"][method] = entry | compact_curves(
        {k: np.asarray(v).reshape(shape) for k, v in curves.items()}, cycle_stats=method == "cyclical"
      )
      progress.update(1)
    results[opt] = out
  return results


def compact_curves(curves: dict, cycle_stats: bool) -> dict:
  """The per-interval curves the JSON keeps, rounded to 6 decimals (for the figures and the cycle table).

  ``acc`` is saved as ``acc_curve``; the ``_mask_history`` statistics only when ``cycle_stats``.
  """
  keep = {"acc_curve": curves["acc"], "regrown": curves["regrown"]}
  if cycle_stats:
    keep |= {k: v for k, v in curves.items() if k not in ("acc", "regrown")}
  return {k: np.round(np.asarray(v, np.float64), 6).tolist() for k, v in keep.items()}


def optimizer_name(opt: str) -> str:
  return "Adam" if opt == "adam" else "SGD"


def label(name: str, opt: str) -> str:
  return f"{name}, {optimizer_name(opt)}"


def paired_difference(a: np.ndarray, b: np.ndarray) -> str:
  """Mean of ``a - b`` over seeds (points), its 95% t-interval and the paired t-test's p-value."""
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  n = len(d)
  if n < 2 or np.all(d == d[0]):
    return f"{d.mean():+.2f}"
  half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n)
  p = stats.ttest_1samp(d, 0.0).pvalue
  return f"{d.mean():+.2f} [{d.mean() - half:+.2f}, {d.mean() + half:+.2f}], p={p:.2g}"


def results_table(results: dict, cfg: Config) -> str:
  lines = []
  for name, res in results.items():
    dense = np.asarray(res["dense_acc"]) * 100
    opt = res["optimizer"]
    lines += [
      f"### {name} (dense: {dense.mean():.2f} +- {dense.std():.2f}%; pruning with peak learning rate "
      f"{peak_learning_rate(opt, cfg):g})",
      "",
      "Held-out test accuracy (%), mean +- std over seeds; in brackets the measured sparsity of the "
      "pruned kernels. Last column: cyclical minus gradual, paired by seed, with its 95% t-interval and "
      "the paired t-test's p-value.",
      "",
    ]
    rows = []
    for j, s in enumerate(cfg.sparsities):
      accs = {m: np.asarray(res["methods"][m]["final_acc"])[:, j] * 100 for m in METHODS}
      means = {m: accs[m].mean() for m in METHODS}
      best = max(means, key=means.get)
      row = [f"{s:.0%}"]
      for m in METHODS:
        cell = f"{accs[m].mean():.2f} +- {accs[m].std():.2f}"
        measured = np.mean(np.asarray(res["methods"][m]["measured_sparsity"])[:, j])
        cell += f" [{measured:.3f}]"
        row.append(f"**{cell}**" if m == best else cell)
      row.append(paired_difference(accs["cyclical"], accs["gradual"]))
      rows.append(row)
    lines += [markdown_table(["sparsity", *METHODS, "cyclical - gradual"], rows), ""]
  return "\n".join(lines)


def cycle_table(results: dict, cfg: Config) -> str:
  """Cyclical pruning's regrowth, survival and mask distances, cycle by cycle (mean over seeds)."""
  per_cycle = cfg.prune_steps // cfg.num_cycles // cfg.update_every
  rows = []
  for name, res in results.items():
    entry = res["methods"]["cyclical"]
    for j, s in enumerate(cfg.sparsities):

      def ends(key):
        return mask_history.at_cycle_ends(np.asarray(entry[key])[:, j], per_cycle, cfg.num_cycles).mean(0)

      starts = mask_history.at_cycle_starts(
        np.asarray(entry["regrown_at_refresh"])[:, j], per_cycle, cfg.num_cycles
      )
      rows.append(
        [
          name,
          f"{s:.0%}",
          " / ".join(f"{v * 100:.1f}" for v in starts.mean(0)),
          " / ".join(f"{v * 100:.2f}" for v in ends("survival")[1:]),
          f"{(1 - s) * 100:.0f}",
          " / ".join(f"{v * 100:.1f}" for v in ends("regrown_share")[1:]),
          " / ".join(f"{v:.3f}" for v in ends("dist_cycle1")[1:]),
          " / ".join(f"{(1 - v) * 100:.1f}" for v in ends("dist_prev_end")[1:]),
        ]
      )
  if not rows:
    return ""
  header = [
    "model, optimizer",
    "target",
    "regrown at the start of cycles 2.. (% of weights)",
    "survival to the cycle end (%)",
    "survival of a random weight (%)",
    "share of the cycle-end kept set regrown at its start (%)",
    "mask distance to the end of cycle 1",
    "cycle-end mask vs the previous one, 1 - distance (%)",
  ]
  return "\n".join(
    [
      "### Cyclical pruning, cycle by cycle",
      "",
      "Regrown: kept by the refresh that opens the cycle and pruned by the masks just before it. Survival: "
      "the fraction of those still kept by the mask at the end of that cycle (a weight picked at random "
      "survives with probability 1 - target). Share: the fraction of the cycle-end kept set regrown at the "
      "cycle's start. Mask distance: `cyclax.mask_distance` (Jaccard). Values per cycle 2, 3, ..., mean "
      "over seeds; from snapshots of the masks in the training scan.",
      "",
      markdown_table(header, rows),
      "",
    ]
  )


def plot_accuracy(results: dict, cfg: Config, path: str) -> None:
  fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.8), squeeze=False)
  for ax, (name, res) in zip(axes[0], results.items()):
    accs = {m: np.asarray(res["methods"][m]["final_acc"]) * 100 for m in METHODS}
    accuracy_panel(ax, cfg.sparsities, accs, np.mean(res["dense_acc"]) * 100)
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
    ax_lr.plot(steps, np.asarray(jax.vmap(lr)(steps)) / cfg.learning_rate, style, label=m)
  ax_s.set_ylabel("sparsity")
  ax_s.set_title(f"schedules used by examples/digits.py (target {target:.0%})")
  ax_s.legend()
  ax_lr.set_ylabel("learning rate / peak")
  ax_lr.set_title(
    "peak: " + ", ".join(f"{optimizer_name(o)} {peak_learning_rate(o, cfg):g}" for o in cfg.optimizers),
    fontsize=9,
  )
  ax_lr.legend()
  ax_lr.set_xlabel("step after the dense checkpoint")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main() -> None:
  args = parse_args(
    "Prune Flax NNX models on scikit-learn digits: one-shot vs gradual vs cyclical.",
    replot=True,
    add_options=lambda parser: parser.add_argument(
      "--optimizer",
      choices=(*OPTIMIZERS, "both"),
      default=None,
      help="prune with Adam, SGD with momentum, or both (default: both; SGD only with --quick)",
    ),
  )
  cfg = QUICK if args.quick else Config()
  if args.optimizer is not None:
    cfg = dataclasses.replace(cfg, optimizers=OPTIMIZERS if args.optimizer == "both" else (args.optimizer,))
  data = load_digits_split()
  json_path = os.path.join(args.out, "digits.json")
  if args.replot:
    with open(json_path) as f:
      saved = json.load(f)
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["config"].items()})
    results, seconds = saved["results"], saved["seconds"]
  else:
    start = time.perf_counter()
    results = {}
    # The quick smoke test trains the MLP only, to keep compile time short.
    models = ["MLP"] if args.quick else list(MODELS)
    with tqdm(total=len(models) * (1 + len(cfg.optimizers) * len(METHODS)), desc="digits runs") as progress:
      for name in models:
        for opt, res in run_model(name, data, cfg, progress).items():
          results[label(name, opt)] = res
    seconds = time.perf_counter() - start
    with open(json_path, "w") as f:
      json.dump({"config": dataclasses.asdict(cfg), "results": results, "seconds": seconds}, f)
  target = 0.95 if 0.95 in cfg.sparsities else cfg.sparsities[-1]
  plot_accuracy(results, cfg, os.path.join(args.out, "accuracy_vs_sparsity.png"))
  plot_regrowth(results, cfg, target, os.path.join(args.out, "regrowth.png"))
  plot_schedule(cfg, target, os.path.join(args.out, "schedule.png"))
  text = "\n".join(
    [
      "# Digits: one-shot vs gradual vs cyclical",
      "",
      f"Config: {dataclasses.asdict(cfg)}; {len(data[0])} train / {len(data[2])} test images"
      + ("." if seconds is None else f"; {seconds:.0f} s for all runs."),
      "",
      results_table(results, cfg),
      cycle_table(results, cfg),
    ]
  )
  save_markdown(args.out, "digits.md", text)
  print(f"wrote {args.out}/digits.md, digits.json, accuracy_vs_sparsity.png, regrowth.png, schedule.png")


if __name__ == "__main__":
  main()
