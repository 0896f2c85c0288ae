"""Export of pruned params: BCOO leaves, their size report, and plain dense params."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import sparse

import cyclax


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    # tanh rather than relu: `sparse.sparsify` cannot evaluate custom_jvp functions such as nn.relu.
    x = jnp.tanh(nn.Dense(16)(x))
    return nn.Dense(4)(x)


def trained(steps=6, sparsity=0.7):
  """A small Flax MLP pruned by cyclax; returns (model, params, opt_state, inputs)."""
  model = MLP()
  x = jax.random.normal(jax.random.key(0), (10, 8))
  y = jax.random.normal(jax.random.key(1), (10, 4))
  params = model.init(jax.random.key(2), x)
  tx = optax.chain(optax.adam(1e-2), cyclax.magnitude_prune(sparsity, update_every=2))
  loss = lambda p: jnp.mean((model.apply(p, x) - y) ** 2)  # noqa: E731

  @jax.jit
  def step(p, s):
    updates, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, updates), s

  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return model, params, state, x


@pytest.fixture(scope="module")
def run():
  return trained()


def is_bcoo(x):
  return isinstance(x, sparse.BCOO)


def flat(tree):
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_bcoo)[0]
  return {"/".join(str(k.key) for k in path): leaf for path, leaf in leaves}


@pytest.mark.parametrize("source", ["state", "masks", "none"])
def test_to_bcoo_stores_exactly_the_kept_entries(run, source):
  _, params, state, _ = run
  masks = {"state": state, "masks": cyclax.get_masks(state), "none": None}[source]
  exported = flat(cyclax.to_bcoo(params, masks))
  dense = flat(params)
  mask_of = flat(cyclax.get_masks(state))
  for name, leaf in exported.items():
    if name.endswith("kernel"):
      assert is_bcoo(leaf)
      mask = np.asarray(mask_of[name])
      value = np.asarray(dense[name])
      np.testing.assert_array_equal(np.asarray(leaf.indices), np.argwhere(mask))
      np.testing.assert_array_equal(np.asarray(leaf.data), value[mask])
      assert leaf.nse == mask.sum() == mask.size - round(0.7 * mask.size)
      np.testing.assert_array_equal(np.asarray(leaf.todense()), value)
    else:
      assert leaf is dense[name]


def test_to_bcoo_reads_packed_masks():
  _, params, state, _ = trained(steps=3)
  packed_state = cyclax.find_prune_state(state)._replace(
    masks=jax.tree.map(cyclax.pack_mask, cyclax.get_masks(state))
  )
  for masks in (packed_state, packed_state.masks):
    got, expected = flat(cyclax.to_bcoo(params, masks)), flat(cyclax.to_bcoo(params, state))
    for name in expected:
      assert_same = np.testing.assert_array_equal
      if is_bcoo(expected[name]):
        assert_same(np.asarray(got[name].indices), np.asarray(expected[name].indices))
        assert_same(np.asarray(got[name].data), np.asarray(expected[name].data))
      else:
        assert got[name] is expected[name]


def test_sparsified_flax_forward_pass_equals_the_dense_one(run):
  model, params, state, x = run
  exported = cyclax.to_bcoo(params, state)
  dense_out = model.apply(params, x)
  for fn in (sparse.sparsify(model.apply), jax.jit(sparse.sparsify(model.apply))):
    sparse_out = fn(exported, x)
    assert not is_bcoo(sparse_out)
    np.testing.assert_allclose(np.asarray(sparse_out), np.asarray(dense_out), rtol=1e-5, atol=1e-6)


def test_sparse_size_report_matches_numpy_byte_counts(run):
  _, params, state, _ = run
  report = cyclax.sparse_size_report(params, state)
  masks = flat(cyclax.get_masks(state))
  expected_total = {"nnz": 0, "dense_bytes": 0, "sparse_bytes": 0}
  for name, value in flat(params).items():
    value = np.asarray(value)
    dense_bytes = value.size * value.itemsize
    if name.endswith("kernel"):
      nnz = int(np.sum(np.asarray(masks[name])))
      # float32 data plus one int32 coordinate per dimension.
      entry = {
        "nnz": nnz,
        "dense_bytes": dense_bytes,
        "sparse_bytes": nnz * (value.itemsize + 4 * value.ndim),
      }
    else:
      entry = {"nnz": int(np.count_nonzero(value)), "dense_bytes": dense_bytes, "sparse_bytes": dense_bytes}
    assert report[name] == entry
    for key in expected_total:
      expected_total[key] += entry[key]
  assert report["total"] == expected_total
  assert len(report) == len(flat(params)) + 1
  # The exported tree gives the same report.
  assert cyclax.sparse_size_report(cyclax.to_bcoo(params, state)) == report


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_to_bcoo_keeps_low_precision_dtypes(dtype):
  rng = np.random.default_rng(4)
  value = np.where(rng.random((6, 5)) < 0.6, 0.0, rng.normal(size=(6, 5)))
  params = {"w": jnp.asarray(value, dtype)}
  exported = cyclax.to_bcoo(params)
  assert exported["w"].dtype == dtype
  np.testing.assert_array_equal(np.asarray(exported["w"].todense()), np.asarray(params["w"]))
  assert cyclax.sparse_size_report(params)["w"]["sparse_bytes"] == np.count_nonzero(value) * (2 + 8)


def test_strip_pruning_returns_plain_dense_params(run):
  _, params, state, _ = run
  stripped = cyclax.strip_pruning(cyclax.to_bcoo(params, state))
  assert jax.tree.structure(stripped) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(stripped), jax.tree.leaves(params)):
    assert isinstance(a, jax.Array) and not is_bcoo(a)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Params are returned as they are when there is nothing to strip.
  for a, b in zip(jax.tree.leaves(cyclax.strip_pruning(params)), jax.tree.leaves(params)):
    assert a is b


def test_strip_pruning_with_masks_zeroes_entries_edited_outside_the_optimizer(run):
  _, params, state, _ = run
  edited = jax.tree.map(lambda p: p + 0.5, params)
  stripped = cyclax.strip_pruning(edited, state)
  masks = cyclax.get_masks(state)
  for name, value in flat(edited).items():
    mask = flat(masks).get(name)
    expected = np.asarray(value) if mask is None else np.where(np.asarray(mask), np.asarray(value), 0.0)
    np.testing.assert_array_equal(np.asarray(flat(stripped)[name]), expected)


def test_mismatched_masks_raise_value_error(run):
  _, params, state, _ = run
  with pytest.raises(ValueError, match="masks"):
    cyclax.to_bcoo(params, {"w": jnp.ones((2, 2), bool)})
  bad = jax.tree.map(lambda m: m.astype(jnp.int32), cyclax.get_masks(state))
  with pytest.raises(ValueError, match="bool array"):
    cyclax.to_bcoo(params, bad)
