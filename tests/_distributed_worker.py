"""Distributed training runs for ``tests/test_distributed.py``, one per process.

Usage: ``python tests/_distributed_worker.py SCENARIO OUT_DIR [PROCESS_ID PORT]``,
with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` set by the caller.
Each scenario trains with cyclax on several devices and writes ``OUT_DIR/result.npz``
(final params and masks, per device where devices could disagree) and
``OUT_DIR/facts.json`` (shardings, avals, collectives in the compiled HLO). The
test process compares them with unsharded runs of the same problem.

Two problems are shared with the test process:

* ``quadratic_problem``: weights pulled towards targets, ``loss = sum((p - t)**2) / 2``,
  trained with SGD at learning rate 1/2. Every value lives on a dyadic grid, so
  every step is exact in float32 and magnitudes tie at every threshold; the
  gradient has no cross-device reduction, so a sharded run must match an unsharded
  one (and the NumPy reference) bit for bit, ties included.
* ``mlp_problem``: a two-layer MLP on random data with Adam, for data parallelism.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from functools import reduce

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import cyclax

NUM_STEPS = 6
# A worker never outlives this, nor the process that started it (a peer that died can
# leave the other blocked in a collective).
WORKER_LIMIT_S = 300
# The cyclical schedule with cycle_steps=2 and ramp_fraction=0.5 takes the
# exact values 0, 0.75, 0.375, 0.75, 0.375, 0.75: pruning, regrowth, pruning.
SCHEDULE = dict(num_cycles=3, cycle_steps=2, initial_sparsity=0.375, ramp_fraction=0.5)
TARGET = 0.75
LEARNING_RATE = 0.5

# How the quadratic problem's leaves are laid out over a one-axis mesh "x".
SPECS = {"w1": P(None, "x"), "b1": P("x"), "w2": P("x", None), "w3": P(), "b2": P()}
# The same layout for shard_map: the sharded dimension of each leaf, None = replicated.
SHARDED_DIMS = {"w1": 1, "b1": 0, "w2": 0, "w3": None, "b2": None}


# The shard_map runs: per name, extra arguments of the pruning transformation.
SHARD_MAP_CONFIGS = {
  "uniform": {},
  "global": {"distribution": "global"},
  "erk": {"distribution": "erk", "overrides": {"w3": 0.5}},
}
# Meshes of the shard_map runs: (shape, axis names, the axis the leaves are split over).
# "tuple_axes" splits one dimension over two mesh axes; "data_model" replicates every
# leaf over "data" and splits it over "model", as in data + tensor parallelism.
SHARD_MAP_MESHES = {
  "uniform": ((8,), ("x",), "x"),
  "global": ((8,), ("x",), "x"),
  "erk": ((8,), ("x",), "x"),
  "tuple_axes": ((4, 2), ("x", "y"), ("x", "y")),
  "data_model": ((2, 4), ("data", "model"), "model"),
}
SHARD_MAP_CONFIGS.update(tuple_axes={}, data_model={})


def quadratic_problem(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Initial params and targets on a 1/16 grid in [-2, 2] (many equal magnitudes)."""
  rng = np.random.default_rng(seed)
  shapes = {"w1": (16, 32), "b1": (32,), "w2": (32, 8), "w3": (4, 8), "b2": (8,)}
  grid = lambda shape: (rng.integers(-32, 33, size=shape) / 16).astype(np.float32)
  return {k: grid(s) for k, s in shapes.items()}, {k: grid(s) for k, s in shapes.items()}


def quadratic_tx(**kwargs) -> optax.GradientTransformation:
  return optax.chain(
    optax.sgd(LEARNING_RATE), cyclax.cyclical_prune(TARGET, update_every=1, **SCHEDULE, **kwargs)
  )


def quadratic_grads(params, targets):
  """The gradient of ``sum((p - t)**2) / 2``, written out: elementwise, on any layout."""
  return {k: p - targets[k] for k, p in params.items()}


# A schedule whose default cadence skips steps (cycles of 6, ramps ending at 5, a refresh every 4), for
# the runs that compare the static loop (refresh_masks from refresh_due) with the default loop.
STATIC_SCHEDULE = dict(num_cycles=2, cycle_steps=6, update_every=4)
STATIC_STEPS = 9


