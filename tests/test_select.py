"""Per-leaf selection (`cyclax._select.prune_masks`) against a NumPy stable-argsort reference."""

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

from cyclax import _keys, _select

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
SHAPES = [(), (1,), (7,), (3, 5), (2, 3, 5), (2, 1, 3, 3)]


_jit_prune_masks = jax.jit(lambda scores, ks: _select.prune_masks(scores, ks))


def _masks(scores, ks, jit):
  fn = _jit_prune_masks if jit else _select.prune_masks
  return [np.asarray(m) for m in fn(list(scores), [jnp.asarray(k, jnp.int32) for k in ks])]


def _values(rng, shape, kind, dtype):
  """Random test inputs: distinct normals, heavy integer ties with many zeros, or specials."""
  if kind == "normal":
    x = rng.standard_normal(shape)
  elif kind == "ties":
    x = rng.integers(-2, 3, size=shape).astype(np.float64)
  else:
    x = rng.standard_normal(shape)
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0])
    pick = rng.random(shape) < 0.5
    x = np.where(pick, rng.choice(specials, size=shape), x)
  return jnp.asarray(np.asarray(x), dtype)


def _ks(n):
  return sorted({0, 1 % (n + 1), n // 3, n // 2, max(n - 1, 0), n})


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_masks_equal_stable_argsort_reference(dtype):
  rng = np.random.default_rng([7, DTYPES.index(dtype)])
  for shape in SHAPES:
    for kind in ["normal", "ties", "special"]:
      x = _values(rng, shape, kind, dtype)
      for k in _ks(x.size):
        (mask,) = _masks([x], [k], jit=True)
        np.testing.assert_array_equal(mask, reference.keep_mask(np.asarray(x), k), err_msg=f"{shape} k={k}")
        assert mask.dtype == np.bool_ and mask.shape == x.shape
        assert int((~mask).sum()) == k


def test_masks_not_jitted_equal_reference():
  rng = np.random.default_rng(8)
  scores = [_values(rng, (3, 4), "ties", dtype) for dtype in DTYPES]
  ks = [5, 0, 12]
  for x, k, mask in zip(scores, ks, _masks(scores, ks, jit=False)):
    np.testing.assert_array_equal(mask, reference.keep_mask(np.asarray(x), k))


def test_masks_of_several_leaves_with_mixed_dtypes_equal_reference():
  rng = np.random.default_rng(11)
  scores = [
    _values(rng, (4, 5), "ties", jnp.float32),
    _values(rng, (3, 3), "special", jnp.bfloat16),
    _values(rng, (9,), "normal", jnp.float16),
    _values(rng, (1, 1), "normal", jnp.float32),
  ]
  ks = [7, 4, 9, 1]
  masks = _masks(scores, ks, jit=True)
  for x, k, m in zip(scores, ks, masks):
    np.testing.assert_array_equal(m, reference.keep_mask(np.asarray(x), k))


def test_all_equal_entries_prune_lowest_row_major_indices_first():
  x = jnp.full((3, 4), -0.5, jnp.float32)
  for k in range(13):
    (mask,) = _masks([x], [k], jit=True)
    expected = np.arange(12).reshape(3, 4) >= k
    np.testing.assert_array_equal(mask, expected)


def test_nan_ranks_above_infinity_and_is_kept():
  x = jnp.array([[np.nan, np.inf, 0.5], [-np.inf, np.nan, -2.0]], jnp.float32)
  nan = np.isnan(np.asarray(x))
  for k in range(x.size + 1):
    (mask,) = _masks([x], [k], jit=True)
    np.testing.assert_array_equal(mask, reference.keep_mask(np.asarray(x), k))
    # The four non-NaN entries go first; then the NaNs, lowest index first.
    assert np.all(mask[nan]) == (k <= int((~nan).sum()))
    assert np.all(~mask[~nan]) == (k >= int((~nan).sum()))


def test_score_bits_order_like_magnitude_with_nan_on_top():
  rng = np.random.default_rng(3)
  for dtype in DTYPES:
    x = np.asarray(_values(rng, (300,), "special", dtype)).astype(np.float64)
    bits = np.asarray(_keys.score_bits(jnp.asarray(x, dtype))).astype(np.int64)
    nan = np.isnan(x)
    mag = np.where(nan, 0.0, np.abs(x))
    # Lexicographic (is NaN, |x|) order, every NaN equal.
    less = (nan[:, None] < nan[None, :]) | ((nan[:, None] == nan[None, :]) & (mag[:, None] < mag[None, :]))
    equal = (nan[:, None] == nan[None, :]) & (mag[:, None] == mag[None, :])
    np.testing.assert_array_equal(bits[:, None] < bits[None, :], less)
    np.testing.assert_array_equal(bits[:, None] == bits[None, :], equal)


def test_score_bits_rejects_integer_scores():
  with pytest.raises(TypeError, match="floating"):
    _keys.score_bits(jnp.arange(4))


def test_traced_k_compiles_once_and_matches_eager():
  rng = np.random.default_rng(5)
  x = _values(rng, (5, 6), "ties", jnp.float32)
  fn = jax.jit(lambda x, k: _select.prune_masks([x], [k])[0])
  for k in range(31):
    np.testing.assert_array_equal(np.asarray(fn(x, k)), reference.keep_mask(np.asarray(x), k))
  assert fn._cache_size() == 1
  for k in (0, 13, 30):
    np.testing.assert_array_equal(np.asarray(fn(x, k)), np.asarray(_select.prune_masks([x], [k])[0]))


def _walk_primitives(jaxpr, out):
  for eqn in jaxpr.eqns:
    out.append(eqn)
    for value in eqn.params.values():
      subs = value if isinstance(value, (tuple, list)) else (value,)
      for sub in subs:
        inner = getattr(sub, "jaxpr", None)
        if inner is not None and hasattr(inner, "eqns"):
          _walk_primitives(inner, out)
        elif hasattr(sub, "eqns"):
          _walk_primitives(sub, out)
  return out


def test_kernel_has_no_sort_top_k_or_flattening_reshape():
  shapes = [(6, 7), (2, 3, 4)]
  closed = jax.make_jaxpr(lambda xs, ks: _select.prune_masks(xs, ks))(
    [jnp.ones(s, jnp.float32) for s in shapes], [jnp.int32(3)] * len(shapes)
  )
  eqns = _walk_primitives(closed.jaxpr, [])
  names = {e.primitive.name for e in eqns}
  assert not {"sort", "top_k", "argsort", "gather"} & names, names
  for e in eqns:
    if e.primitive.name == "reshape":
      for v in e.outvars:
        assert v.aval.ndim != 1 or v.aval.size < 6 * 7, f"a leaf is flattened: {e}"


# Property test over shapes, dtypes, tie patterns and k.


@st.composite
def _cases(draw):
  shape = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=3)))
  dtype = draw(st.sampled_from(DTYPES))
  kind = draw(st.sampled_from(["ties", "special", "normal"]))
  seed = draw(st.integers(0, 2**32 - 1))
  n = int(np.prod(shape, dtype=np.int64))
  k = draw(st.integers(0, n))
  return shape, dtype, kind, seed, k


