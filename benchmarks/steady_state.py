"""What does cyclax cost per training step, between refreshes and at a refresh?

Usage (from the ``benchmarks/`` directory):
  python steady_state.py --tree 10x1m --repeats 15
  python steady_state.py --tree 100m --repeats 7 --jaxpruner /path/to/jaxpruner-checkout

Times one jitted step ``params, state = step(params, state, grads)`` (gradients
given, ``optax.apply_updates`` inside, params and optimizer state donated) for
``optax.sgd(1e-3)`` and ``optax.adamw(1e-3)``, each alone and followed by
``cyclax.magnitude_prune(0.9, update_every=10**6)``:

- default, ``optax.chain``: ``tx.update(grads, state, params)``
  (``refresh_masks=None``): the compiled step decides whether to refresh.
  ``update_every`` is so large that every timed step keeps the masks (the
  refresh at count 0 is taken by the warm-up);
- default, ``cyclax.chain``: the same default path, with the chain built by
  ``cyclax.chain`` (its conditional reads no update buffer);
- static step: ``refresh_masks=False``, the stored masks applied, nothing else
  compiled in;
- static refresh: ``refresh_masks=True``, masks recomputed from ``p + u`` at
  every timed step, against the kernel alone (``prune_masks`` on existing
  arrays, one exact selection per pruned leaf, as the refresh does).

With ``--jaxpruner PATH`` (or the ``JAXPRUNER`` environment variable) naming a
checkout of google-research/jaxpruner (``git clone
https://github.com/google-research/jaxpruner``; it needs ``pip install -e ".[bench]"``),
its ``MagnitudePruning`` wrapped around the same optimizers is timed in the
same run: a step between refreshes and a step that refreshes at every call
(argsort of the params per leaf), both followed by its
``post_gradient_update`` (params times masks) as its README prescribes.

All rows alternate call by call; ratios are taken per repeat. Next to each time:
the memory a call touches for the first time (minor page faults of the process
during the call, times the page size; XLA:CPU maps its temporaries afresh at
every execution), and two device-independent figures of the compiled program,
``memory_analysis()`` temp bytes and ``cost_analysis()`` bytes accessed (XLA
counts every branch of a conditional and one trip of every loop, so for the
default path the figure includes the refresh branch once).
"""

from __future__ import annotations

import functools
import os
import resource
import sys

import _common
import jax
import numpy as np
import optax

import cyclax
from cyclax import _select

SPARSITY = 0.9
NEVER = 10**6  # update_every / refresh period long enough that no timed step refreshes
OPTIMIZERS = {"sgd": lambda: optax.sgd(1e-3), "adamw": lambda: optax.adamw(1e-3)}


def load_jaxpruner(path):
  """``((jaxpruner, its sparsity_distributions), None)`` from a checkout, or ``(None, why not)``."""
  if not path:
    return None, "no --jaxpruner PATH (or JAXPRUNER environment variable) given"
  if not os.path.isfile(os.path.join(path, "jaxpruner", "__init__.py")):
    return None, f"{path!r} holds no jaxpruner/ package"
  # jaxpruner calls the jax.tree_* aliases that current JAX removed.
  for name, fn in {
    "tree_map": jax.tree.map,
    "tree_leaves": jax.tree.leaves,
    "tree_flatten": jax.tree.flatten,
    "tree_unflatten": jax.tree.unflatten,
    "tree_structure": jax.tree.structure,
  }.items():
    if not hasattr(jax, name):
      setattr(jax, name, fn)
  sys.path.insert(0, os.path.abspath(path))
  try:
    import jaxpruner
    from jaxpruner import sparsity_distributions
  except ImportError as e:
    return (
      None,
      f"jaxpruner could not be imported ({e}); `pip install -e '.[bench]'` installs its dependencies",
    )
  return (jaxpruner, sparsity_distributions), None


