"""When does cyclical pruning beat gradual pruning? An MLP on MNIST-1D, and why.

MNIST-1D (Greydanus, 2020; ``pip install mnist1d``) is a 1-D analogue of MNIST:
10 digit templates of length 12, padded, scaled, sheared, translated and noised
into sequences of 40 values. ``mnist1d.data.make_dataset`` builds its 4000
training and 1000 test sequences locally from the templates (a few seconds, no
download). The inputs are standardised with the training set's per-position
mean and standard deviation.

For every seed an MLP (40-100-100-10, as in the published MNIST-1D baselines)
is trained dense with Adam; then, from that
checkpoint and on the same batches, four methods prune every kernel to the same
sparsity (cyclax's default, layer-wise uniform; biases stay dense) in the same
number of steps:

- one-shot: prune to the target at the first step, then fine-tune on the fixed
  mask, learning rate decayed by a cosine over the whole budget;
- gradual (Zhu & Gupta): cubic ramp over the first 80% of the steps, mask
  refresh every ``update_every`` steps, cosine decay over the whole budget;
- cyclical: ``num_cycles`` cycles, each a ramp over 80% of the cycle from
  ``0.5 * target`` (0 in the first cycle) to the target, the learning rate
  restarted every cycle with ``cyclax.periodic``;
- no-drop: cyclical with ``initial_sparsity = target``, so cycles 2, 3, ...
  keep the target sparsity: the learning-rate restarts and the refreshes stay,
  the drop in sparsity (and with it most of the regrowth) goes. This is also the
  control of the paper's Table 5.

Each method runs with SGD with momentum (the paper's CIFAR optimizer) and with
Adam, at two step budgets. The script also runs the paper's ramp ablation
(cubic, linear and step ramps; accuracy and mask distance to the cycle-1 mask
at the end of every cycle), measures the regrowth and survival of weights at
every cycle start from snapshots of the masks (``_mask_history``, independent
of the library's metrics), sweeps the peak learning rate, the number of cycles
and ``update_every``, and tries two variants that go beyond the paper (see
``VARIANTS``; ``protect_regrown`` is a small optax transformation wrapped
around ``cyclax.magnitude_prune``).

Every training run is one jitted ``lax.scan``; all seeds and sparsities of a
configuration run together under ``jax.vmap``.

  python examples/mnist1d.py            # writes docs/mnist1d.md, docs/mnist1d.json, docs/mnist1d_*.png
  python examples/mnist1d.py --quick    # a small smoke run
  python examples/mnist1d.py --replot   # tables and figures again from docs/mnist1d.json
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import math
import os
import sys
import time
from typing import NamedTuple

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

METHODS = ("one-shot", "gradual", "cyclical", "no-drop")
OPTIMIZERS = ("sgd", "adam")
RAMPS = ("cubic", "linear", "step")
# Beyond the paper: what could make the weights regrown at a cycle start survive it.
VARIANTS = {
  "hold": "cyclical, but every cycle after the first holds its starting sparsity for its first "
  "HOLD_STEPS steps before the cubic ramp starts, which still ends at 80% of the cycle (a gentler "
  "start: regrown weights get time to grow before the ramp prunes again)",
  "protect": "cyclical, and the weights regrown at a cycle start are ranked above all others at the "
  "next PROTECT_REFRESHES refreshes of that cycle (they are pruned only if the sparsity leaves no room "
  "for all of them, smallest first)",
}


@dataclasses.dataclass(frozen=True)
class Config(StudyConfig):
  """Sizes of one run (and the settings in ``StudyConfig``)."""

  sparsities: tuple[float, ...] = (0.9, 0.95, 0.98, 0.99)
  seeds: int = 10
  samples: int = 5000  # MNIST-1D's default: 4000 training and 1000 test sequences
  hidden: int = 100  # the MLP of the published MNIST-1D baselines
  dense_steps: int = 3000
  dense_learning_rate: float = 3e-3  # Adam with cosine decay
  budgets: tuple[int, ...] = (1000, 3000)  # pruning steps after the dense checkpoint (25 and 75 epochs)
  num_cycles: int = 5
  batch_size: int = 100
  adam_learning_rate: float = 0.03
  optimizers: tuple[str, ...] = OPTIMIZERS
  ramp_optimizers: tuple[str, ...] = OPTIMIZERS  # the Table 5 analogue
  ramps: tuple[str, ...] = RAMPS
  variants: tuple[str, ...] = tuple(VARIANTS)  # at the smaller budget
  long_variants: tuple[str, ...] = ("protect",)  # also at the larger budget
  # (optimizer, peak learning rate) run besides the defaults: gradual and cyclical at the smaller
  # budget, gradual at the larger one.
  lr_sweep: tuple[tuple[str, float], ...] = (("sgd", 0.03), ("adam", 0.01))
  cycle_sweep: tuple[int, ...] = (2, 4, 10)  # with SGD, the smaller budget
  update_every_sweep: tuple[int, ...] = (5, 40)  # with SGD, the smaller budget
  hold_fraction: float = 0.25  # rounded to whole refresh intervals: 40 of 200 steps
  protect_refreshes: int = 5


QUICK = Config(
  **QUICK_SIZES,
  sparsities=(0.9, 0.99),
  samples=1000,
  hidden=32,
  budgets=(100,),
  num_cycles=2,
  ramp_optimizers=("sgd",),
  ramps=("cubic",),
  variants=("protect",),
  long_variants=(),
  lr_sweep=(),
  cycle_sweep=(),
  update_every_sweep=(),
  protect_refreshes=2,
)


class Run(NamedTuple):
  """One configuration: all seeds and sparsities of it run in one vmapped scan."""

  method: str  # a METHODS entry, a VARIANTS key, or "dense"
  optimizer: str = "sgd"
  steps: int = 0
  num_cycles: int = 1
  update_every: int = 20
  ramp: str = "cubic"
  learning_rate: float = 0.0  # peak learning rate; 0 takes the config's for the optimizer

  @property
  def label(self) -> str:
    lr = f"/lr{self.learning_rate:g}" if self.learning_rate else ""
    return (
      f"{self.method}/{self.optimizer}/{self.steps}/c{self.num_cycles}/u{self.update_every}/{self.ramp}{lr}"
    )

  @property
  def cycle_steps(self) -> int:
    cyclic = self.method in ("cyclical", "no-drop", *VARIANTS)
    return self.steps // self.num_cycles if cyclic else self.steps


def _mnist1d_data_module():
  """The ``mnist1d.data`` module of the mnist1d package.

  This script is called mnist1d.py too, and its folder comes first on
  ``sys.path``, so the package is imported with that folder left out.
  """
  here = os.path.dirname(os.path.abspath(__file__))
  saved_path, shadow = sys.path, sys.modules.get("mnist1d")
  sys.path = [p for p in saved_path if os.path.abspath(p or os.curdir) != here]
  if shadow is not None and not hasattr(shadow, "__path__"):  # this script, imported as a module
    del sys.modules["mnist1d"]
  else:
    shadow = None
  try:
    return importlib.import_module("mnist1d.data")
  finally:
    sys.path = saved_path
    if shadow is not None:
      sys.modules["mnist1d"] = shadow


def load_data(samples: int = 5000):
  """MNIST-1D's 80/20 split (4000/1000 by default), standardised per position with training statistics."""
  mnist1d_data = _mnist1d_data_module()
  args = mnist1d_data.get_dataset_args()
  args.num_samples = samples
  data = mnist1d_data.make_dataset(args)
  x, x_test = data["x"].astype(np.float32), data["x_test"].astype(np.float32)
  mean, std = x.mean(0), x.std(0)
  x, x_test = (x - mean) / std, (x_test - mean) / std
  return tuple(jnp.asarray(a) for a in (x, data["y"], x_test, data["y_test"]))


