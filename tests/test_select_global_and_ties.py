"""Global selection and the tie rule (`cyclax._select`) against NumPy / Python-int references."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from hypothesis import given, settings
from hypothesis import strategies as st

from cyclax import _exact, _select

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
TIE_VALUES = [0.0, -0.0, 0.5, -0.5, 1.0, 2.0, -2.0, np.inf, -np.nan, np.nan, 1e-3, 1e-40, 3e-41, 1e-6, 7e4]


def random_leaf(rng, shape, dtype, ties):
  if ties:
    values = rng.choice(TIE_VALUES, size=shape)
  else:
    values = rng.standard_normal(shape) * rng.choice([1e-3, 1.0, 1e3])
  # Through float32 so that 7e4 becomes float16 inf without a NumPy overflow warning.
  return jnp.asarray(np.asarray(values, np.float32)).astype(dtype)


def _tie_paths(leaves, ks):
  """How many ``ks`` prune part of the ties at their threshold: (at most three, more than three).

  Counted with the reference order, so a test can check that it runs both tie paths.
  """
  flat = np.concatenate([np.abs(np.asarray(x, np.float64)).ravel() for x in leaves])
  nan = np.isnan(flat)
  # Integer codes ordered like (is NaN, |x|): NaN above +inf, all NaNs equal.
  flat = np.unique(np.stack([nan, np.where(nan, 0.0, flat)]), axis=1, return_inverse=True)[1].ravel()
  order = np.sort(flat)
  few = many = 0
  for k in ks:
    if 0 < k <= flat.size:
      threshold = order[k - 1]
      below, tied = int(np.sum(flat < threshold)), int(np.sum(flat == threshold))
      pruned = k - below
      few += 0 < pruned < tied and pruned <= 3
      many += pruned < tied and pruned > 3
  return few, many


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("jit", [False, True])
def test_per_leaf_masks_equal_stable_argsort(dtype, jit):
  rng = np.random.default_rng([21, DTYPES.index(dtype), jit])
  specs = [((1,), False), ((7, 5), True), ((3, 4, 6), False)]
  leaves = [random_leaf(rng, s, dtype, ties) for s, ties in specs]
  ks = [0, 17, int(leaves[2].size)]
  fn = jax.jit(_select.prune_masks) if jit else _select.prune_masks
  got = fn(leaves, [jnp.int32(k) for k in ks])
  for x, k, m in zip(leaves, ks, got):
    np.testing.assert_array_equal(np.asarray(m), reference.keep_mask(np.asarray(x), k))
    assert int(np.sum(~np.asarray(m))) == k


def test_per_leaf_all_ks_on_a_tied_leaf():
  # Every k: no tie, all ties, a few ties (read in one pass) and many (index search).
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.choice([0.0, -0.5, 0.5, 2.0, -1e-40, np.nan], size=(4, 5)), jnp.float32)
  ks = range(x.size + 1)
  few, many = _tie_paths([x], ks)
  assert few > 0 and many > 0
  fn = jax.jit(lambda x, k: _select.prune_masks([x], [k])[0])
  for k in ks:
    np.testing.assert_array_equal(np.asarray(fn(x, k)), reference.keep_mask(np.asarray(x), k))


def test_global_all_ks_over_tied_leaves():
  rng = np.random.default_rng(17)
  leaves = [random_leaf(rng, (3, 4), jnp.float32, ties=True), random_leaf(rng, (5,), jnp.bfloat16, ties=True)]
  ks = range(sum(x.size for x in leaves) + 1)
  few, many = _tie_paths(leaves, ks)
  assert few > 0 and many > 0
  fn = jax.jit(_select.global_prune_masks)
  for k in ks:
    for m, r in zip(fn(leaves, jnp.int32(k)), reference.global_keep_masks(leaves, k)):
      np.testing.assert_array_equal(np.asarray(m), r)


@pytest.mark.parametrize("jit", [False, True])
def test_global_masks_equal_concatenated_stable_argsort(jit):
  rng = np.random.default_rng(11 + 10 * jit)
  leaves = [
    random_leaf(rng, (6, 4), jnp.float32, ties=True),
    random_leaf(rng, (1,), jnp.bfloat16, ties=False),
    random_leaf(rng, (3, 5), jnp.float16, ties=True),
    random_leaf(rng, (2, 3, 2), jnp.bfloat16, ties=True),
  ]
  total = sum(x.size for x in leaves)
  fn = jax.jit(_select.global_prune_masks) if jit else _select.global_prune_masks
  # Without jit every call re-traces the loops, so check fewer k there.
  ks = [0, 1, total // 3, total // 2 + 1, total - 1, total] if jit else [0, total // 2 + 1, total]
  for k in ks:
    got = fn(leaves, jnp.int32(k))
    for m, r in zip(got, reference.global_keep_masks(leaves, k)):
      np.testing.assert_array_equal(np.asarray(m), r)


def test_global_ties_go_to_earlier_leaves_first():
  leaves = [jnp.zeros((3, 3)) + 0.5, jnp.full((2, 2), 0.5, jnp.bfloat16), jnp.array([0.25, 0.5])]
  k = 11
  got = [np.asarray(m) for m in _select.global_prune_masks(leaves, k)]
  for m, r in zip(got, reference.global_keep_masks(leaves, k)):
    np.testing.assert_array_equal(m, r)
  # 0.25 goes first; the remaining k - 1 ties at 0.5 fill the first leaf, then the second.
  ties_left = k - 1
  assert got[0].sum() == max(leaves[0].size - ties_left, 0)
  assert got[1].sum() == leaves[1].size - (ties_left - leaves[0].size)
  assert got[2].tolist() == [False, True]


def test_global_k_beyond_total_is_clipped():
  rng = np.random.default_rng(3)
  leaves = [random_leaf(rng, (4, 4), jnp.float32, ties=False)]
  for k in (2**40, _exact.as_wide(2**70), jnp.int32(17)):
    [m] = _select.global_prune_masks(leaves, k)
    assert not np.asarray(m).any()


def test_count_true_sums_over_a_mapped_axis():
  x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 6)), jnp.float32)
  counts = jax.vmap(lambda row: jnp.stack(_select.count_true([row > 0, row < -0.5], "i")), axis_name="i")(x)
  expected = [int(np.sum(np.asarray(x) > 0)), int(np.sum(np.asarray(x) < -0.5))]
  assert np.asarray(counts).tolist() == [expected] * 4


@pytest.mark.parametrize("num_ties", [2, 3, 4, 6, 9])
def test_tie_cut_over_a_mapped_axis_equals_the_whole_leaf(num_ties):
  # Blocks of one leaf along a vmapped axis (counts and tie indices combined over it);
  # the ties sit in several blocks, and every k that splits them is tried, so both the
  # one-pass read of the first tie indices and the index search run.
  rng = np.random.default_rng(40 + num_ties)
  whole = rng.uniform(1.0, 2.0, size=(8, 6)).astype(np.float32)
  spots = rng.choice(whole.size, size=num_ties, replace=False)
  whole.ravel()[spots] = 1.5 * rng.choice([-1.0, 1.0], size=num_ties)
  below = int(np.sum(np.abs(whole) < 1.5))
  per_block = lambda block, k: _select.prune_masks([block], [k], axis_name="i")[0]
  fn = jax.jit(jax.vmap(per_block, in_axes=(0, None), axis_name="i"))
  for k in range(below, below + num_ties + 1):
    got = np.asarray(fn(jnp.asarray(whole.reshape(4, 2, 6)), jnp.int32(k))).reshape(whole.shape)
    np.testing.assert_array_equal(got, reference.keep_mask(whole, k))


def test_mismatched_ks_and_bad_scores_are_rejected():
  with pytest.raises(ValueError, match="ks"):
    _select.prune_masks([jnp.ones(3)], [1, 2])
  with pytest.raises(TypeError, match="floating"):
    _select.global_prune_masks([jnp.ones(3, jnp.int32)], 1)
  with pytest.raises(TypeError, match="floating"):
    _select.prune_masks([jnp.ones(3, jnp.int32)], [1])


# Property test: three fixed sets of leaves (one compiled function each), random values and sparsity.

LEAF_SETS = [
  [((), jnp.float32), ((7,), jnp.bfloat16), ((3, 5), jnp.float16)],
  [((2, 3, 4), jnp.float32), ((1,), jnp.float16)],
  [((4, 5), jnp.bfloat16), ((5, 4), jnp.bfloat16), ((1, 1, 3), jnp.float32), ((9,), jnp.float32)],
]


def _per_leaf_and_global(leaves, sparsity):
  ks = [_exact.num_to_prune(sparsity, x.size) for x in leaves]
  k_total = _exact.num_to_prune_total(sparsity, [x.size for x in leaves])
  return _select.prune_masks(leaves, ks), _select.global_prune_masks(leaves, k_total)


_jit_per_leaf_and_global = jax.jit(_per_leaf_and_global)


@settings(max_examples=12, deadline=None)
@given(
  which=st.integers(0, len(LEAF_SETS) - 1),
  ties=st.lists(st.booleans(), min_size=4, max_size=4),
  sparsity=st.floats(0.0, 1.0),
  seed=st.integers(0, 2**31),
)
def test_property_per_leaf_and_global_equal_reference(which, ties, sparsity, seed):
  rng = np.random.default_rng(seed)
  leaves = [random_leaf(rng, s, d, t) for (s, d), t in zip(LEAF_SETS[which], ties)]
  per_leaf, global_ = _jit_per_leaf_and_global(leaves, jnp.float32(sparsity))
  for x, m in zip(leaves, per_leaf):
    np.testing.assert_array_equal(
      np.asarray(m), reference.keep_mask(np.asarray(x), reference.num_to_prune(sparsity, x.size))
    )
  k_total = reference.num_to_prune(sparsity, sum(x.size for x in leaves))
  for m, r in zip(global_, reference.global_keep_masks(leaves, k_total)):
    np.testing.assert_array_equal(np.asarray(m), r)


X64_SCRIPT = textwrap.dedent(
  """
  import json, sys
  import numpy as np, jax, jax.numpy as jnp
  from cyclax import _select
  a, b = (np.asarray(v) for v in json.loads(sys.stdin.read()))
  a, b = jnp.asarray(a, jnp.float64), jnp.asarray(b, jnp.float32)
  assert a.dtype == jnp.float64
  per_leaf = jax.jit(lambda x, k: _select.prune_masks([x], [k])[0])
  global_ = jax.jit(_select.global_prune_masks)
  out = {
    "per_leaf": {k: np.asarray(per_leaf(a, k)).tolist() for k in [0, 7, a.size]},
    "global": {k: [np.asarray(m).tolist() for m in global_([a, b], k)] for k in [0, 12, a.size + b.size]},
  }
  print("RESULT" + json.dumps(out))
  """
)


def test_float64_per_leaf_and_mixed_global_under_x64():
  # The masks are computed in a subprocess with x64 enabled and checked here.
  rng = np.random.default_rng(12)
  a = rng.choice(TIE_VALUES + [1e-300, 1e300], size=(5, 4))
  b = rng.standard_normal((3, 3)).astype(np.float32)
  env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
  payload = json.dumps([a.tolist(), b.tolist()])
  result = subprocess.run(
    [sys.executable, "-c", X64_SCRIPT], input=payload, env=env, capture_output=True, text=True, timeout=600
  )
  assert result.returncode == 0, result.stderr[-3000:]
  [line] = [x for x in result.stdout.splitlines() if x.startswith("RESULT")]
  out = json.loads(line[len("RESULT") :])
  for k, mask in out["per_leaf"].items():
    np.testing.assert_array_equal(np.asarray(mask), reference.keep_mask(a, int(k)))
  for k, masks in out["global"].items():
    for m, r in zip(masks, reference.global_keep_masks([a, b], int(k))):
      np.testing.assert_array_equal(np.asarray(m), r)