def cyclax_step(opt, refresh_masks, chain=optax.chain):
  tx = chain(OPTIMIZERS[opt](), cyclax.magnitude_prune(SPARSITY, update_every=NEVER))

  def step(params, state, grads, refresh_masks=None):
    updates, state = tx.update(grads, state, params, refresh_masks=refresh_masks)
    return optax.apply_updates(params, updates), state

  return (
    tx,
    jax.jit(step, static_argnames="refresh_masks", donate_argnums=(0, 1)),
    {"refresh_masks": refresh_masks},
  )


def optimizer_step(opt):
  tx = OPTIMIZERS[opt]()

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return tx, jax.jit(step, donate_argnums=(0, 1)), {}


def jaxpruner_step(jp, opt, update_freq):
  jaxpruner, distributions = jp
  pruner = jaxpruner.MagnitudePruning(
    sparsity_distribution_fn=functools.partial(distributions.uniform, sparsity=SPARSITY),
    scheduler=jaxpruner.PeriodicSchedule(update_freq=update_freq, update_start_step=0, update_end_step=None),
  )
  tx = pruner.wrap_optax(OPTIMIZERS[opt]())

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    return pruner.post_gradient_update(params, state), state

  return tx, jax.jit(step, donate_argnums=(0, 1)), {}