def hold_steps(run: Run, cfg: Config) -> int:
  """The "hold" variant's hold: ``hold_fraction`` of a cycle, rounded to whole refresh intervals."""
  return int(round(cfg.hold_fraction * run.cycle_steps / run.update_every)) * run.update_every


def hold_then_ramp(target, run: Run, cfg: Config) -> optax.Schedule:
  """The "hold" variant's schedule: cycles after the first hold their start for a while, then ramp."""
  cycle = run.cycle_steps
  hold = hold_steps(run, cfg)
  ramp_steps = int(cfg.ramp_fraction * cycle) - hold
  later = cyclax.gradual_sparsity_schedule(target, hold, hold + ramp_steps, 0.5 * target)
  first = cyclax.gradual_sparsity_schedule(target, 0, int(cfg.ramp_fraction * cycle))

  def schedule(count):
    count = jnp.asarray(count, jnp.int32)
    local = count % cycle
    value = jnp.where(count < cycle, first(local), later(local))
    return jnp.where(count >= run.num_cycles * cycle, jnp.asarray(target, jnp.float32), value)

  return schedule


def sparsity_schedule(run: Run, target, cfg: Config) -> optax.Schedule:
  """The sparsity a method follows (``target`` may be a traced, vmapped scalar)."""
  if run.method == "one-shot":
    return cyclax.one_shot_sparsity_schedule(target)
  if run.method == "gradual":
    return cyclax.gradual_sparsity_schedule(target, 0, int(cfg.ramp_fraction * run.steps), ramp=run.ramp)
  if run.method == "hold":
    return hold_then_ramp(target, run, cfg)
  return cyclax.cyclical_sparsity_schedule(
    target,
    num_cycles=run.num_cycles,
    cycle_steps=run.cycle_steps,
    initial_sparsity=target if run.method == "no-drop" else None,
    ramp_fraction=cfg.ramp_fraction,
    ramp=run.ramp,
  )


def learning_rate(run: Run, cfg: Config) -> optax.Schedule:
  """Cosine decay over the budget (one-shot, gradual) or restarted every cycle (the cyclic methods)."""
  if run.method == "dense":
    return optax.cosine_decay_schedule(cfg.dense_learning_rate, cfg.dense_steps)
  base = run.learning_rate or (cfg.sgd_learning_rate if run.optimizer == "sgd" else cfg.adam_learning_rate)
  cycle = run.cycle_steps
  return cyclax.periodic(optax.cosine_decay_schedule(base, cycle), cycle)


def optimizer(run: Run, cfg: Config) -> optax.GradientTransformation:
  lr = learning_rate(run, cfg)
  if run.method == "dense" or run.optimizer == "adam":
    return optax.adam(lr)
  return optax.sgd(lr, momentum=cfg.momentum)


