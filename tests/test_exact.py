"""Exact integers (`cyclax._exact`): the rounding rule and wide counts against Python ints."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from hypothesis import given, settings
from hypothesis import strategies as st

import cyclax
from cyclax import _exact

# ---------------------------------------------------------------------------
# num_to_prune: the rounding rule, exact against Python integers
# ---------------------------------------------------------------------------

EDGE_SPARSITIES = [0.0, 1.0, 0.5, 0.25, 1 / 3, 0.9, 0.99, 1 - 2**-24, 2**-24, 2**-25, 3 * 2**-25, -0.5, 1.5]
EDGE_SIZES = [0, 1, 2, 3, 7, 1000, 2**12 - 1, 2**12, 2**24 - 1, 2**24, 2**24 + 1, 2**30 + 12345, 2**31 - 1]


@pytest.mark.parametrize("jit", [True, False])
def test_num_to_prune_equals_python_integer_rule(jit):
  rng = np.random.default_rng(2)
  sizes = (
    EDGE_SIZES + [int(n) for n in rng.integers(0, 2**31, size=6)] + [int(n) for n in rng.integers(0, 5000, 4)]
  )
  sparsities = np.concatenate([np.array(EDGE_SPARSITIES), rng.random(60)]).astype(np.float32)
  for n in sizes:
    fn = (
      (lambda s, n=n: cyclax.num_to_prune(s, n))
      if not jit
      else jax.jit(lambda s, n=n: cyclax.num_to_prune(s, n))
    )
    got = np.asarray(fn(jnp.asarray(sparsities)))
    expected = np.array([reference.num_to_prune(float(s), n) for s in sparsities])
    np.testing.assert_array_equal(got, expected, err_msg=f"size {n}")
    assert got.dtype == np.int32
    assert np.all((0 <= got) & (got <= n))


def test_num_to_prune_rounds_half_up_at_exact_halves():
  # s * n = m + 1/2 exactly (s a multiple of 2**-24): the rule gives floor(s * n + 1/2) = m + 1.
  for s, n in [(0.5, 3), (0.5, 1), (0.25, 6), (0.125, 4), (0.375, 4), (2**-24, 2**23)]:
    exact = Fraction(s) * n
    assert exact.denominator == 2
    assert int(cyclax.num_to_prune(s, n)) == int(exact + Fraction(1, 2)) == reference.num_to_prune(s, n)


@pytest.mark.parametrize("size", [-1, 2**31])
def test_num_to_prune_rejects_sizes_outside_int32(size):
  with pytest.raises(ValueError, match="size"):
    cyclax.num_to_prune(0.5, size)


def test_num_to_prune_matches_float64_product_for_small_sizes():
  # For sizes below 2**24 the rule is round-half-up of s_q * n with s_q the quantised sparsity.
  rng = np.random.default_rng(9)
  s = rng.random(200).astype(np.float32)
  for n in [5, 97, 1 << 20]:
    s_q = np.round(s.astype(np.float64) * 2**24) / 2**24
    expected = np.floor(s_q * n + 0.5).astype(np.int64)
    np.testing.assert_array_equal(np.asarray(cyclax.num_to_prune(jnp.asarray(s), n)), expected)


def test_num_to_prune_each_equals_the_rule_per_leaf():
  rng = np.random.default_rng(12)
  sizes = [0, 1, 7, 2**24 + 1, 2**31 - 1] + [int(n) for n in rng.integers(0, 2**31, size=5)]
  one = float(rng.random())
  per_leaf = rng.random(len(sizes)).astype(np.float32)
  fn = jax.jit(_exact.num_to_prune_each, static_argnums=1)
  got_one = np.asarray(fn(jnp.float32(one), tuple(sizes)))
  got_each = np.asarray(fn(jnp.asarray(per_leaf), tuple(sizes)))
  assert got_one.tolist() == [reference.num_to_prune(one, n) for n in sizes]
  assert got_each.tolist() == [reference.num_to_prune(float(s), n) for s, n in zip(per_leaf, sizes)]


def test_num_to_prune_total_equals_python_int_rounding_past_int32():
  rng = np.random.default_rng(5)
  fn = jax.jit(lambda s, sizes: _exact.num_to_prune_total(s, sizes), static_argnums=1)
  draws = [tuple(int(n) for n in rng.integers(0, 2**34, size=rng.integers(1, 6))) for _ in range(8)]
  for sizes in [(2**31, 2**31 + 7, 3), (2**47 - 1,)] + draws:
    s = float(rng.choice([0.0, 1.0, 0.5, 0.9, rng.random()]))
    assert _exact.to_int(fn(jnp.float32(s), sizes)) == reference.num_to_prune(s, sum(sizes))


def test_num_to_prune_total_agrees_with_per_leaf_rule_below_int32():
  rng = np.random.default_rng(6)
  for _ in range(20):
    n = int(rng.integers(0, 2**31))
    s = float(rng.random())
    assert _exact.to_int(_exact.num_to_prune_total(s, [n])) == int(cyclax.num_to_prune(s, n))


def test_num_to_prune_total_rejects_totals_from_2_to_the_48():
  with pytest.raises(ValueError, match="2\\*\\*48"):
    _exact.num_to_prune_total(0.5, [2**47, 2**47])
  with pytest.raises(ValueError, match="size"):
    _exact.num_to_prune_total(0.5, [5, -1])


# ---------------------------------------------------------------------------
# Wide integers against Python ints
# ---------------------------------------------------------------------------

WIDE_MAX = 2 ** (_exact.LIMB_BITS * _exact.NUM_LIMBS)
INT32_MAX = 2**31 - 1

_arith = jax.jit(
  lambda a, b: (
    _exact.add(a, b),
    _exact.sub(_exact.add(a, b), b),
    _exact.less(a, b),
    _exact.minimum(a, b),
    _exact.to_int32(a),
  )
)
_mul = jax.jit(_exact.mul)
_sums = jax.jit(lambda v: (_exact.sum_int32(v), _exact.prefix_sums_int32(v)))
_divmod = jax.jit(_exact.divmod_int32)
_fill = jax.jit(_exact.fill_in_order)


def _wide_ints(value: _exact.Wide, carried: bool = True) -> list[int]:
  """Every integer of a batch of wide integers, from its limbs (checked to be carried if ``carried``)."""
  limbs = np.asarray(value.limbs).reshape(_exact.NUM_LIMBS, -1)
  if carried:
    assert np.all((limbs >= 0) & (limbs < 2**_exact.LIMB_BITS)), "limbs are not carried"
  return [
    sum(int(limbs[d, j]) << (_exact.LIMB_BITS * d) for d in range(_exact.NUM_LIMBS))
    for j in range(limbs.shape[1])
  ]


def _wrap_int32(v: int) -> int:
  return (v + 2**31) % 2**32 - 2**31


# Edge values of every limb boundary, and the whole range.
_wide_values = st.one_of(
  st.integers(0, WIDE_MAX // 2 - 1),
  st.integers(0, 2**40),
  st.sampled_from([0, 1, 2**12 - 1, 2**12, 2**24, 2**31 - 1, 2**31, 2**48 - 1, WIDE_MAX // 2 - 1]),
)


@settings(max_examples=40, deadline=None)
@given(a=_wide_values, b=_wide_values)
def test_property_wide_add_sub_compare_equal_python_ints(a, b):
  total, back, a_less, smaller, low = _arith(_exact.as_wide(a), _exact.as_wide(b))
  assert _wide_ints(total) == [a + b]
  assert _wide_ints(back) == [a]
  assert bool(a_less) == (a < b)
  assert _wide_ints(smaller) == [min(a, b)]
  assert int(low) == _wrap_int32(a)


@settings(max_examples=40, deadline=None)
@given(a=st.integers(0, 2**48 - 1), b=st.integers(0, 2**35))
def test_property_wide_product_and_division_equal_python_ints(a, b):
  product = a * b
  assert _wide_ints(_mul(_exact.as_wide(a), _exact.as_wide(b))) == [product]
  divisor = b % (2**30 - 1) + 1
  quotient, remainder = _divmod(_exact.as_wide(product), jnp.int32(divisor))
  assert int(quotient) == _wrap_int32(product // divisor)
  assert int(remainder) == product % divisor


@settings(max_examples=25, deadline=None)
@given(values=st.lists(st.integers(0, INT32_MAX), min_size=1, max_size=40), other=_wide_values)
def test_property_wide_sums_and_their_comparisons_equal_python_ints(values, other):
  # Pad to a fixed length (zeros do not change the sums) so that one compiled function serves.
  padded = jnp.asarray(values + [0] * (40 - len(values)), jnp.int32)
  total, prefixes = _sums(padded)
  assert _wide_ints(total, carried=False) == [sum(values)]
  assert _wide_ints(prefixes, carried=False)[: len(values)] == [sum(values[:i]) for i in range(len(values))]
  # Uncarried sums compare, take minima and wrap to int32 like the numbers they hold.
  other = _exact.as_wide(other)
  assert bool(_exact.less(total, other)) == (sum(values) < _exact.to_int(other))
  assert bool(_exact.less(other, total)) == (_exact.to_int(other) < sum(values))
  assert _exact.to_int(_exact.minimum(total, other)) == min(sum(values), _exact.to_int(other))
  assert int(_exact.to_int32(total)) == _wrap_int32(sum(values))


@settings(max_examples=25, deadline=None)
@given(
  capacities=st.lists(st.integers(0, INT32_MAX), min_size=5, max_size=5),
  used=st.lists(st.integers(0, INT32_MAX), min_size=3, max_size=3),
  fraction=st.fractions(0, 1),
  extra=st.sampled_from([0, 1, 2**40]),
)
def test_property_fill_in_order_equals_sequential_python_ints(capacities, used, fraction, extra):
  # What ``used`` leaves of the amount, from nothing to past the capacities (the global
  # kernel's ties split over leaves, totals past int32).
  amount = sum(used) + int(fraction * sum(capacities)) + extra
  got = _fill(_exact.as_wide(amount), [jnp.int32(c) for c in capacities], [jnp.int32(u) for u in used])
  remaining, expected = amount - sum(used), []
  for c in capacities:
    expected.append(min(remaining, c))
    remaining -= expected[-1]
  assert [int(n) for n in got] == expected


def test_wide_batches_broadcast_like_numpy():
  a = [[3, 2**40], [2**31, 0]]
  b = [5, 2**35 + 1]
  got = _exact.mul(_exact.constant(a), _exact.Wide(jnp.asarray(_exact.constant(b).limbs)))
  assert _wide_ints(got) == [x * y for row in a for x, y in zip(row, b)]
  assert np.asarray(_exact.less(_exact.constant(a), _exact.constant(b))).tolist() == [
    [x < y for x, y in zip(row, b)] for row in a
  ]


def test_as_wide_accepts_int32_arrays_and_rejects_out_of_range_ints():
  assert _wide_ints(_exact.as_wide(jnp.asarray([7, -3, INT32_MAX], jnp.int32))) == [7, 0, INT32_MAX]
  assert _exact.to_int(_exact.as_wide(2**70 + 5)) == 2**70 + 5
  for bad in (-1, WIDE_MAX):
    with pytest.raises(ValueError, match="count"):
      _exact.as_wide(bad)
