"""Distributed training with cyclax: pmap, sharded jit, shard_map, two processes.

Every run happens in a subprocess (``tests/_distributed_worker.py``) with forced
host devices, and is compared here, in a single-device process, with an
unsharded run: the NumPy reference of Algorithm 1 for the quadratic problem
(exact arithmetic, ties at every threshold), or the same step on one device for
the data-parallel MLP.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import _distributed_worker as worker
import jax
import numpy as np
import optax
import pytest
import reference

import cyclax

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_distributed_worker.py")
TIMEOUT_S = 240


def _env(num_devices: int) -> dict[str, str]:
  return reference.subprocess_env(num_devices)


def _load(out_dir) -> tuple[dict[str, np.ndarray], dict]:
  with np.load(os.path.join(out_dir, "result.npz")) as f:
    arrays = dict(f)
  with open(os.path.join(out_dir, "facts.json")) as f:
    return arrays, json.load(f)


def _run(scenario: str, out_dir, num_devices: int = 8) -> tuple[dict[str, np.ndarray], dict]:
  proc = subprocess.run(
    [sys.executable, WORKER, scenario, str(out_dir)],
    env=_env(num_devices),
    capture_output=True,
    text=True,
    timeout=TIMEOUT_S,
  )
  assert proc.returncode == 0, f"worker {scenario} failed:\n{proc.stdout}\n{proc.stderr}"
  return _load(out_dir)


def _quadratic_reference() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Final params and masks of Algorithm 1 in NumPy, on one device, no sharding."""
  params, targets = worker.quadratic_problem()
  s = worker.SCHEDULE
  history, masks = reference.tv_pgd(
    params,
    grad_fn=lambda p: {k: p[k] - targets[k] for k in p},
    learning_rate=worker.LEARNING_RATE,
    sparsity=lambda t: reference.cyclical_sparsity(
      t, worker.TARGET, s["num_cycles"], s["cycle_steps"], s["initial_sparsity"], s["ramp_fraction"]
    ),
    update_every=1,
    num_steps=worker.NUM_STEPS,
    pruned=["w1", "w2", "w3"],
  )
  return history[-1], masks[-1]


def _assert_same(arrays: dict[str, np.ndarray], params: dict, masks: dict, prefix: str = "") -> None:
  """Params equal bit for bit (so +0.0 vs -0.0 counts) and masks equal."""
  for name, value in params.items():
    value = np.asarray(value)
    got = arrays[f"{prefix}params/{name}"]
    np.testing.assert_array_equal(got, value, err_msg=f"params {name}")
    assert got.dtype == value.dtype and got.tobytes() == value.tobytes(), f"params {name} differ in bits"
  for name, mask in masks.items():
    if mask is not None:
      np.testing.assert_array_equal(arrays[f"{prefix}masks/{name}"], np.asarray(mask), err_msg=f"mask {name}")


def _assert_matches_quadratic_reference(arrays: dict[str, np.ndarray], prefix: str = "") -> None:
  _assert_same(arrays, *_quadratic_reference(), prefix=prefix)


def test_quadratic_problem_splits_ties_at_the_threshold():
  # The quadratic problem is meant to exercise the tie rule: at some refresh a
  # magnitude is both kept and pruned, so only the index decides.
  params, targets = worker.quadratic_problem()
  s = worker.SCHEDULE
  split = 0
  for t in range(worker.NUM_STEPS):
    level = reference.cyclical_sparsity(
      t, worker.TARGET, s["num_cycles"], s["cycle_steps"], s["initial_sparsity"], s["ramp_fraction"]
    )
    candidates = {k: p - np.float32(worker.LEARNING_RATE) * (p - targets[k]) for k, p in params.items()}
    for name in ("w1", "w2", "w3"):
      c = candidates[name]
      mask = reference.keep_mask(c, reference.num_to_prune(level, c.size))
      split += len(set(np.abs(c[mask]).tolist()) & set(np.abs(c[~mask]).tolist()))
      candidates[name] = np.where(mask, c, np.float32(0))
    params = candidates
  assert split >= 3


@pytest.fixture(scope="module")
def pmap_run(tmp_path_factory):
  """One pmap worker run, shared by the two pmap tests."""
  return _run("pmap", tmp_path_factory.mktemp("pmap"))