def _static_equals_default(make_step, init, params, targets) -> bool:
  """Runs the default and the static loop from the same start; True if every step is bitwise equal.

  ``make_step(refresh_masks)`` returns a compiled step; ``init(params)`` the state.
  """
  prune = cyclax.cyclical_prune(TARGET, **STATIC_SCHEDULE)
  steps = {flag: make_step(flag) for flag in (None, True, False)}
  histories = []
  for static in (False, True):
    p, state = params, init(params)
    history = []
    for t in range(STATIC_STEPS):
      p, state = steps[prune.refresh_due(t) if static else None](p, state, targets)
      history.append([np.asarray(x).tobytes() for x in jax.tree.leaves((p, state))])
    histories.append(history)
  return histories[0] == histories[1]


def static_tx(**kwargs) -> optax.GradientTransformation:
  return optax.chain(optax.sgd(LEARNING_RATE), cyclax.cyclical_prune(TARGET, **STATIC_SCHEDULE, **kwargs))


def mlp_problem(seed: int = 0, num_shards: int = 8):
  """MLP params and ``num_shards`` batches of (x, y) for data parallelism."""
  keys = jax.random.split(jax.random.key(seed), 4)
  params = {
    "w1": jax.random.normal(keys[0], (16, 32)) / 4,
    "b1": jnp.zeros(32),
    "w2": jax.random.normal(keys[1], (32, 8)) / 4,
    "b2": jnp.zeros(8),
  }
  x = jax.random.normal(keys[2], (num_shards, 8, 16))
  y = jax.random.normal(keys[3], (num_shards, 8, 8))
  return params, x, y


def mlp_tx() -> optax.GradientTransformation:
  return optax.chain(optax.adam(0.05), cyclax.cyclical_prune(TARGET, update_every=1, **SCHEDULE))


def mlp_loss(params, x, y):
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  return jnp.mean((h @ params["w2"] + params["b2"] - y) ** 2)


def mean_over_shards(grads: list) -> dict:
  """Average per-shard gradients in shard order, the order the CPU all-reduce sums in."""
  return jax.tree.map(lambda *g: reduce(jnp.add, g) / len(g), *grads)


def _hlo_collectives(compiled_text: str) -> dict[str, list[str]]:
  """The collective instructions of a compiled module, by kind."""
  kinds = ("all-gather", "all-to-all", "all-reduce", "reduce-scatter", "collective-permute")
  found = {k: [] for k in kinds}
  for line in compiled_text.splitlines():
    for kind in kinds:
      if f" {kind}(" in line or f" {kind}-start(" in line:
        found[kind].append(line.strip())
  return found


def _specs_of(tree) -> dict[str, str]:
  return {k: str(getattr(v.sharding, "spec", v.sharding)) for k, v in tree.items() if v is not None}


def _equivalent(tree: dict, like: dict) -> dict[str, bool]:
  """Per array leaf of ``tree``: is it placed like the same leaf of ``like`` (arrays or shardings)?"""
  sharding = lambda x: getattr(x, "sharding", x)
  return {k: v.sharding.is_equivalent_to(sharding(like[k]), v.ndim) for k, v in tree.items() if v is not None}


def _save(out_dir: str, arrays: dict[str, np.ndarray], facts: dict) -> None:
  np.savez(os.path.join(out_dir, "result.npz"), **arrays)
  with open(os.path.join(out_dir, "facts.json"), "w") as f:
    json.dump(facts, f)


def _flat(prefix: str, tree: dict) -> dict[str, np.ndarray]:
  return {f"{prefix}/{k}": np.asarray(v) for k, v in tree.items() if v is not None}