class ProtectState(NamedTuple):
  inner: optax.OptState
  protected: list  # per pruned leaf: True where a weight regrown at the latest cycle start is protected
  refreshes_left: jax.Array  # protected refreshes left in this cycle


def protect_regrown(
  prune: optax.GradientTransformation, cycle_steps: int, update_every: int, refreshes: int
) -> optax.GradientTransformation:
  """Wraps a cyclax pruning transformation: weights regrown at a cycle start win the next refreshes.

  At every refresh within ``refreshes`` refreshes after a cycle start, the wrapped
  transformation ranks the weights regrown at that cycle start (kept by its
  refresh, pruned just before it) above all others, by adding the largest
  candidate magnitude of their leaf to theirs, so it prunes them only when the
  sparsity leaves no room for all of them. The update that is returned is the
  plain masked update ``where(mask, update, -param)`` with the wrapped
  transformation's new masks, so the ranking trick never reaches the params.
  """

  masks_of = pruning_masks

  def init(params):
    inner = prune.init(params)
    return ProtectState(inner, [jnp.zeros_like(m) for m in masks_of(inner)], jnp.zeros([], jnp.int32))

  def update(updates, state, params):
    count = cyclax.find_prune_state(state.inner).count
    old = masks_of(state.inner)
    mask_tree = cyclax.get_masks(state.inner)
    is_pruned = lambda m: m is not None  # noqa: E731
    flat_masks, treedef = jax.tree.flatten(mask_tree, is_leaf=lambda x: x is None)
    flat_params = treedef.flatten_up_to(params)
    flat_updates = treedef.flatten_up_to(updates)
    refresh = count % update_every == 0
    active = refresh & (state.refreshes_left > 0) & (count % cycle_steps != 0)
    # Ranking params: a protected weight's candidate p + u gets the leaf's largest |p + u| added.
    ranked, j = [], 0
    for m, p, u in zip(flat_masks, flat_params, flat_updates):
      if not is_pruned(m):
        ranked.append(p)
        continue
      cand = p + u
      boost = jnp.max(jnp.abs(cand)) + 1.0
      shifted = jnp.where(cand < 0, -1.0, 1.0) * (jnp.abs(cand) + boost) - u
      # Only kept weights are boosted: a pruned slot must stay zero in what the pruner reads.
      ranked.append(jnp.where(active & state.protected[j] & old[j], shifted, p))
      j += 1
    _, inner = prune.update(updates, state.inner, treedef.unflatten(ranked))
    new = masks_of(inner)
    out, j = [], 0
    for m, p, u in zip(flat_masks, flat_params, flat_updates):
      if not is_pruned(m):
        out.append(u)
        continue
      out.append(jnp.where(new[j], u, -p))
      j += 1
    cycle_start = refresh & (count % cycle_steps == 0) & (count > 0)
    protected = [jnp.where(cycle_start, n & ~o, pr) for n, o, pr in zip(new, old, state.protected)]
    left = jnp.where(cycle_start, refreshes, state.refreshes_left - jnp.where(active, 1, 0))
    return treedef.unflatten(out), ProtectState(inner, protected, left)

  return optax.GradientTransformation(init, update)


def transformation(run: Run, target, cfg: Config) -> optax.GradientTransformation:
  opt = optimizer(run, cfg)
  if run.method == "dense":
    return opt
  every = run.steps + 1 if run.method == "one-shot" else run.update_every
  prune = cyclax.magnitude_prune(sparsity_schedule(run, target, cfg), update_every=every)
  if run.method == "protect":
    prune = protect_regrown(prune, run.cycle_steps, run.update_every, cfg.protect_refreshes)
  return optax.chain(opt, prune)