def test_pmap_masks_identical_on_every_device_and_to_single_device(pmap_run):
  arrays, facts = pmap_run
  n = facts["num_devices"]
  assert n == 8

  # The same step on one device, gradients of the 8 batches averaged in order.
  params, x, y = worker.mlp_problem(num_shards=n)
  tx = worker.mlp_tx()
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = worker.mean_over_shards([jax.grad(worker.mlp_loss)(params, x[i], y[i]) for i in range(n)])
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(worker.NUM_STEPS):
    params, state = step(params, state)
  masks = cyclax.get_masks(state)
  for name in params:
    per_device = arrays[f"params/{name}"]
    assert per_device.shape == (n, *params[name].shape)
    for d in range(n):
      np.testing.assert_array_equal(per_device[d], per_device[0], err_msg=f"params {name} on device {d}")
    # Float sums may fuse differently in pmap than in jit: params agree to rounding.
    np.testing.assert_allclose(per_device[0], params[name], rtol=1e-6, atol=1e-7)
    if masks[name] is None:
      continue
    per_device = arrays[f"masks/{name}"]
    for d in range(n):
      np.testing.assert_array_equal(per_device[d], masks[name], err_msg=f"mask {name} on device {d}")
    expected_pruned = reference.num_to_prune(worker.TARGET, masks[name].size)
    assert int(np.sum(~per_device[0])) == expected_pruned


def test_pmap_over_split_params_with_axis_name_matches_unsharded(pmap_run):
  # The same worker run also trains the quadratic problem's w1 (split by columns) and
  # w2 (by rows) as 8 blocks under pmap with axis_name; blocks are joined back here.
  arrays, _ = pmap_run
  ref_params, ref_masks = _quadratic_reference()
  keep = lambda tree: {k: v for k, v in tree.items() if k in ("w1", "b1", "w2")}
  _assert_same(arrays, keep(ref_params), keep(ref_masks), prefix="blocks/")


def test_pmap_static_refresh_flag_loop_equals_default_loop(pmap_run):
  # refresh_masks=prune.refresh_due(step) under pmap with axis_name, bit for bit the default loop.
  _, facts = pmap_run
  assert facts["static_equals_default"] is True


def _check_sharded_jit(arrays: dict[str, np.ndarray], facts: dict, explicit: bool) -> None:
  # init places every mask like its leaf, and update keeps it there.
  assert facts["init_masks_like_params"] == {"w1": True, "w2": True, "w3": True}
  for name in ("w1", "w2"):
    assert "'x'" in facts["init_mask_specs"][name]
  assert facts["final_masks_like_params"] == {"w1": True, "w2": True, "w3": True}
  assert all(facts["params_keep_sharding"].values())
  assert facts["same_types_after_update"]
  if explicit:
    # Explicit mode puts shardings in the types: the masks carry `@x`.
    assert "bool[16,32@x]" in facts["types"] and "bool[32@x,8]" in facts["types"]
  # No weight (or any float array) is gathered or moved between devices; the
  # only cross-device traffic is counts of at most one int32 per device.
  _assert_only_small_counts_exchanged(facts["collectives"])
  _assert_matches_quadratic_reference(arrays)
  # update_every=2: the steps between refreshes (and the refreshes) match one device bit for bit.
  assert facts["every2_same_as_one_device"]
  assert facts["every2_same_types_after_update"]
  _assert_only_small_counts_exchanged(facts["every2_collectives"])


def _assert_only_small_counts_exchanged(collectives: dict[str, list[str]]) -> None:
  assert collectives["all-to-all"] == [] and collectives["collective-permute"] == []
  for line in collectives["all-gather"] + collectives["all-reduce"] + collectives["reduce-scatter"]:
    result_type = line.split("=", 1)[1].split(" all-", 1)[0].split(" reduce-", 1)[0]
    assert "s32" in result_type or "u32" in result_type, line
    for shape in result_type.replace("(", "").replace(")", "").split(", "):
      dims = shape.strip().split("[", 1)[1].split("]", 1)[0]
      size = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
      assert size <= 8, line


def test_sharded_jit_auto_mode_matches_unsharded_bit_for_bit(tmp_path):
  arrays, facts = _run("jit_auto", tmp_path)
  _check_sharded_jit(arrays, facts, explicit=False)


def test_sharded_jit_explicit_mode_matches_unsharded_bit_for_bit(tmp_path):
  arrays, facts = _run("jit_explicit", tmp_path)
  _check_sharded_jit(arrays, facts, explicit=True)


