"""Export of pruned params: BCOO leaves, their size report, and plain dense params."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference
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
      assert leaf.nse == mask.sum() == mask.size - reference.num_to_prune(0.7, mask.size)
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


def test_variables_containing_the_optimizer_params_export_like_numpy(run):
  # The usual Flax layout: the optimizer is built over `variables["params"]` (TrainState.params),
  # while the model is applied to the whole variables tree.
  model, variables, _, x = run
  inner = variables["params"]
  tx = optax.chain(optax.sgd(0.5), cyclax.magnitude_prune(0.6, update_every=1))
  state = tx.init(inner)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.25), inner)
  updates, state = jax.jit(tx.update)(grads, state, inner)
  inner = optax.apply_updates(inner, updates)
  batch_stats = {"mean": jnp.ones((3, 4))}  # another collection, 2-D: stays dense
  full = {"params": inner, "batch_stats": batch_stats}
  masks = flat(cyclax.get_masks(state))

  exported = cyclax.to_bcoo(full, state)
  assert exported["batch_stats"]["mean"] is batch_stats["mean"]
  for name, value in flat(inner).items():
    leaf = flat(exported["params"])[name]
    if name.endswith("kernel"):
      mask = np.asarray(masks[name])
      value = np.asarray(value)
      assert mask.sum() == mask.size - reference.num_to_prune(0.6, mask.size)
      np.testing.assert_array_equal(np.asarray(leaf.indices), np.argwhere(mask))
      np.testing.assert_array_equal(np.asarray(leaf.data), value[mask])
    else:
      assert leaf is value
  np.testing.assert_allclose(
    np.asarray(sparse.sparsify(model.apply)({"params": exported["params"]}, x)),
    np.asarray(model.apply({"params": inner}, x)),
    rtol=1e-5,
    atol=1e-6,
  )

  report = cyclax.sparse_size_report(full, state)
  for name, value in flat(inner).items():
    value = np.asarray(value)
    nnz = int(np.sum(np.asarray(masks[name]))) if name.endswith("kernel") else int(np.count_nonzero(value))
    sparse_bytes = nnz * (4 + 4 * value.ndim) if name.endswith("kernel") else value.nbytes
    assert report[f"params/{name}"] == {"nnz": nnz, "dense_bytes": value.nbytes, "sparse_bytes": sparse_bytes}
  assert report["batch_stats/mean"] == {"nnz": 12, "dense_bytes": 48, "sparse_bytes": 48}

  edited = jax.tree.map(lambda p: p + 1.0, full)
  stripped = cyclax.strip_pruning(edited, state)
  np.testing.assert_array_equal(np.asarray(stripped["batch_stats"]["mean"]), 2.0)
  for name, value in flat(edited["params"]).items():
    mask = masks.get(name)
    expected = np.asarray(value) if mask is None else np.where(np.asarray(mask), np.asarray(value), 0.0)
    np.testing.assert_array_equal(np.asarray(flat(stripped["params"])[name]), expected)


def test_masks_matching_several_subtrees_or_none_raise_value_error(run):
  _, params, state, _ = run
  masks = cyclax.get_masks(state)
  twice = {"online": params, "ema": params}
  with pytest.raises(ValueError, match="several subtrees.*'online'.*'ema'|several subtrees.*'ema'.*'online'"):
    cyclax.to_bcoo(twice, state)
  # Naming the subtree works.
  assert jax.tree.structure(cyclax.to_bcoo(twice["ema"], masks), is_leaf=is_bcoo) == jax.tree.structure(
    cyclax.to_bcoo(params, masks), is_leaf=is_bcoo
  )
  with pytest.raises(ValueError, match="no subtree of the params"):
    cyclax.sparse_size_report({"other": jnp.ones((3, 3))}, state)
  with pytest.raises(ValueError, match="no subtree of the params"):
    cyclax.strip_pruning({"params": {"Dense_0": params["params"]["Dense_0"]}}, masks)


def test_masks_under_optax_masked_leave_masked_out_leaves_dense():
  rng = np.random.default_rng(5)
  params = {"w": jnp.asarray(rng.standard_normal((6, 5)), jnp.float32), "v": jnp.ones((4, 4))}
  inner = optax.chain(optax.sgd(0.5), cyclax.magnitude_prune(0.5, update_every=1))
  tx = optax.masked(inner, {"w": True, "v": False})
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), state, params)
  params = optax.apply_updates(params, updates)
  exported = cyclax.to_bcoo(params, state)
  assert not is_bcoo(exported["v"])
  w = np.asarray(params["w"])
  mask = reference.keep_mask(w, reference.num_to_prune(0.5, w.size))
  np.testing.assert_array_equal(np.asarray(exported["w"].indices), np.argwhere(mask))
  np.testing.assert_array_equal(np.asarray(exported["w"].data), w[mask])


def test_flax_nnx_params_state_exports_with_the_optimizer_masks():
  import nnx_models
  from flax import nnx

  model = nnx_models.MLP(nnx.Rngs(0), activation=jnp.tanh)
  optimizer = nnx.Optimizer(
    model, optax.chain(optax.adam(1e-2), cyclax.magnitude_prune(0.5, update_every=1)), wrt=nnx.Param
  )
  x = jax.random.normal(jax.random.key(3), (5, 6))
  nnx.jit(lambda m, o: o.update(m, nnx.grad(lambda m: jnp.mean(m(x) ** 2))(m)))(model, optimizer)
  params = nnx.state(model, nnx.Param)
  exported = cyclax.to_bcoo(params, optimizer.opt_state)
  report = cyclax.sparse_size_report(params, optimizer.opt_state)
  for layer in ("hidden", "out"):
    kernel = np.asarray(getattr(model, layer).kernel[...])
    leaf = exported[layer]["kernel"][...]
    assert is_bcoo(leaf)
    mask = kernel != 0
    assert mask.sum() == mask.size - reference.num_to_prune(0.5, mask.size)
    np.testing.assert_array_equal(np.asarray(leaf.indices), np.argwhere(mask))
    np.testing.assert_array_equal(np.asarray(leaf.data), kernel[mask])
    assert report[f"{layer}/kernel"]["nnz"] == int(mask.sum())
    assert not is_bcoo(exported[layer]["bias"][...])