def train(graphdef, params, batch_key, target, data, *, run: Run, cfg: Config):
  """One run as a ``lax.scan`` over intervals of ``run.update_every`` steps.

  Each interval starts with a refresh (the cadence and every schedule change are
  aligned to the interval), so the masks at the end of an interval are those of
  its refresh. Returns the final params and, per interval: test accuracy, the
  fraction of pruned-leaf weights regrown at its refresh (kept by it, pruned by
  the masks before it), the survival so far of the weights regrown at the
  latest cycle start, and the mask distance to the masks at the end of cycle 1
  and at the end of the previous cycle.
  """
  x_train, y_train, x_test, y_test = data
  tx = transformation(run, target, cfg)
  steps = cfg.dense_steps if run.method == "dense" else run.steps
  every = run.update_every if run.method != "dense" else 100
  chunks = steps // every

  step = minibatch_step(graphdef, tx, x_train, y_train, cfg.batch_size)
  test_accuracy = functools.partial(accuracy, graphdef, x=x_test, y=y_test)

  if run.method == "dense":

    def dense_chunk(carry, chunk_key):
      carry, _ = jax.lax.scan(step, carry, jax.random.split(chunk_key, every))
      return carry, test_accuracy(carry[0])

    (params, _), acc = jax.lax.scan(
      dense_chunk, (params, tx.init(params)), jax.random.split(batch_key, chunks)
    )
    return params, {"acc": acc}

  def chunk(carry, xs):
    p, state, history = carry
    chunk_key, flag = xs
    (p, state), _ = jax.lax.scan(step, (p, state), jax.random.split(chunk_key, every))
    history, stats = mask_history.update(history, pruning_masks(state), flag)
    return (p, state, history), {"acc": test_accuracy(p), **stats}

  state = tx.init(params)
  carry = (params, state, mask_history.init(pruning_masks(state)))
  xs = (jax.random.split(batch_key, chunks), mask_history.flags(chunks, run.cycle_steps // every))
  (params, *_), out = jax.lax.scan(chunk, carry, xs)
  return params, out


def init_params(cfg: Config):
  graphdef, _ = nnx.split(MLP((40, cfg.hidden, cfg.hidden, 10), nnx.Rngs(0)))
  seed_keys = jax.random.split(jax.random.key(0), cfg.seeds)
  params = jax.vmap(lambda k: nnx.split(MLP((40, cfg.hidden, cfg.hidden, 10), nnx.Rngs(k)))[1])(seed_keys)
  return graphdef, params, seed_keys


def run_config(graphdef, dense, seed_keys, data, run: Run, cfg: Config) -> dict:
  """Every seed and sparsity of one configuration, from the dense checkpoints, in one jitted call."""
  num_s = len(cfg.sparsities)
  params = jax.tree.map(lambda x: jnp.repeat(x, num_s, axis=0), dense)
  targets = jnp.tile(jnp.asarray(cfg.sparsities, jnp.float32), cfg.seeds)
  # The batches depend on the seed only: every method and sparsity sees the same ones.
  keys = jnp.repeat(jax.vmap(lambda k: jax.random.fold_in(k, 2))(seed_keys), num_s)
  fn = jax.jit(jax.vmap(functools.partial(train, graphdef, run=run, cfg=cfg), in_axes=(0, 0, 0, None)))
  final, out = fn(params, keys, targets, data)
  curves = {k: np.asarray(v, np.float64).reshape(cfg.seeds, num_s, -1) for k, v in out.items()}
  return summarize(curves, measured_sparsity(final).reshape(cfg.seeds, num_s))


def summarize(curves: dict, measured_sparsity: np.ndarray) -> dict:
  """What the JSON keeps of a configuration.

  Per seed and sparsity: the final test accuracy and the measured sparsity (for
  the paired tests). Per sparsity and interval: every curve averaged over seeds
  (for the cycle tables and the figures), rounded to 7 decimals.
  """
  return {
    "final_acc": curves["acc"][:, :, -1].tolist(),
    "measured_sparsity": measured_sparsity.tolist(),
    "mean": {k: np.round(v.mean(0), 7).tolist() for k, v in curves.items()},
  }


def main_run(method: str, opt: str, steps: int, cfg: Config, **changes) -> Run:
  """A headline configuration (cycles only for the cyclic methods), with optional changes."""
  cyclic = method not in ("one-shot", "gradual")
  run = Run(method, opt, steps, cfg.num_cycles if cyclic else 1, cfg.update_every)
  return run._replace(**changes)


def plan(cfg: Config) -> list[Run]:
  """Every configuration the study runs, headline first."""
  small, big = cfg.budgets[0], cfg.budgets[-1]
  runs = [main_run(m, opt, steps, cfg) for opt in cfg.optimizers for steps in cfg.budgets for m in METHODS]
  runs += [main_run("cyclical", opt, big, cfg, ramp=r) for opt in cfg.ramp_optimizers for r in cfg.ramps[1:]]
  for opt, lr in cfg.lr_sweep:
    runs += [main_run(m, opt, small, cfg, learning_rate=lr) for m in ("gradual", "cyclical")]
    if big != small:
      runs.append(main_run("gradual", opt, big, cfg, learning_rate=lr))
  runs += [main_run("cyclical", "sgd", small, cfg, num_cycles=c) for c in cfg.cycle_sweep]
  for every in cfg.update_every_sweep:
    runs += [main_run(m, "sgd", small, cfg, update_every=every) for m in ("gradual", "cyclical")]
  runs += [main_run(v, opt, small, cfg) for v in cfg.variants for opt in cfg.optimizers]
  if big != small:
    runs += [main_run(v, opt, big, cfg) for v in cfg.long_variants for opt in cfg.optimizers]
  return runs


# ----------------------------------------------------------------------------- statistics


def paired(a: np.ndarray, b: np.ndarray) -> dict:
  """Paired difference ``a - b`` over seeds: mean, 95% t-interval, t-test and Wilcoxon p-values, wins."""
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  n = len(d)
  mean = float(d.mean())
  sd = float(d.std(ddof=1)) if n > 1 else 0.0
  half = float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)) if n > 1 else float("nan")
  if n > 1 and sd > 0:
    p_t = float(stats.ttest_rel(a, b).pvalue)
  else:
    p_t = 1.0 if mean == 0 else 0.0
  p_w = float(stats.wilcoxon(d).pvalue) if n > 1 and np.any(d != 0) else 1.0
  return {
    "mean": mean,
    "low": mean - half,
    "high": mean + half,
    "p_t": p_t,
    "p_wilcoxon": p_w,
    "wins": int(np.sum(d > 0)),
    "losses": int(np.sum(d < 0)),
    "n": n,
  }


def fmt_p(p: float) -> str:
  return f"{p:.2g}" if p >= 1e-3 else f"{p:.0e}"