def compiled_figures(compiled):
  """(temp bytes, bytes accessed) of a compiled program."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return compiled.memory_analysis().temp_size_in_bytes, float((cost or {}).get("bytes accessed", np.nan))


def fmt_bytes(n):
  if not np.isfinite(n):
    return "n/a"
  return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def main():
  parser = _common.tree_timing_parser(
    __doc__, 15, "comma-separated row kinds to leave out: default, static, refresh, kernel, jaxpruner"
  )
  parser.add_argument("--optimizers", default="sgd,adamw", help="comma-separated, from: sgd, adamw")
  parser.add_argument("--jaxpruner", default=os.environ.get("JAXPRUNER"), help="path of a jaxpruner checkout")
  args = parser.parse_args()
  skip = {s.strip() for s in args.skip.split(",") if s.strip()}
  opts = [o.strip() for o in args.optimizers.split(",")]
  for o in opts:
    if o not in OPTIMIZERS:
      parser.error(f"--optimizers: unknown {o!r}; choose from {sorted(OPTIMIZERS)}")

  jp, why_not = (None, "left out by --skip") if "jaxpruner" in skip else load_jaxpruner(args.jaxpruner)

  grads = _common.make_tree(args.tree, seed=1)
  # name -> (kind, optimizer, (tx, jitted step, static kwargs))
  rows = {}
  for opt in opts:
    rows[opt] = ("alone", opt, optimizer_step(opt))
    if "default" not in skip:
      rows[f"{opt} + cyclax default, optax.chain"] = ("default", opt, cyclax_step(opt, None))
      rows[f"{opt} + cyclax default, cyclax.chain"] = (
        "default cyclax.chain",
        opt,
        cyclax_step(opt, None, cyclax.chain),
      )
    if "static" not in skip:
      rows[f"{opt} + cyclax static step (refresh_masks=False)"] = ("static", opt, cyclax_step(opt, False))
    if "refresh" not in skip:
      rows[f"{opt} + cyclax static refresh (refresh_masks=True)"] = ("refresh", opt, cyclax_step(opt, True))
    if jp is not None:
      rows[f"{opt} + jaxpruner step"] = ("jp step", opt, jaxpruner_step(jp, opt, NEVER))
      rows[f"{opt} + jaxpruner refresh"] = ("jp refresh", opt, jaxpruner_step(jp, opt, 1))

  # Every row owns its params and state (donated); compiled once, ahead of time.
  runs, figures = {}, {}
  for name, (_, _, (tx, step, static)) in rows.items():
    params = _common.make_tree(args.tree, seed=0)
    state = tx.init(params)
    compiled = step.lower(params, state, grads, **static).compile()
    figures[name] = compiled_figures(compiled)
    runs[name] = [params, state, compiled]

  fns = {}
  faults = {name: [] for name in rows}

  def call(name):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    run = runs[name]
    run[0], run[1] = run[2](run[0], run[1], grads)
    jax.block_until_ready(run[0])
    faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return run[0]

  for name in rows:
    fns[name] = functools.partial(call, name)

  kernel_name = "kernel alone (prune_masks on existing arrays)"
  if "kernel" not in skip:
    scores = _common.prunable(_common.make_tree(args.tree, seed=0))
    ks = [cyclax.num_to_prune(SPARSITY, s.size) for s in scores]
    kernel = jax.jit(lambda s: _select.prune_masks(s, ks)).lower(scores).compile()
    figures[kernel_name] = compiled_figures(kernel)
    faults[kernel_name] = []

    def call_kernel():
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      out = jax.block_until_ready(kernel(scores))
      faults[kernel_name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
      return out

    fns[kernel_name] = call_kernel

  # warmup=2: the default path refreshes at count 0, so every timed call of it keeps the masks.
  times = _common.time_interleaved(fns, args.repeats, warmup=2, settle=args.settle)

  n = _common.count_params(jax.tree.leaves(grads))
  print(
    f"tree {args.tree}: {n / 1e6:.1f}M params, {len(_common.prunable(grads))} pruned leaves, "
    f"sparsity {SPARSITY}"
  )
  print(_common.machine())
  if jp is None:
    print(f"jaxpruner rows left out: {why_not}")
  for name, (kind, _, _) in rows.items():
    if kind.startswith("default"):
      masks = jax.tree.leaves(cyclax.get_masks(runs[name][1]))
      kept = float(np.mean([np.mean(np.asarray(m)) for m in masks]))
      print(f"kept fraction of the pruned leaves while timed ({name}): {kept:.3f}")
  print(
    f"\none jitted step (gradients given), params and state donated (median [min-max] of {args.repeats} "
    f"calls, each after {args.settle} untimed call(s) of the same function; ratios per repeat, same run)"
  )
  kernel_t = times.get(kernel_name)
  table = []
  for name, t in times.items():
    kind, opt, _ = rows.get(name, ("kernel", None, None))
    vs_opt = _common.fmt_ratio(t, times[opt]) if opt is not None else ""
    vs_kernel = (
      _common.fmt_ratio(t, kernel_t)
      if kernel_t is not None and kind in ("refresh", "kernel", "jp refresh")
      else ""
    )
    mib = np.median(faults[name][-args.repeats :]) * resource.getpagesize() / 2**20
    temp, accessed = figures[name]
    table.append(
      [name, _common.fmt_time(t), vs_opt, vs_kernel, f"{mib:.0f} MiB", fmt_bytes(temp), fmt_bytes(accessed)]
    )
  header = [
    "step",
    "time",
    "time / optimizer alone",
    "time / kernel alone",
    "page faults per call",
    "temp (memory_analysis)",
    "bytes accessed (cost_analysis)",
  ]
  _common.print_table(header, table)

  # The targets, as same-run ratios.
  targets = []
  for opt in opts:
    by_kind = {kind: times[name] for name, (kind, o, _) in rows.items() if o == opt}
    checks = [
      ("static step / optimizer alone", "static", "alone", "<= 1.10x"),
      ("refresh / kernel alone", "refresh", "kernel", "<= 2x"),
      ("jaxpruner refresh / cyclax refresh", "jp refresh", "refresh", ">= 100x"),
      ("cyclax default, optax.chain / jaxpruner step", "default", "jp step", "< 1x"),
      ("cyclax default, cyclax.chain / jaxpruner step", "default cyclax.chain", "jp step", "< 1x"),
      ("cyclax default, optax.chain / optimizer alone", "default", "alone", "as low as possible"),
      (
        "cyclax default, cyclax.chain / optimizer alone",
        "default cyclax.chain",
        "alone",
        "as low as possible",
      ),
    ]
    by_kind["kernel"] = kernel_t
    for what, a, b, target in checks:
      if by_kind.get(a) is not None and by_kind.get(b) is not None:
        targets.append([opt, what, _common.fmt_ratio(by_kind[a], by_kind[b]), target])
  print("\ntargets (median [min-max] of per-repeat ratios)")
  _common.print_table(["optimizer", "ratio", "measured", "target"], targets)


if __name__ == "__main__":
  main()
