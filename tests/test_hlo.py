"""The compiled refresh on sharded params gathers nothing: only all-reduces of scalars.

Runs in a subprocess with 8 forced CPU devices (set before jax is imported).
"""

import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import reference

SCRIPT = textwrap.dedent(
  """
  import json, re
  import numpy as np, jax, jax.numpy as jnp
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  from cyclax import _exact, _select

  assert jax.device_count() == 8
  KINDS = r"= (\\([^)]*\\)|\\S+) (all-gather|all-to-all|all-reduce|collective-permute|reduce-scatter)\\("
  mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
  rng = np.random.default_rng(0)
  specs = [((64, 48), P("data", "model")), ((32, 16), P(None, "model")), ((16, 40), P("data", None))]
  dtypes = [jnp.float32, jnp.bfloat16, jnp.float32]
  host = [rng.choice([0.0, 0.5, -1.0, 2.0], size=s) * rng.standard_normal(s) for s, _ in specs]
  host[1][:4] = 0.5  # ties at the threshold
  leaves = [
    jax.device_put(jnp.asarray(h, d), NamedSharding(mesh, p)) for h, d, (_, p) in zip(host, dtypes, specs)
  ]
  ks = [_exact.num_to_prune(0.7, x.size) for x in leaves]
  k_total = _exact.num_to_prune_total(0.7, [x.size for x in leaves])
  refreshes = {
    "per_leaf": jax.jit(lambda ls: _select.prune_masks(ls, ks)),
    "global": jax.jit(lambda ls: _select.global_prune_masks(ls, k_total)),
  }
  facts = {}
  for name, fn in refreshes.items():
    text = fn.lower(leaves).compile().as_text()
    collectives = re.findall(KINDS, text)
    masks = fn(leaves)
    unsharded = fn([jnp.asarray(np.asarray(x)) for x in leaves])
    facts[name] = {
      "collectives": collectives,
      "masks_equal_unsharded": all(np.array_equal(a, b) for a, b in zip(masks, unsharded)),
      "masks": [np.asarray(m).tolist() for m in masks],
    }
  # shard_map with axis_name: every leaf split along dim 0 of a 1-D mesh, counts psum-ed.
  mesh1 = Mesh(np.array(jax.devices()), ("d",))
  split = [jax.device_put(x, NamedSharding(mesh1, P("d"))) for x in leaves]
  mapped = {
    "shard_map_per_leaf": lambda ls: _select.prune_masks(ls, ks, axis_name="d"),
    "shard_map_global": lambda ls: _select.global_prune_masks(ls, k_total, axis_name="d"),
  }
  for name, body in mapped.items():
    fn = jax.jit(jax.shard_map(body, mesh=mesh1, in_specs=(P("d"),), out_specs=P("d")))
    text = fn.lower(split).compile().as_text()
    facts[name] = {
      "collectives": re.findall(KINDS, text),
      "masks": [np.asarray(m).tolist() for m in fn(split)],
    }
  facts["host"] = [np.asarray(x.astype(jnp.float32)).tolist() for x in leaves]
  print("FACTS" + json.dumps(facts))
  """
)


def _run():
  env = reference.subprocess_env(8)
  cmd = [sys.executable, "-c", SCRIPT]
  result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  [line] = [x for x in result.stdout.splitlines() if x.startswith("FACTS")]
  return json.loads(line[len("FACTS") :])


def _elements(shape: str) -> int:
  """Number of elements of an HLO result shape such as ``s32[]``, ``(s32[], s32[2])``."""
  total = 0
  for dims in re.findall(r"\[([0-9,]*)\]", shape):
    total = max(total, int(np.prod([int(d) for d in dims.split(",") if d] or [1])))
  return total


@pytest.fixture(scope="module")
def facts():
  return _run()


def _check_masks(facts, per_leaf, global_):
  host = [np.asarray(x, np.float32) for x in facts["host"]]
  for x, m in zip(host, facts[per_leaf]["masks"]):
    np.testing.assert_array_equal(np.asarray(m), reference.keep_mask(x, reference.num_to_prune(0.7, x.size)))
  k_total = reference.num_to_prune(0.7, sum(x.size for x in host))
  for m, r in zip(facts[global_]["masks"], reference.global_keep_masks(host, k_total)):
    np.testing.assert_array_equal(np.asarray(m), r)


def test_jit_sharded_refresh_exchanges_only_a_few_int32_counts(facts):
  for name in ["per_leaf", "global"]:
    found = facts[name]["collectives"]
    kinds = {kind for _, kind in found}
    assert "all-to-all" not in kinds and "collective-permute" not in kinds, found
    # XLA partitions the fused (variadic) count reduction as local counts + an all-gather of the
    # per-device partial counts: int32 arrays of at most devices x 2 entries, never a leaf.
    for shape, _ in found:
      assert shape.startswith(("s32", "u32", "pred", "(s32")) and _elements(shape) <= 16, found
    assert facts[name]["masks_equal_unsharded"]
  _check_masks(facts, "per_leaf", "global")


def test_shard_map_refresh_only_all_reduces_scalars(facts):
  for name in ["shard_map_per_leaf", "shard_map_global"]:
    found = facts[name]["collectives"]
    assert found and {kind for _, kind in found} == {"all-reduce"}, found
    assert all(_elements(shape) <= 8 for shape, _ in found), found
  _check_masks(facts, "shard_map_per_leaf", "shard_map_global")