def fmt_diff(s: dict) -> str:
  return f"{s['mean']:+.2f} [{s['low']:+.2f}, {s['high']:+.2f}]"


# ----------------------------------------------------------------------------- tables


def final_acc(results: dict, run: Run) -> np.ndarray:
  """Final test accuracy (%), shape (seeds, sparsities)."""
  return np.asarray(results[run.label]["final_acc"]) * 100


def curve(results: dict, run: Run, key: str) -> np.ndarray:
  """``key`` per interval, mean over seeds, shape (sparsities, intervals)."""
  return np.asarray(results[run.label]["mean"][key])


def cycle_values(results: dict, run: Run, key: str) -> np.ndarray:
  """``key`` at the end of every cycle, mean over seeds, shape (sparsities, cycles)."""
  per_cycle = run.cycle_steps // run.update_every
  return mask_history.at_cycle_ends(curve(results, run, key), per_cycle, run.num_cycles)


def start_values(results: dict, run: Run, key: str) -> np.ndarray:
  """``key`` in the intervals opened by cycles 2, 3, ..., mean over seeds, shape (sparsities, cycles - 1)."""
  per_cycle = run.cycle_steps // run.update_every
  return mask_history.at_cycle_starts(curve(results, run, key), per_cycle, run.num_cycles)


def mean_std(x: np.ndarray) -> str:
  return f"{x.mean():.2f} +- {x.std():.2f}"


def paired_cell(a: np.ndarray, b: np.ndarray) -> str:
  st = paired(a, b)
  return f"{fmt_diff(st)}, p={fmt_p(st['p_t'])} / {fmt_p(st['p_wilcoxon'])}, {st['wins']}-{st['losses']}"


def opt_name(opt: str) -> str:
  return "SGD with momentum" if opt == "sgd" else "Adam"


def peak_lr(opt: str, cfg: Config) -> float:
  return cfg.sgd_learning_rate if opt == "sgd" else cfg.adam_learning_rate


def headline_tables(results: dict, cfg: Config) -> list[str]:
  lines = []
  for opt in cfg.optimizers:
    for steps in cfg.budgets:
      accs = {m: final_acc(results, main_run(m, opt, steps, cfg)) for m in METHODS}
      lines += [
        f"### {opt_name(opt)} (peak learning rate {peak_lr(opt, cfg):g}), {steps} pruning steps",
        "",
      ]
      rows = []
      for j, s in enumerate(cfg.sparsities):
        means = {m: accs[m][:, j].mean() for m in METHODS}
        best = max(means, key=means.get)
        row = [f"{s:.0%}"]
        for m in METHODS:
          cell = mean_std(accs[m][:, j])
          row.append(f"**{cell}**" if m == best else cell)
        row.append(paired_cell(accs["cyclical"][:, j], accs["gradual"][:, j]))
        row.append(paired_cell(accs["cyclical"][:, j], accs["no-drop"][:, j]))
        rows.append(row)
      header = ["sparsity", *METHODS, "cyclical - gradual", "cyclical - no-drop"]
      lines += [markdown_table(header, rows), ""]
  return lines


def lr_table(results: dict, cfg: Config) -> list[str]:
  """Gradual and cyclical at each peak learning rate, and cyclical against gradual's best."""
  small, big = cfg.budgets[0], cfg.budgets[-1]
  lines = []
  for opt in cfg.optimizers:
    lrs = sorted({peak_lr(opt, cfg), *(lr for o, lr in cfg.lr_sweep if o == opt)})
    if len(lrs) < 2:
      continue

    def acc(method, steps, lr):
      return final_acc(
        results, main_run(method, opt, steps, cfg, learning_rate=lr if lr != peak_lr(opt, cfg) else 0)
      )

    columns = [("gradual", small, lr) for lr in lrs] + [("cyclical", small, lr) for lr in lrs]
    if big != small:
      columns += [("gradual", big, lr) for lr in lrs] + [("cyclical", big, peak_lr(opt, cfg))]
    rows = []
    for j, s in enumerate(cfg.sparsities):
      row = [f"{s:.0%}"] + [mean_std(acc(m, st, lr)[:, j]) for m, st, lr in columns]
      for steps in sorted({small, big}):
        best_lr = max(lrs, key=lambda lr: acc("gradual", steps, lr)[:, j].mean())
        row.append(
          paired_cell(acc("cyclical", steps, peak_lr(opt, cfg))[:, j], acc("gradual", steps, best_lr)[:, j])
        )
      rows.append(row)
    header = ["sparsity", *[f"{m}, {st}, lr {lr:g}" for m, st, lr in columns]]
    header += [
      f"cyclical (lr {peak_lr(opt, cfg):g}) - best gradual, {st} steps" for st in sorted({small, big})
    ]
    lines += [f"### {opt_name(opt)}", "", markdown_table(header, rows), ""]
  return lines