def run_pmap(out_dir: str) -> None:
  """Data parallelism: cyclax inside pmap, gradients averaged with pmean."""
  n = jax.device_count()
  params, x, y = mlp_problem(num_shards=n)
  tx = mlp_tx()

  def step(params, state, x, y):
    grads = jax.lax.pmean(jax.grad(mlp_loss)(params, x, y), "batch")
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  p_step = jax.pmap(step, axis_name="batch")
  replicate = lambda tree: jax.tree.map(lambda a: jnp.broadcast_to(a, (n, *a.shape)), tree)
  params_r = replicate(params)
  state_r = replicate(tx.init(params))
  for _ in range(NUM_STEPS):
    params_r, state_r = p_step(params_r, state_r, x, y)
  masks_r = cyclax.get_masks(state_r)
  # Keep every device's copy: the test checks that they agree.
  arrays = {**_flat("params", params_r), **_flat("masks", masks_r)}

  # pmap over params split into blocks (the quadratic problem), with axis_name.
  params, targets = quadratic_problem()
  dims = {k: d for k, d in SHARDED_DIMS.items() if d is not None}
  split = lambda tree: {k: np.stack(np.split(tree[k], n, axis=d)) for k, d in dims.items()}
  tx = quadratic_tx(axis_name="blocks", sharded_dims=dims)

  def block_step(params, state, targets):
    updates, state = tx.update(quadratic_grads(params, targets), state, params)
    return optax.apply_updates(params, updates), state

  blocks, targets = split(params), split(targets)
  state = jax.pmap(tx.init)(blocks)
  p_step = jax.pmap(block_step, axis_name="blocks")
  for _ in range(NUM_STEPS):
    blocks, state = p_step(blocks, state, targets)
  join = lambda tree: {
    k: np.concatenate(list(np.asarray(tree[k])), axis=d) for k, d in dims.items() if tree[k] is not None
  }
  arrays.update(_flat("blocks/params", join(blocks)))
  arrays.update(_flat("blocks/masks", join(cyclax.get_masks(state))))
  tx2 = static_tx(axis_name="blocks", sharded_dims=dims)

  def make_step(flag):
    def flagged(params, state, targets):
      updates, state = tx2.update(quadratic_grads(params, targets), state, params, refresh_masks=flag)
      return optax.apply_updates(params, updates), state

    return jax.pmap(flagged, axis_name="blocks")

  same = _static_equals_default(make_step, jax.pmap(tx2.init), split(params), targets)
  _save(out_dir, arrays, {"num_devices": n, "static_equals_default": same})


def run_jit(out_dir: str, explicit: bool) -> None:
  """Params sharded over a mesh; state from init, one jitted step, its HLO."""
  axis_type = AxisType.Explicit if explicit else AxisType.Auto
  mesh = jax.make_mesh((jax.device_count(),), ("x",), axis_types=(axis_type,))
  params, targets = quadratic_problem()
  shardings = {k: NamedSharding(mesh, s) for k, s in SPECS.items()}
  tx = quadratic_tx()

  def step(params, state, targets):
    updates, state = tx.update(quadratic_grads(params, targets), state, params)
    return optax.apply_updates(params, updates), state

  with jax.set_mesh(mesh):
    params = jax.device_put(params, shardings)
    targets = jax.device_put(targets, shardings)
    # In explicit mode shardings are part of the types, so a jitted init keeps
    # them; in automatic mode an eager init (or out_shardings) places the state.
    state = jax.jit(tx.init)(params) if explicit else tx.init(params)
    init_masks = cyclax.get_masks(state)
    facts = {
      "param_specs": _specs_of(params),
      "init_mask_specs": _specs_of(init_masks),
      "init_masks_like_params": _equivalent(init_masks, params),
    }
    init_types = jax.tree.map(jax.typeof, state)
    jitted = jax.jit(step, donate_argnums=())
    compiled = jitted.lower(params, state, targets).compile()
    facts["collectives"] = _hlo_collectives(compiled.as_text())
    for _ in range(NUM_STEPS):
      params, state = jitted(params, state, targets)
    facts["same_types_after_update"] = jax.tree.map(jax.typeof, state) == init_types
    facts["types"] = str(jax.tree.map(jax.typeof, cyclax.find_prune_state(state)))
    masks = cyclax.get_masks(state)
    facts["final_masks_like_params"] = _equivalent(masks, params)
    facts["params_keep_sharding"] = _equivalent(params, shardings)
  facts.update(_run_jit_refresh_every_2(mesh, shardings, explicit))
  _save(out_dir, {**_flat("params", params), **_flat("masks", masks)}, facts)