_jit_masks = jax.jit(lambda x, k: _select.prune_masks([x], [k])[0])


@settings(max_examples=15, deadline=None)
@given(_cases())
def test_property_masks_equal_reference(case):
  shape, dtype, kind, seed, k = case
  x = _values(np.random.default_rng(seed), shape, kind, dtype)
  mask = np.asarray(_jit_masks(x, jnp.int32(k)))
  np.testing.assert_array_equal(mask, reference.keep_mask(np.asarray(x), k))


def test_float64_masks_equal_reference_under_x64():
  script = textwrap.dedent(
    """
    import numpy as np, jax, jax.numpy as jnp
    import reference
    from cyclax import _select
    rng = np.random.default_rng(4)
    fn = jax.jit(lambda x, k: _select.prune_masks([x], [k])[0])
    for shape in [(), (5,), (3, 4), (2, 3, 3)]:
      for kind in range(3):
        x = rng.standard_normal(shape)
        if kind == 1:
          x = rng.integers(-2, 3, size=shape).astype(np.float64)
        if kind == 2 and x.size > 2:
          x.flat[:3] = [np.nan, np.inf, 1e-300]
        x = jnp.asarray(x, jnp.float64)
        assert x.dtype == jnp.float64
        for k in sorted({0, x.size // 2, x.size}):
          got = np.asarray(fn(x, k))
          np.testing.assert_array_equal(got, reference.keep_mask(np.asarray(x), k))
    print("float64 ok")
    """
  )
  env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), env.get("PYTHONPATH", "")])
  result = subprocess.run(
    [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "float64 ok" in result.stdout