def ramp_table(results: dict, cfg: Config, opt: str) -> list[str]:
  steps = cfg.budgets[-1]
  lines = []
  runs = [(f"{r}", main_run("cyclical", opt, steps, cfg, ramp=r)) for r in cfg.ramps]
  runs.append(("control (no-drop)", main_run("no-drop", opt, steps, cfg)))
  for j, s in enumerate(cfg.sparsities):
    rows = []
    for label, run in runs:
      acc = cycle_values(results, run, "acc")[j] * 100
      dist = cycle_values(results, run, "dist_cycle1")[j]
      rows.append([label, "accuracy (%)", *[f"{a:.2f}" for a in acc]])
      rows.append([label, "distance to the cycle-1 mask", "0", *[f"{d:.3f}" for d in dist[1:]]])
    header = ["ramp", "end of cycle", *[str(c + 1) for c in range(cfg.num_cycles)]]
    lines += [f"Target {s:.0%}:", "", markdown_table(header, rows), ""]
  return lines


def regrowth_table(results: dict, cfg: Config) -> list[str]:
  runs = [main_run("cyclical", opt, steps, cfg) for opt in cfg.optimizers for steps in cfg.budgets]
  runs += [main_run(v, opt, steps, cfg) for steps, v in variant_budgets(cfg) for opt in cfg.optimizers]
  rows = []
  for run in runs:
    for j, s in enumerate(cfg.sparsities):
      regrown = start_values(results, run, "regrown")[j] * 100
      survival = cycle_values(results, run, "survival")[j, 1:] * 100
      share = cycle_values(results, run, "regrown_share")[j, 1:] * 100
      same = (1 - cycle_values(results, run, "dist_prev_end")[j, 1:]) * 100
      rows.append(
        [
          f"{run.method}, {run.optimizer}, {run.steps}",
          f"{s:.0%}",
          " / ".join(f"{v:.1f}" for v in regrown),
          " / ".join(f"{v:.2f}" for v in survival),
          f"{(1 - s) * 100:.0f}",
          " / ".join(f"{v:.1f}" for v in share),
          " / ".join(f"{v:.1f}" for v in same),
        ]
      )
  header = [
    "run",
    "target",
    "regrown at the cycle start (% of weights)",
    "survival: of those, kept at the cycle end (%)",
    "survival of a random weight (%)",
    "share of the cycle-end kept set regrown at its start (%)",
    "cycle-end mask vs the previous one, 1 - distance (%)",
  ]
  return [markdown_table(header, rows), ""]


def sweep_table(results: dict, cfg: Config) -> list[str]:
  steps = cfg.budgets[0]
  base = final_acc(results, main_run("gradual", "sgd", steps, cfg))
  rows = []

  def add(name: str, run: Run) -> None:
    acc = final_acc(results, run)
    for j, s in enumerate(cfg.sparsities):
      rows.append([name, f"{s:.0%}", mean_std(acc[:, j]), paired_cell(acc[:, j], base[:, j])])

  for cycles in sorted({*cfg.cycle_sweep, cfg.num_cycles}):
    add(f"cyclical, {cycles} cycles", main_run("cyclical", "sgd", steps, cfg, num_cycles=cycles))
  for every in cfg.update_every_sweep:
    add(f"cyclical, update_every {every}", main_run("cyclical", "sgd", steps, cfg, update_every=every))
    add(f"gradual, update_every {every}", main_run("gradual", "sgd", steps, cfg, update_every=every))
  header = ["run (SGD)", "target", "accuracy (%)", f"minus gradual (update_every {cfg.update_every})"]
  return [markdown_table(header, rows), ""]


def variant_budgets(cfg: Config) -> list[tuple[int, str]]:
  """(budget, variant) pairs the study runs."""
  pairs = [(cfg.budgets[0], v) for v in cfg.variants]
  if cfg.budgets[-1] != cfg.budgets[0]:
    pairs += [(cfg.budgets[-1], v) for v in cfg.long_variants]
  return pairs


def variant_table(results: dict, cfg: Config) -> list[str]:
  rows = []
  for steps, v in variant_budgets(cfg):
    for opt in cfg.optimizers:
      cyc = final_acc(results, main_run("cyclical", opt, steps, cfg))
      grad = final_acc(results, main_run("gradual", opt, steps, cfg))
      run = main_run(v, opt, steps, cfg)
      acc = final_acc(results, run)
      survival = cycle_values(results, run, "survival")[:, 1:].mean(axis=1) * 100
      for j, s in enumerate(cfg.sparsities):
        rows.append(
          [
            f"{v}, {opt}, {steps}",
            f"{s:.0%}",
            mean_std(acc[:, j]),
            f"{survival[j]:.2f}",
            paired_cell(acc[:, j], cyc[:, j]),
            paired_cell(acc[:, j], grad[:, j]),
          ]
        )
  header = ["variant", "target", "accuracy (%)", "survival (%)", "minus cyclical", "minus gradual"]
  return [markdown_table(header, rows), ""]


# ----------------------------------------------------------------------------- figures