def test_shard_map_with_axis_name_matches_unsharded_including_ties(tmp_path):
  arrays, facts = _run("shard_map", tmp_path)
  assert set(facts) == set(worker.SHARD_MAP_CONFIGS)
  assert all(f["misplaced_steps"] == 0 for f in facts.values())
  # refresh_masks=prune.refresh_due(step) inside shard_map, bit for bit the default loop.
  assert facts["uniform"]["static_equals_default"] is True
  # Uniform sparsity: the NumPy reference of Algorithm 1 (ties at every refresh), on a
  # one-axis mesh, with one dimension split over two mesh axes, and on a data x model mesh.
  for name in ("uniform", "tuple_axes", "data_model"):
    _assert_matches_quadratic_reference(arrays, prefix=f"{name}/")
  # Global threshold; ERK with an override: the same transformation on one device.
  for name in ("global", "erk"):
    params, targets = worker.quadratic_problem()
    tx = worker.quadratic_tx(**worker.SHARD_MAP_CONFIGS[name])
    state = tx.init(params)

    @jax.jit
    def step(params, state, tx=tx, targets=targets):
      updates, state = tx.update(worker.quadratic_grads(params, targets), state, params)
      return optax.apply_updates(params, updates), state

    for _ in range(worker.NUM_STEPS):
      params, state = step(params, state)
    masks = cyclax.get_masks(state)
    _assert_same(arrays, params, masks, prefix=f"{name}/")
    if name == "global":
      total = sum(m.size for m in jax.tree.leaves(masks))
      pruned = sum(int(np.sum(~np.asarray(m))) for m in jax.tree.leaves(masks))
      assert pruned == reference.num_to_prune(worker.TARGET, total)
    else:
      assert int(np.sum(~np.asarray(masks["w3"]))) == reference.num_to_prune(0.5, masks["w3"].size)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_with_sharded_weights_match_single_process(tmp_path):
  port = _free_port()
  dirs = [tmp_path / f"process{i}" for i in range(2)]
  procs = []
  try:
    for i, out_dir in enumerate(dirs):
      out_dir.mkdir()
      procs.append(
        subprocess.Popen(
          [sys.executable, WORKER, "two_processes", str(out_dir), str(i), str(port)],
          env=_env(4),
          stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT,
          text=True,
        )
      )
    deadline = time.monotonic() + TIMEOUT_S
    logs = [p.communicate(timeout=max(deadline - time.monotonic(), 1.0))[0] for p in procs]
  finally:
    # Whatever happened (timeout, a failed assertion), no worker outlives the test.
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, f"process failed:\n{log}"
  for i, out_dir in enumerate(dirs):
    arrays, facts = _load(out_dir)
    assert facts == {"process_index": i, "process_count": 2, "devices": 8}
    for mode in ("jit", "shard_map"):
      _assert_matches_quadratic_reference(arrays, prefix=f"{mode}/")


def test_axis_name_must_be_a_name_or_tuple_of_names():
  for bad in (3, ("x", 1), ()):
    with pytest.raises(TypeError, match="axis_name"):
      cyclax.magnitude_prune(0.5, axis_name=bad)
  cyclax.magnitude_prune(0.5, axis_name=("x", "y"))


def test_axis_name_with_pattern_is_rejected_at_construction():
  with pytest.raises(ValueError, match="axis_name"):
    cyclax.cyclical_prune(0.5, num_cycles=1, cycle_steps=4, pattern=(2, 4), axis_name="x")


def test_sharded_dims_checked_against_pruned_leaves_at_init():
  params = {"w": np.ones((4, 6), np.float32), "b": np.ones(6, np.float32)}
  with pytest.raises(ValueError, match=r"sharded_dims.*'w'.*\[-2, 2\)"):
    cyclax.magnitude_prune(0.5, axis_name="x", sharded_dims=2).init(params)
  with pytest.raises(ValueError, match="sharded_dims"):
    cyclax.magnitude_prune(0.5, axis_name="x", sharded_dims={"w": "rows", "b": None}).init(params)
  with pytest.raises(ValueError, match="sharded_dims"):
    cyclax.magnitude_prune(0.5, axis_name="x", sharded_dims={"v": 0}).init(params)
  # A dimension of a dense leaf does not matter; -1 means the last dimension.
  state = cyclax.magnitude_prune(0.5, axis_name="x", sharded_dims={"w": -1, "b": 5}).init(params)
  assert state.masks["w"].shape == (4, 6)
