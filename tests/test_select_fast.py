"""Kernel variants, global selection and exact big counts against NumPy / Python-int references."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cyclax import _select

METHODS = ["radix4", "radix8", "bisect"]
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
TIE_POOL = [0.0, -0.0, 0.5, -0.5, 1.0, 2.0, -2.0, np.inf, -np.nan, np.nan, 1e-3, 1e-40, 3e-41, 1e-6, 7e4]


def reference_global(leaves, k):
  """Keep-masks from a stable argsort of the concatenated |x| (NaN last), leaf order then row-major."""
  flat = np.concatenate([np.abs(np.asarray(x).astype(np.float64)).ravel() for x in leaves])
  nan = np.isnan(flat)
  order = np.lexsort((np.arange(flat.size), np.where(nan, np.inf, flat), nan))
  keep = np.ones(flat.size, bool)
  keep[order[:k]] = False
  out, start = [], 0
  for x in leaves:
    out.append(keep[start : start + x.size].reshape(x.shape))
    start += x.size
  return out


def random_leaf(rng, shape, dtype, ties):
  if ties:
    values = rng.choice(TIE_POOL, size=shape)
  else:
    values = rng.standard_normal(shape) * rng.choice([1e-3, 1.0, 1e3])
  # Through float32 so that 7e4 becomes float16 inf without a NumPy overflow warning.
  return jnp.asarray(np.asarray(values, np.float32)).astype(dtype)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("jit", [False, True])
def test_per_leaf_masks_equal_stable_argsort(method, dtype, jit):
  rng = np.random.default_rng(hash((method, str(dtype), jit)) % 2**32)
  specs = [((1,), False), ((7, 5), True), ((3, 4, 6), False)]
  leaves = [random_leaf(rng, s, dtype, ties) for s, ties in specs]
  ks = [0, 17, int(leaves[2].size)]
  fn = lambda ls, ks: _select.prune_masks(ls, ks, method=method)
  fn = jax.jit(fn) if jit else fn
  got = fn(leaves, [jnp.int32(k) for k in ks])
  for x, k, m in zip(leaves, ks, got):
    np.testing.assert_array_equal(np.asarray(m), reference_global([x], k)[0])
    assert int(np.sum(~np.asarray(m))) == k


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("few_ties", [0, 1, 3])
def test_per_leaf_all_ks_on_a_tied_leaf(method, few_ties):
  rng = np.random.default_rng(7)
  x = random_leaf(rng, (4, 5), jnp.float32, ties=True)
  fn = jax.jit(lambda x, k: _select.prune_masks([x], [k], method=method, few_ties=few_ties)[0])
  for k in range(x.size + 1):
    np.testing.assert_array_equal(np.asarray(fn(x, k)), reference_global([x], k)[0])


@pytest.mark.parametrize("few_ties", [0, 2, 3])
def test_global_all_ks_over_tied_leaves(few_ties):
  rng = np.random.default_rng(17)
  leaves = [random_leaf(rng, (3, 4), jnp.float32, ties=True), random_leaf(rng, (5,), jnp.bfloat16, ties=True)]
  fn = jax.jit(lambda ls, k: _select.global_prune_masks(ls, k, few_ties=few_ties))
  for k in range(sum(x.size for x in leaves) + 1):
    for m, r in zip(fn(leaves, jnp.int32(k)), reference_global(leaves, k)):
      np.testing.assert_array_equal(np.asarray(m), r)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("jit", [False, True])
def test_global_masks_equal_concatenated_stable_argsort(method, jit):
  rng = np.random.default_rng(11 + METHODS.index(method) + 10 * jit)
  leaves = [
    random_leaf(rng, (6, 4), jnp.float32, ties=True),
    random_leaf(rng, (1,), jnp.bfloat16, ties=False),
    random_leaf(rng, (3, 5), jnp.float16, ties=True),
    random_leaf(rng, (2, 3, 2), jnp.bfloat16, ties=True),
  ]
  total = sum(x.size for x in leaves)
  fn = lambda ls, k: _select.global_prune_masks(ls, k, method=method)
  fn = jax.jit(fn) if jit else fn
  # Without jit every call re-traces the loops, so check fewer k there.
  ks = [0, 1, total // 3, total // 2 + 1, total - 1, total] if jit else [0, total // 2 + 1, total]
  for k in ks:
    got = fn(leaves, jnp.int32(k))
    for m, r in zip(got, reference_global(leaves, k)):
      np.testing.assert_array_equal(np.asarray(m), r)


def test_global_ties_go_to_earlier_leaves_first():
  leaves = [jnp.zeros((3, 3)) + 0.5, jnp.full((2, 2), 0.5, jnp.bfloat16), jnp.array([0.25, 0.5])]
  got = _select.global_prune_masks(leaves, 11)
  for m, r in zip(got, reference_global(leaves, 11)):
    np.testing.assert_array_equal(np.asarray(m), r)
  assert np.asarray(got[0]).sum() == 0 and np.asarray(got[1]).sum() == 3


def test_global_count_and_k_beyond_total_are_clipped():
  rng = np.random.default_rng(3)
  leaves = [random_leaf(rng, (4, 4), jnp.float32, ties=False)]
  [m] = _select.global_prune_masks(leaves, _select.as_count(2**40))
  assert not np.asarray(m).any()


def test_num_to_prune_total_equals_python_int_rounding_past_int32():
  rng = np.random.default_rng(5)
  fn = jax.jit(lambda s, sizes: _select.num_to_prune_total(s, sizes), static_argnums=1)
  draws = [tuple(int(n) for n in rng.integers(0, 2**34, size=rng.integers(1, 6))) for _ in range(8)]
  for sizes in [(2**31, 2**31 + 7, 3), (2**47 - 1,)] + draws:
    s = float(rng.choice([0.0, 1.0, 0.5, 0.9, rng.random()]))
    fixed = int(np.round(np.float32(s) * np.float32(2**24)))
    expected = (fixed * sum(sizes) + 2**23) >> 24
    assert _select.count_to_int(fn(jnp.float32(s), sizes)) == expected


def test_num_to_prune_total_agrees_with_per_leaf_rule_below_int32():
  rng = np.random.default_rng(6)
  for _ in range(20):
    n = int(rng.integers(0, 2**31))
    s = float(rng.random())
    assert _select.count_to_int(_select.num_to_prune_total(s, [n])) == int(_select.num_to_prune(s, n))


def test_count_sum_of_int32_counts_is_exact_past_int32():
  rng = np.random.default_rng(8)
  counts = [int(c) for c in rng.integers(2**30, 2**31, size=200)]
  total = _select._count_sum([jnp.int32(c) for c in counts])
  assert _select.count_to_int(total) == sum(counts) > 2**31
  other = _select.as_count(sum(counts) - 12345)
  assert bool(_select._count_less(other, total)) and not bool(_select._count_less(total, other))
  assert _select.count_to_int(_select._count_sub(total, other)) == 12345


def test_ties_are_split_over_leaves_exactly_with_totals_past_int32():
  # Synthetic per-leaf counts (no 2**31-entry arrays): the same arithmetic the global kernel runs.
  rng = np.random.default_rng(9)
  for _ in range(20):
    below = [int(c) for c in rng.integers(0, 2**31 - 1, size=5)]
    at = [int(c) for c in rng.integers(0, 2**31 - 1, size=5)]
    k = sum(below) + int(rng.integers(0, sum(at) + 1))
    below_, at_ = [jnp.int32(c) for c in below], [jnp.int32(c) for c in at]
    need = _select._ties_per_leaf(_select.as_count(k), below_, at_)
    remaining, expected = k - sum(below), []
    for a in at:
      expected.append(min(remaining, a))
      remaining -= expected[-1]
    assert [int(n) for n in need] == expected


def test_count_true_sums_over_a_mapped_axis():
  x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 6)), jnp.float32)
  counts = jax.vmap(lambda row: jnp.stack(_select.count_true([row > 0, row < -0.5], "i")), axis_name="i")(x)
  expected = [int(np.sum(np.asarray(x) > 0)), int(np.sum(np.asarray(x) < -0.5))]
  assert np.asarray(counts).tolist() == [expected] * 4


@pytest.mark.parametrize("few_ties", [0, 3])
@pytest.mark.parametrize("num_ties", [2, 3, 4, 6, 9])
def test_tie_cut_over_a_mapped_axis_equals_the_whole_leaf(num_ties, few_ties):
  # Blocks of one leaf along a vmapped axis (counts and tie indices combined over it);
  # the ties sit in several blocks, and every k that splits them is tried, so both the
  # one-pass cut (at most _FEW_TIES ties pruned) and the index search run.
  rng = np.random.default_rng(40 + num_ties)
  whole = rng.uniform(1.0, 2.0, size=(8, 6)).astype(np.float32)
  spots = rng.choice(whole.size, size=num_ties, replace=False)
  whole.ravel()[spots] = 1.5 * rng.choice([-1.0, 1.0], size=num_ties)
  below = int(np.sum(np.abs(whole) < 1.5))
  per_block = lambda block, k: _select.prune_masks([block], [k], axis_name="i", few_ties=few_ties)[0]
  fn = jax.jit(jax.vmap(per_block, in_axes=(0, None), axis_name="i"))
  for k in range(below, below + num_ties + 1):
    got = np.asarray(fn(jnp.asarray(whole.reshape(4, 2, 6)), jnp.int32(k))).reshape(whole.shape)
    np.testing.assert_array_equal(got, reference_global([whole], k)[0])


def test_unknown_method_and_mismatched_ks_are_rejected():
  with pytest.raises(ValueError, match="method"):
    _select.prune_masks([jnp.ones(3)], [1], method="sort")
  for bad in [4, -1, 1.5, True]:
    with pytest.raises(ValueError, match="few_ties.*0 to 3"):
      _select.prune_masks([jnp.ones(3)], [1], few_ties=bad)
    with pytest.raises(ValueError, match="few_ties.*0 to 3"):
      _select.global_prune_masks([jnp.ones(3)], 1, few_ties=bad)
  with pytest.raises(ValueError, match="ks"):
    _select.prune_masks([jnp.ones(3)], [1, 2])
  with pytest.raises(TypeError, match="floating"):
    _select.global_prune_masks([jnp.ones(3, jnp.int32)], 1)
  with pytest.raises(ValueError, match="2\\*\\*48"):
    _select.num_to_prune_total(0.5, [2**47, 2**47])


@st.composite
def _cases(draw):
  ndims = draw(st.lists(st.integers(0, 3), min_size=1, max_size=3))
  shapes = [tuple(draw(st.lists(st.integers(1, 5), min_size=d, max_size=d))) for d in ndims]
  dtypes = [draw(st.sampled_from(DTYPES)) for _ in shapes]
  ties = [draw(st.booleans()) for _ in shapes]
  sparsity = draw(st.floats(0.0, 1.0))
  method = draw(st.sampled_from(METHODS))
  return shapes, dtypes, ties, sparsity, method, draw(st.integers(0, 2**31))


@settings(max_examples=10, deadline=None)
@given(_cases())
def test_property_per_leaf_and_global_equal_reference(case):
  shapes, dtypes, ties, sparsity, method, seed = case
  rng = np.random.default_rng(seed)
  leaves = [random_leaf(rng, s, d, t) for s, d, t in zip(shapes, dtypes, ties)]
  ks = [int(_select.num_to_prune(sparsity, x.size)) for x in leaves]
  for x, k, m in zip(leaves, ks, _select.prune_masks(leaves, ks, method=method)):
    np.testing.assert_array_equal(np.asarray(m), reference_global([x], k)[0])
  k_total = _select.num_to_prune_total(sparsity, [x.size for x in leaves])
  got = _select.global_prune_masks(leaves, k_total, method=method)
  for m, r in zip(got, reference_global(leaves, _select.count_to_int(k_total))):
    np.testing.assert_array_equal(np.asarray(m), r)


def test_float64_variants_and_mixed_global_under_x64():
  script = textwrap.dedent(
    """
    import numpy as np, jax, jax.numpy as jnp
    from test_select_fast import reference_global, TIE_POOL
    from cyclax import _select
    rng = np.random.default_rng(12)
    a = jnp.asarray(rng.choice(TIE_POOL + [1e-300, 1e300], size=(5, 4)), jnp.float64)
    b = jnp.asarray(rng.standard_normal((3, 3)), jnp.float32)
    assert a.dtype == jnp.float64
    for method in ["radix4", "radix8", "bisect"]:
      for k in [0, 7, a.size]:
        [m] = _select.prune_masks([a], [k], method=method)
        np.testing.assert_array_equal(np.asarray(m), reference_global([a], k)[0])
      for k in [0, 12, a.size + b.size]:
        got = _select.global_prune_masks([a, b], k, method=method)
        for m, r in zip(got, reference_global([a, b], k)):
          np.testing.assert_array_equal(np.asarray(m), r)
    print("x64 ok")
    """
  )
  env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), env.get("PYTHONPATH", "")])
  cmd = [sys.executable, "-c", script]
  result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "x64 ok" in result.stdout