def _run_jit_refresh_every_2(mesh, shardings, explicit: bool) -> dict:
  """``update_every=2``: every other step goes through the refresh conditional's other branch.

  The sharded run is compared with the same run on one device, unsharded.
  """
  tx = optax.chain(optax.sgd(LEARNING_RATE), cyclax.cyclical_prune(TARGET, update_every=2, **SCHEDULE))

  def step(params, state, targets):
    updates, state = tx.update(quadratic_grads(params, targets), state, params)
    return optax.apply_updates(params, updates), state

  def run(params, state, targets):
    jitted = jax.jit(step)
    history = []
    for _ in range(NUM_STEPS):
      params, state = jitted(params, state, targets)
      history.append((params, cyclax.get_masks(state)))
    return history, state, jitted.lower(params, state, targets).compile().as_text()

  host_params, host_targets = quadratic_problem()
  single, _, _ = run(host_params, tx.init(host_params), host_targets)
  with jax.set_mesh(mesh):
    params = jax.device_put(host_params, shardings)
    state = jax.jit(tx.init)(params) if explicit else tx.init(params)
    types = jax.tree.map(jax.typeof, state)
    sharded, state, text = run(params, state, jax.device_put(host_targets, shardings))
    same_types = jax.tree.map(jax.typeof, state) == types
  same = all(
    np.array_equal(np.asarray(a), np.asarray(b))
    for step_a, step_b in zip(single, sharded)
    for a, b in zip(jax.tree.leaves(step_a), jax.tree.leaves(step_b))
  )
  return {
    "every2_same_as_one_device": same,
    "every2_same_types_after_update": same_types,
    "every2_collectives": _hlo_collectives(text),
  }


def run_shard_map(out_dir: str) -> None:
  """A per-shard update inside shard_map, counts summed over the mesh axis.

  Runs once per entry of ``SHARD_MAP_CONFIGS`` (sparsity distributions, an override).
  """
  arrays, facts = {}, {}
  for name, config in SHARD_MAP_CONFIGS.items():
    shape, names, axis = SHARD_MAP_MESHES[name]
    mesh = jax.make_mesh(shape, names, axis_types=(AxisType.Explicit,) * len(names))
    specs = {k: P(*(axis if a == "x" else a for a in s)) for k, s in SPECS.items()}
    params, targets = quadratic_problem()
    shardings = {k: NamedSharding(mesh, s) for k, s in specs.items()}
    with jax.set_mesh(mesh):
      params0 = jax.device_put(params, shardings)
      targets = jax.device_put(targets, shardings)
      tx = quadratic_tx(axis_name=axis, sharded_dims=SHARDED_DIMS, **config)

      def local_step(params, state, targets, tx=tx):
        updates, state = tx.update(quadratic_grads(params, targets), state, params)
        return optax.apply_updates(params, updates), state

      state = jax.jit(tx.init)(params0)
      # Every state leaf keeps the layout init gave it (masks like their params).
      state_specs = jax.tree.map(lambda a: jax.typeof(a).sharding.spec, state)
      step = jax.jit(
        jax.shard_map(
          local_step,
          mesh=mesh,
          in_specs=(specs, state_specs, specs),
          out_specs=(specs, state_specs),
        )
      )
      params = params0
      for _ in range(NUM_STEPS):
        params, state = step(params, state, targets)
      prune_state = cyclax.find_prune_state(state)
      facts[name] = {"misplaced_steps": int(prune_state.misplaced_steps)}
      if name == "uniform":
        facts[name]["static_equals_default"] = _shard_map_static_equals_default(
          mesh, axis, specs, params0, targets
        )
      arrays.update(_flat(f"{name}/params", params))
      arrays.update(_flat(f"{name}/masks", cyclax.get_masks(state)))
  _save(out_dir, arrays, facts)