def plot_accuracy(results: dict, cfg: Config, path: str) -> None:
  panels = [(opt, steps) for opt in cfg.optimizers for steps in cfg.budgets]
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
  for ax, (opt, steps) in zip(axes[0], panels):
    accs = {m: final_acc(results, main_run(m, opt, steps, cfg)) for m in METHODS}
    accuracy_panel(ax, cfg.sparsities, accs, np.mean(results["dense"]["acc"]) * 100)
    ax.set_title(f"{opt}, {steps} steps, {cfg.seeds} seeds (mean +- std)", fontsize=9)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_regrowth(results: dict, cfg: Config, path: str) -> None:
  """Figure-1 analogue at the highest target: regrowth at every refresh, survival, test accuracy."""
  j = len(cfg.sparsities) - 1
  steps = cfg.budgets[-1]
  fig, axes = plt.subplots(1, len(cfg.optimizers), figsize=(6 * len(cfg.optimizers), 3.8), squeeze=False)
  for ax, opt in zip(axes[0], cfg.optimizers):
    run = main_run("cyclical", opt, steps, cfg)
    at = np.arange(steps // run.update_every) * run.update_every
    regrown = curve(results, run, "regrown")[j] * 100
    survival = curve(results, run, "survival")[j] * 100
    width = run.update_every * 0.9
    ax.bar(
      at, regrown, width=width, align="edge", color="tab:green", alpha=0.6, label="regrown at the refresh"
    )
    ax.plot(at + run.update_every, survival, color="tab:olive", lw=1, label="cycle-start regrown still kept")
    ax.set_xlabel("step")
    ax.set_ylabel("% of weights / % of regrown")
    ax.legend(loc="upper left", fontsize=7)
    twin = ax.twinx()
    for m, color in (("gradual", "tab:orange"), ("cyclical", "tab:blue")):
      acc = curve(results, main_run(m, opt, steps, cfg), "acc")[j] * 100
      twin.plot(at + run.update_every, acc, lw=1.2, color=color, label=f"{m} test accuracy")
    ends = cycle_values(results, run, "acc")[j] * 100
    end_steps = np.arange(1, run.num_cycles + 1) * run.cycle_steps
    twin.plot(end_steps, ends, "k*", ms=9, label="cyclical, end of cycle")
    for e, a in zip(end_steps, ends):
      twin.annotate(f"{a:.1f}", (e, a), textcoords="offset points", xytext=(-12, 6), fontsize=7)
    twin.set_ylabel("test accuracy (%)")
    twin.legend(loc="lower right", fontsize=7)
    ax.set_title(f"{opt}, target {cfg.sparsities[j]:.0%}, {steps} steps", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_schedules(cfg: Config, path: str) -> None:
  steps = cfg.budgets[-1]
  target = cfg.sparsities[-1]
  t = np.arange(steps)
  fig, (ax_s, ax_lr) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
  runs = [main_run(m, "sgd", steps, cfg) for m in ("gradual", "cyclical", "no-drop", *cfg.variants)]
  runs += [main_run("cyclical", "sgd", steps, cfg, ramp=r) for r in cfg.ramps[1:]]
  for run in runs:
    name = run.method if run.ramp == "cubic" else f"cyclical, {run.ramp} ramp"
    if run.method == "protect":
      continue  # its schedule is cyclical's
    ax_s.plot(t, np.asarray(jax.vmap(sparsity_schedule(run, target, cfg))(t)), label=name, lw=1)
  for run in runs[:2]:
    ax_lr.plot(t, np.asarray(jax.vmap(learning_rate(run, cfg))(t)), label=run.method)
  ax_s.set_ylabel("sparsity")
  ax_s.set_title(f"schedules of examples/mnist1d.py (target {target:.0%}, {steps} steps)", fontsize=10)
  ax_s.legend(fontsize=7)
  ax_lr.set_ylabel("learning rate (SGD)")
  ax_lr.set_xlabel("step after the dense checkpoint")
  ax_lr.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ----------------------------------------------------------------------------- main


def run_all(cfg: Config, data) -> tuple[dict, dict]:
  runs = plan(cfg)
  results, seconds = {}, {}
  graphdef, init, seed_keys = init_params(cfg)
  with tqdm(total=1 + len(runs), desc="mnist1d configurations") as progress:
    start = time.perf_counter()
    dense_fn = jax.jit(
      jax.vmap(functools.partial(train, graphdef, run=Run("dense"), cfg=cfg), in_axes=(0, 0, None, None))
    )
    dense, out = dense_fn(init, jax.vmap(lambda k: jax.random.fold_in(k, 1))(seed_keys), 0.0, data)
    results["dense"] = {"acc": np.asarray(out["acc"][:, -1]).tolist()}
    seconds["dense"] = time.perf_counter() - start
    progress.update(1)
    for run in runs:
      progress.set_postfix_str(run.label)
      start = time.perf_counter()
      results[run.label] = run_config(graphdef, dense, seed_keys, data, run, cfg)
      seconds[run.label] = time.perf_counter() - start
      progress.update(1)
  return results, seconds


def main() -> None:
  args = parse_args(
    "One-shot vs gradual vs cyclical pruning of an MLP on MNIST-1D, with ablations.", replot=True
  )
  cfg = QUICK if args.quick else Config()
  json_path = os.path.join(args.out, "mnist1d.json")
  if args.replot:
    with open(json_path) as f:
      saved = json.load(f)
    cfg = Config(**{k: _as_tuple(v) for k, v in saved["config"].items()})
    results, seconds = saved["results"], saved["seconds"]
  else:
    data = load_data(cfg.samples)
    results, seconds = run_all(cfg, data)
    with open(json_path, "w") as f:
      json.dump({"config": dataclasses.asdict(cfg), "results": results, "seconds": seconds}, f)
  write_report(results, seconds, cfg, args)


def _as_tuple(value):
  """JSON lists back to the tuples of a Config."""
  return tuple(_as_tuple(v) for v in value) if isinstance(value, list) else value


def describe_variant(name: str, cfg: Config) -> str:
  run = main_run("hold", "sgd", cfg.budgets[0], cfg)
  text = VARIANTS[name].replace("HOLD_STEPS", f"{hold_steps(run, cfg)} of its {run.cycle_steps}")
  return text.replace("PROTECT_REFRESHES", str(cfg.protect_refreshes))


def write_report(results: dict, seconds: dict, cfg: Config, args) -> None:
  command = "python examples/mnist1d.py" + (" --quick" if args.quick else "")
  dense = np.asarray(results["dense"]["acc"]) * 100
  total = sum(seconds.values())
  small, big = cfg.budgets[0], cfg.budgets[-1]
  lines = [
    "# MNIST-1D: one-shot vs gradual vs cyclical pruning, with ablations",
    "",
    f"Generated by `{command}` ({total:.0f} s for all {len(seconds)} configurations, compilation "
    "included; per-configuration times at the end). `python examples/mnist1d.py --replot` redraws the "
    "tables and figures from `mnist1d.json`.",
    "",
    f"Config: `{dataclasses.asdict(cfg)}`.",
    "",
    f"Dense MLP (40-{cfg.hidden}-{cfg.hidden}-10) after {cfg.dense_steps} Adam steps: "
    f"{dense.mean():.2f} +- {dense.std():.2f}% test accuracy over {cfg.seeds} seeds. Every pruning run "
    f"starts from its seed's dense checkpoint and sees the same batches. The cyclic methods use "
    f"{cfg.num_cycles} cycles, a ramp over {cfg.ramp_fraction:.0%} of each cycle and a cosine learning "
    "rate restarted every cycle; one-shot and gradual use one cosine over the whole budget.",
    "",
    "## Final test accuracy",
    "",
    "Test accuracy (%), mean +- std over seeds (best mean in bold). The paired columns give the mean "
    "difference in points (same seed, same dense checkpoint, same batches), its 95% t-interval, the "
    "p-values of the paired t-test / Wilcoxon signed-rank test, and wins-losses over seeds.",
    "",
    *headline_tables(results, cfg),
  ]
  if cfg.lr_sweep:
    lines += [
      "## Peak learning rate",
      "",
      f"Gradual and cyclical at {small} steps and gradual at {big} steps, at each peak learning rate; "
      "the last columns pair cyclical at the headline rate with gradual at whichever rate gave gradual the "
      "best mean for that target (chosen on the test set, which favours gradual).",
      "",
      *lr_table(results, cfg),
    ]
  lines += [
    "## Ramp ablation (the paper's Table 5)",
    "",
    f"Cyclical pruning, {big} steps in {cfg.num_cycles} cycles: test accuracy (%) at the end of every "
    "cycle and the Jaccard distance (`cyclax.mask_distance`) of the kept set to the one at the end of "
    "cycle 1, mean over seeds. The step ramp holds the cycle's starting sparsity and jumps to the target "
    "at half the cycle. The control (no-drop) keeps the target sparsity after cycle 1.",
    "",
  ]
  for opt in cfg.ramp_optimizers:
    lines += [f"### {opt_name(opt)}", "", *ramp_table(results, cfg, opt)]
  lines += [
    "## Regrowth and survival at every cycle start",
    "",
    "Regrown: kept by the refresh that opens the cycle and pruned by the masks just before it, as a "
    "fraction of all pruned-leaf weights. Survival: the fraction of those that the mask at the end of "
    "that cycle still keeps; a weight picked at random would survive with probability 1 - target. Share: "
    "the fraction of the end-of-cycle kept set that was regrown at the cycle's start. Computed from "
    "snapshots of the masks inside the scan; one value per cycle 2, 3, ..., mean over seeds.",
    "",
    *regrowth_table(results, cfg),
  ]
  if cfg.cycle_sweep or cfg.update_every_sweep:
    lines += [
      "## Number of cycles and refresh interval",
      "",
      f"SGD, {small} steps; paired against gradual with update_every {cfg.update_every}.",
      "",
      *sweep_table(results, cfg),
    ]
  lines += [
    "## Beyond the paper",
    "",
    *[f"- {name}: {describe_variant(name, cfg)}." for name in cfg.variants],
    "",
    f"{cfg.num_cycles} cycles; differences are paired by seed, against cyclical and gradual at the same "
    "budget and optimizer.",
    "",
    *variant_table(results, cfg),
    "## Figures",
    "",
    "![accuracy against sparsity](mnist1d_accuracy.png)",
    "",
    "![regrowth, survival and accuracy](mnist1d_regrowth.png)",
    "",
    "![schedules](mnist1d_schedules.png)",
    "",
    "## Run times",
    "",
    markdown_table(["configuration", "seconds"], [[k, f"{v:.1f}"] for k, v in seconds.items()]),
    "",
  ]
  plot_accuracy(results, cfg, os.path.join(args.out, "mnist1d_accuracy.png"))
  plot_regrowth(results, cfg, os.path.join(args.out, "mnist1d_regrowth.png"))
  plot_schedules(cfg, os.path.join(args.out, "mnist1d_schedules.png"))
  text = "\n".join(lines)
  save_markdown(args.out, "mnist1d.md", text)
  print(f"wrote {args.out}/mnist1d.md, mnist1d.json and three PNGs")


if __name__ == "__main__":
  main()
