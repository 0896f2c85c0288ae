"""Sparsity distributions (`cyclax._distribution`) against Python-int and NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference
from hypothesis import given, settings
from hypothesis import strategies as st

import cyclax
from cyclax import _distribution, _masks


def _random_shapes(rng, num):
  shapes = []
  for _ in range(num):
    ndim = int(rng.integers(1, 5))
    shapes.append(tuple(int(d) for d in rng.integers(1, 40, size=ndim)))
  return shapes


# ---------------------------------------------------------------------------
# ERK
# ---------------------------------------------------------------------------

_jit_erk = jax.jit(lambda s, shapes: _distribution.erk_num_to_prune(s, shapes), static_argnums=1)


@pytest.mark.parametrize("jit", [False, True])
def test_erk_counts_equal_fraction_reference(jit):
  rng = np.random.default_rng(3)
  # Eager mode runs every small integer op on its own: fewer cases there.
  for trial in range(5 if jit else 2):
    shapes = _random_shapes(rng, int(rng.integers(1, 7)))
    for s in [0.0, 0.3, 0.5, 0.8, 0.95, 1.0, float(rng.random())][: None if jit else 4]:
      fn = _jit_erk if jit else _distribution.erk_num_to_prune
      got = [int(k) for k in fn(jnp.float32(s), tuple(shapes))]
      assert got == reference.erk_num_to_prune(s, shapes), (trial, shapes, s)


def test_erk_caps_dense_leaves_and_meets_the_total_exactly():
  # Small leaves with large sum/prod would exceed density 1 at moderate sparsity.
  shapes = [(512, 512), (4, 3), (7,), (2, 2, 3, 3), (300, 20)]
  for s in [0.5, 0.7, 0.9]:
    got = [int(k) for k in cyclax.erk_num_to_prune(s, shapes)]
    expect = reference.erk_num_to_prune(s, shapes)
    assert got == expect
    sizes = [int(np.prod(x)) for x in shapes]
    assert sum(got) == reference.num_to_prune(s, sum(sizes))
    assert got[1] == 0 and got[2] == 0  # capped: kept dense
    assert all(0 <= k <= n for k, n in zip(got, sizes))


def test_erk_density_is_proportional_to_sum_over_prod_of_all_dims():
  shapes = [(64, 32), (3, 3, 16, 32), (128, 128)]
  got = [int(k) for k in cyclax.erk_num_to_prune(0.9, shapes)]
  sizes = [float(np.prod(s)) for s in shapes]
  density = [1 - k / n for k, n in zip(got, sizes)]
  raw = [sum(s) / n for s, n in zip(shapes, sizes)]
  ratios = [d / r for d, r in zip(density, raw)]
  np.testing.assert_allclose(ratios, ratios[0], rtol=2e-3)


def test_erk_total_exact_beyond_int32():
  # Each leaf is below 2**31 entries, the total is not; only shapes are needed.
  shapes = [(65536, 30000), (40000, 40000), (1024, 1024), (3, 3, 512, 512)]
  assert sum(int(np.prod(s, dtype=object)) for s in shapes) > 2**31
  for s in [0.5, 0.9, 0.987654]:
    got = [int(k) for k in _jit_erk(jnp.float32(s), tuple(shapes))]
    assert got == reference.erk_num_to_prune(s, shapes)


# ---------------------------------------------------------------------------
# Global and overrides through the distribution dispatcher
# ---------------------------------------------------------------------------


def _leaves(rng, shapes, dtypes, ties):
  out = []
  for shape, dtype in zip(shapes, dtypes):
    x = rng.integers(-3, 4, size=shape).astype(np.float64) if ties else rng.standard_normal(shape)
    out.append(jnp.asarray(x, dtype))
  return out


_jit_prune = jax.jit(_masks.select_masks, static_argnames="distribution")


@pytest.mark.parametrize("jit", [False, True])
def test_global_masks_equal_concatenated_stable_argsort(jit):
  rng = np.random.default_rng(11)
  fn = _jit_prune if jit else _masks.select_masks
  for ties in [True, False][: None if jit else 1]:
    shapes = [(5, 7), (3,), (2, 3, 4), (1, 1)]
    leaves = _leaves(rng, shapes, [jnp.float32, jnp.bfloat16, jnp.float32, jnp.float16], ties)
    for s in [0.6, 0.0, 0.25, 0.999][: None if jit else 1]:
      got = fn(leaves, jnp.float32(s), [None] * len(leaves), distribution="global")
      total = sum(x.size for x in leaves)
      for g, e in zip(got, reference.global_keep_masks(leaves, reference.num_to_prune(s, total))):
        np.testing.assert_array_equal(np.asarray(g), e)


@pytest.mark.parametrize("distribution", ["uniform", "global", "erk"])
def test_overridden_leaves_pruned_alone_and_rest_follows_distribution(distribution):
  rng = np.random.default_rng(5)
  shapes = [(6, 9), (4, 4), (3, 3, 2, 5)]
  leaves = _leaves(rng, shapes, [jnp.float32] * 3, ties=False)
  s, override = 0.7, 0.25
  got = [np.asarray(m) for m in _jit_prune(leaves, s, [None, override, None], distribution=distribution)]
  np.testing.assert_array_equal(
    got[1], reference.keep_mask(np.asarray(leaves[1]), reference.num_to_prune(override, 16))
  )
  followers = [np.asarray(leaves[0]), np.asarray(leaves[2])]
  if distribution == "uniform":
    ks = [reference.num_to_prune(s, x.size) for x in followers]
    expect = [reference.keep_mask(x, k) for x, k in zip(followers, ks)]
  elif distribution == "erk":
    ks = reference.erk_num_to_prune(s, [shapes[0], shapes[2]])
    expect = [reference.keep_mask(x, k) for x, k in zip(followers, ks)]
  else:
    expect = reference.global_keep_masks(followers, reference.num_to_prune(s, sum(x.size for x in followers)))
  np.testing.assert_array_equal(got[0], expect[0])
  np.testing.assert_array_equal(got[2], expect[1])


# Three fixed sets of leaves (one compiled function per set and distribution): mixed dtypes,
# a scalar and size-1 leaves, and small leaves that ERK keeps dense at high sparsity.
LEAF_SETS = [
  ([(9, 7), (3,), (2, 3, 4), ()], [jnp.float32, jnp.bfloat16, jnp.float16, jnp.float32]),
  ([(5, 9), (1, 1)], [jnp.bfloat16, jnp.float32]),
  ([(8, 8), (4, 2, 3), (9,)], [jnp.float32, jnp.float16, jnp.float32]),
]


@settings(max_examples=12, deadline=None)
@given(
  which=st.integers(0, len(LEAF_SETS) - 1),
  distribution=st.sampled_from(["global", "erk"]),
  sparsity=st.floats(0.0, 1.0),
  seed=st.integers(0, 2**16),
  ties=st.booleans(),
)
def test_property_distribution_masks_equal_reference(which, distribution, sparsity, seed, ties):
  shapes, dtypes = LEAF_SETS[which]
  leaves = _leaves(np.random.default_rng(seed), shapes, dtypes, ties)
  levels = [None] * len(leaves)
  got = [np.asarray(m) for m in _jit_prune(leaves, jnp.float32(sparsity), levels, distribution=distribution)]
  total = sum(x.size for x in leaves)
  if distribution == "global":
    expect = reference.global_keep_masks(leaves, reference.num_to_prune(sparsity, total))
  else:
    ks = reference.erk_num_to_prune(sparsity, shapes)
    expect = [reference.keep_mask(np.asarray(x), k) for x, k in zip(leaves, ks)]
  for g, e in zip(got, expect):
    np.testing.assert_array_equal(g, e)
  assert sum(int((~g).sum()) for g in got) == reference.num_to_prune(sparsity, total)


# ---------------------------------------------------------------------------
# Through the transformation
# ---------------------------------------------------------------------------


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {
    "embed": {"kernel": jnp.asarray(rng.standard_normal((12, 8)), jnp.float32)},
    "conv": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 4, 6)), jnp.float32)},
    "dense": {"kernel": jnp.asarray(rng.standard_normal((8, 5)), jnp.float32), "bias": jnp.ones(5)},
  }


def _grads(params, t):
  return jax.tree.map(lambda x: jnp.cos(x * (t + 1.0)), params)


def _run(tx, params, steps, jit=True):
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  for t in range(steps):
    updates, state = update(_grads(params, t), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


@pytest.mark.parametrize("distribution", ["global", "erk"])
def test_transformation_prunes_candidates_per_distribution(distribution):
  params = _params(1)
  tx = optax.chain(optax.sgd(0.1), cyclax.magnitude_prune(0.6, update_every=1, distribution=distribution))
  new, state = _run(tx, params, 1)
  names = ["conv", "dense", "embed"]  # flatten order
  cands = [
    np.asarray(params[n]["kernel"]) - np.float32(0.1) * np.asarray(_grads(params, 0)[n]["kernel"])
    for n in names
  ]
  if distribution == "global":
    expect = reference.global_keep_masks(cands, reference.num_to_prune(0.6, sum(c.size for c in cands)))
  else:
    ks = reference.erk_num_to_prune(0.6, [c.shape for c in cands])
    expect = [reference.keep_mask(c, k) for c, k in zip(cands, ks)]
  masks = cyclax.get_masks(state)
  for n, e in zip(names, expect):
    np.testing.assert_array_equal(np.asarray(masks[n]["kernel"]), e)
    np.testing.assert_array_equal(np.asarray(new[n]["kernel"]) != 0, e)
  assert masks["dense"]["bias"] is None


def test_mapping_and_callable_overrides_are_honoured_with_schedules():
  params = _params(2)
  sched = optax.linear_schedule(0.2, 0.4, 4)
  by_map = cyclax.magnitude_prune(0.8, update_every=1, overrides={"embed/kernel": 0.5, "conv/kernel": sched})

  def by_path(path, leaf):
    name = "/".join(p.key for p in path)
    return {"embed/kernel": 0.5, "conv/kernel": sched}.get(name)

  by_fn = cyclax.magnitude_prune(0.8, update_every=1, overrides=by_path)
  for tx in [by_map, by_fn]:
    state = tx.init(params)
    p = params
    for t in range(4):
      updates, state = jax.jit(tx.update)(_grads(p, t), state, p)
      p = optax.apply_updates(p, updates)
      masks = cyclax.get_masks(state)
      assert int((~masks["embed"]["kernel"]).sum()) == reference.num_to_prune(0.5, 96)
      assert int((~masks["conv"]["kernel"]).sum()) == reference.num_to_prune(float(sched(t)), 216)
      assert int((~masks["dense"]["kernel"]).sum()) == reference.num_to_prune(0.8, 40)


def test_traced_sparsity_under_inject_hyperparams():
  params = _params(3)
  tx = optax.inject_hyperparams(
    lambda sparsity: cyclax.magnitude_prune(sparsity, update_every=1, distribution="erk")
  )(sparsity=0.3)
  state = tx.init(params)
  for s in [0.3, 0.75]:
    state.hyperparams["sparsity"] = jnp.float32(s)
    updates, state = jax.jit(tx.update)(_grads(params, 0), state, params)
    params = optax.apply_updates(params, updates)
    masks = cyclax.get_masks(state)
    names = ["conv", "dense", "embed"]
    got = [int((~masks[n]["kernel"]).sum()) for n in names]
    assert got == reference.erk_num_to_prune(s, [params[n]["kernel"].shape for n in names])


def test_bad_arguments_raise_clear_errors():
  with pytest.raises(ValueError, match="`distribution` must be one of 'uniform', 'global', 'erk'"):
    cyclax.magnitude_prune(0.5, distribution="layerwise")
  with pytest.raises(ValueError, match=r"overrides\['a/kernel'\]"):
    cyclax.magnitude_prune(0.5, overrides={"a/kernel": 1.5})
  with pytest.raises(TypeError, match="`overrides` must be None, a mapping"):
    cyclax.magnitude_prune(0.5, overrides=[("a", 0.5)])
  with pytest.raises(ValueError, match="`pattern` works with distribution='uniform'"):
    cyclax.magnitude_prune(0.5, distribution="global", pattern=(2, 4))
  with pytest.raises(ValueError, match="`distribution` must be one of"):
    cyclax.cyclical_prune(0.5, num_cycles=2, cycle_steps=10, distribution="ERK")
  tx = cyclax.magnitude_prune(0.5, overrides={"embed/kernal": 0.5})
  with pytest.raises(ValueError, match="'embed/kernal' names no leaf"):
    tx.init(_params())
  tx = cyclax.magnitude_prune(0.5, overrides={"dense/bias": 0.5})
  with pytest.raises(ValueError, match="'dense/bias' is not a pruned leaf"):
    tx.init(_params())
  tx = cyclax.magnitude_prune(0.5, overrides=lambda path, leaf: 2.0)
  with pytest.raises(ValueError, match="must lie in"):
    tx.init(_params())


# ---------------------------------------------------------------------------
# The dispatcher on its own: patterns, blocks over a mapped axis, bad combinations
# ---------------------------------------------------------------------------


def test_select_masks_with_a_pattern_equals_the_group_reference():
  rng = np.random.default_rng(14)
  leaves = [
    jnp.asarray(rng.integers(-3, 4, size=(8, 6)) * 0.5, jnp.float32),
    jnp.asarray(rng.standard_normal((4, 3)), jnp.bfloat16),
  ]
  got = _masks.select_masks(leaves, jnp.float32(0.4), [None, None], pattern=(2, 4), pattern_axis=0)
  for x, m in zip(leaves, got):
    np.testing.assert_array_equal(np.asarray(m), reference.nm_keep_mask(np.asarray(x), 0.4, 2, 4, 0))


def _expected_masks(whole, level, override, distribution):
  """References for three leaves: the first two follow ``distribution``, the third is overridden."""
  followers = whole[:2]
  if distribution == "global":
    expect = reference.global_keep_masks(
      followers, reference.num_to_prune(level, sum(x.size for x in followers))
    )
  else:
    ks = [reference.num_to_prune(level, x.size) for x in followers]
    if distribution == "erk":
      ks = reference.erk_num_to_prune(level, [x.shape for x in followers])
    expect = [reference.keep_mask(x, k) for x, k in zip(followers, ks)]
  return expect + [reference.keep_mask(whole[2], reference.num_to_prune(override, whole[2].size))]


@pytest.mark.parametrize("distribution", ["uniform", "global", "erk"])
def test_select_masks_on_blocks_over_a_mapped_axis_equal_the_whole_leaves(distribution):
  # Two blocks per leaf along a vmapped axis: leaf 0 split by rows, leaf 1 replicated, leaf 2
  # split by columns and overridden. Integer-valued leaves tie at every threshold.
  rng = np.random.default_rng(15)
  whole = [
    (rng.integers(-3, 4, size=(8, 6)) * 0.5).astype(np.float32),
    rng.standard_normal((4, 4)).astype(np.float32),
    rng.integers(-2, 3, size=(6, 4)).astype(np.float32),
  ]
  dims = [0, None, 1]
  blocks = [np.stack(np.split(whole[0], 2, 0)), np.stack([whole[1]] * 2), np.stack(np.split(whole[2], 2, 1))]
  level, override = 0.6, 0.25

  def local(*candidates):
    levels = [None, None, jnp.float32(override)]
    return _masks.select_masks(
      list(candidates),
      jnp.float32(level),
      levels,
      distribution=distribution,
      axis_name="i",
      sharded_dims=dims,
    )

  got = [np.asarray(m) for m in jax.jit(jax.vmap(local, axis_name="i"))(*blocks)]
  np.testing.assert_array_equal(got[1][0], got[1][1])  # a replicated leaf gets one mask everywhere
  joined = [np.concatenate(list(got[0]), 0), got[1][0], np.concatenate(list(got[2]), 1)]
  for g, e in zip(joined, _expected_masks(whole, level, override, distribution)):
    np.testing.assert_array_equal(g, e)


def test_select_masks_rejects_bad_combinations():
  leaves = [jnp.ones((4, 4))]
  with pytest.raises(ValueError, match="pattern"):
    _masks.select_masks(leaves, 0.5, [None], distribution="global", pattern=(2, 4))
  with pytest.raises(ValueError, match="pattern"):
    _masks.select_masks(leaves, 0.5, [0.25], pattern=(2, 4))
  with pytest.raises(ValueError, match="axis_name"):
    _masks.select_masks(leaves, 0.5, [None], pattern=(2, 4), axis_name="x")
  with pytest.raises(ValueError, match="leaf_levels"):
    _masks.select_masks(leaves, 0.5, [None, None])
  with pytest.raises(ValueError, match="`distribution` must be one of"):
    _masks.select_masks(leaves, 0.5, [None], distribution="ERK")