def _shard_map_static_equals_default(mesh, axis, specs, params, targets) -> bool:
  tx = static_tx(axis_name=axis, sharded_dims=SHARDED_DIMS)
  state_specs = jax.tree.map(lambda a: jax.typeof(a).sharding.spec, jax.jit(tx.init)(params))

  def make_step(flag):
    def local_step(params, state, targets):
      updates, state = tx.update(quadratic_grads(params, targets), state, params, refresh_masks=flag)
      return optax.apply_updates(params, updates), state

    mapped = jax.shard_map(
      local_step, mesh=mesh, in_specs=(specs, state_specs, specs), out_specs=(specs, state_specs)
    )
    return jax.jit(mapped)

  return _static_equals_default(make_step, jax.jit(tx.init), params, targets)


def run_two_processes(out_dir: str, process_id: int, port: int) -> None:
  """One of two processes (4 devices each) training weights sharded over all 8 devices.

  The same problem is trained twice: by ``jax.jit`` on globally sharded arrays, and
  by ``shard_map`` with ``axis_name`` (counts summed across both processes).
  """
  jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}",
    num_processes=2,
    process_id=process_id,
    initialization_timeout=60,
  )
  from jax.experimental import multihost_utils

  assert jax.process_count() == 2 and jax.device_count() == 2 * jax.local_device_count()
  mesh = jax.make_mesh((jax.device_count(),), ("x",), axis_types=(AxisType.Explicit,))
  params, targets = quadratic_problem()
  shardings = {k: NamedSharding(mesh, s) for k, s in SPECS.items()}
  # Every process builds only its own shards from the (seeded, identical) host data.
  to_global = lambda tree: {
    k: jax.make_array_from_callback(v.shape, shardings[k], lambda idx, v=v: v[idx]) for k, v in tree.items()
  }
  arrays = {}
  with jax.set_mesh(mesh):
    params0, targets = to_global(params), to_global(targets)
    for mode in ("jit", "shard_map"):
      if mode == "jit":
        tx = quadratic_tx()
      else:
        tx = quadratic_tx(axis_name="x", sharded_dims=SHARDED_DIMS)

      def step(params, state, targets, tx=tx):
        updates, state = tx.update(quadratic_grads(params, targets), state, params)
        return optax.apply_updates(params, updates), state

      state = jax.jit(tx.init)(params0)
      if mode == "shard_map":
        state_specs = jax.tree.map(lambda a: jax.typeof(a).sharding.spec, state)
        step = jax.shard_map(
          step, mesh=mesh, in_specs=(SPECS, state_specs, SPECS), out_specs=(SPECS, state_specs)
        )
      step = jax.jit(step)
      params = params0
      for _ in range(NUM_STEPS):
        params, state = step(params, state, targets)
      gather = lambda tree: {
        k: multihost_utils.process_allgather(v, tiled=True) for k, v in tree.items() if v is not None
      }
      arrays.update(_flat(f"{mode}/params", gather(params)))
      arrays.update(_flat(f"{mode}/masks", gather(cyclax.get_masks(state))))
  facts = {
    "process_index": jax.process_index(),
    "process_count": jax.process_count(),
    "devices": jax.device_count(),
  }
  _save(out_dir, arrays, facts)
  jax.distributed.shutdown()


SCENARIOS = {
  "shard_map": run_shard_map,
  "pmap": run_pmap,
  "jit_auto": lambda out: run_jit(out, explicit=False),
  "jit_explicit": lambda out: run_jit(out, explicit=True),
}


def _watchdog(limit_s: float) -> None:
  """Exit if the test process that started us is gone, or after ``limit_s`` seconds."""
  parent, start = os.getppid(), time.monotonic()

  def watch() -> None:
    while os.getppid() == parent and time.monotonic() - start < limit_s:
      time.sleep(0.5)
    os._exit(124)

  threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str]) -> None:
  scenario, out_dir = argv[1], argv[2]
  _watchdog(WORKER_LIMIT_S)
  if scenario == "two_processes":
    run_two_processes(out_dir, process_id=int(argv[3]), port=int(argv[4]))
  else:
    SCENARIOS[scenario](out_dir)


if __name__ == "__main__":
  main(sys.argv)
