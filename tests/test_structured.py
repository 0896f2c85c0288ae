"""Structured sparsity (Block, Channel): unit scores, exact whole-unit selection, sharding, errors."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference

import cyclax
from cyclax import _masks, _structured

Block, Channel = cyclax.Block, cyclax.Channel

# (leaf shapes, pattern): odd shapes, conv-like 4-D kernels, whole-leaf blocks, 1x1 blocks.
CASES = [
  ([(5, 7), (3, 3, 4, 8)], Channel(-1)),
  ([(6, 8), (3, 3, 4, 8)], Block((2, 4))),
  ([(5, 7)], Block((1,))),
  ([(2, 10, 7)], Block((5, 7))),
]
# Per batch element a level: none, every unit, and levels in between (1/3 and 0.5 land on ties).
LEVELS = np.array([0.0, 1.0, 0.5, 1.0 / 3.0, 0.77], np.float32)


def _structured_masks(candidates, leaf_levels, pattern, *, level=None, **kwargs):
  """The dispatcher's structured path, with per-leaf levels as the structured tests give them."""
  return _masks.select_masks(candidates, level, leaf_levels, pattern=pattern, **kwargs)


def _ref_kwargs(pattern):
  return {"axis": pattern.axis} if isinstance(pattern, Channel) else {"block": pattern.shape}


def _units(shape, pattern):
  return int(np.prod(_structured.unit_grid(pattern, shape)))


def _data(seed, shape, dtype, ties=True):
  rng = np.random.default_rng(seed)
  # Small integers: every pooled score is exact in float32, in any summation order, and many tie.
  x = rng.integers(-2, 3, size=shape).astype(np.float64) if ties else rng.normal(size=shape)
  return np.asarray(jnp.asarray(x, dtype))


def _batched_masks(xs, levels, pattern, **kwargs):
  """Masks of a batch of leaf lists (stacked on axis 0) at a batch of levels, one jitted call per element.

  With a None level, a leaf follows ``level`` (passed as the batch's level).
  """
  own = kwargs.pop("own_levels", True)
  fn = jax.jit(
    lambda leaves, s: _structured_masks(
      leaves, [s if own else None] * len(leaves), pattern, level=None if own else s, **kwargs
    )
  )
  out = [fn([jnp.asarray(x[b]) for x in xs], jnp.float32(s)) for b, s in enumerate(levels)]
  return [np.stack([np.asarray(o[i]) for o in out]) for i in range(len(xs))]


def _check_against_reference(xs, levels, pattern, got):
  for x, m in zip(xs, got):
    for b, s in enumerate(levels):
      want = reference.structured_keep_mask(x[b], float(s), **_ref_kwargs(pattern))
      kept = np.asarray(m[b])
      np.testing.assert_array_equal(kept, want, err_msg=f"{pattern} {x.shape[1:]} s={s}")
      # Whole units only, and exactly num_to_prune(s, units) of them.
      scores = (
        reference.channel_scores(kept, pattern.axis)
        if isinstance(pattern, Channel)
        else reference.block_scores(kept, pattern.shape)
      )
      units = scores.size
      assert units - np.count_nonzero(scores) == reference.num_to_prune(float(s), units)
      assert np.all((scores == 0) | (scores == np.prod(x.shape[1:]) / units))


def test_jit_masks_equal_numpy_reference_for_every_pattern_on_ties():
  """float32, every pattern and shape, levels from 0 to every unit, ties to the lower unit index."""
  for case, (shapes, pattern) in enumerate(CASES):
    xs = [
      np.stack([_data(100 * case + b, shape, np.float32) for b in range(len(LEVELS))]) for shape in shapes
    ]
    _check_against_reference(xs, LEVELS, pattern, _batched_masks(xs, LEVELS, pattern))


@pytest.mark.parametrize(
  "dtype,cases",
  [
    (jnp.bfloat16, [(Channel(0), (5, 7), False)]),
    (jnp.float16, [(Block((2, 4)), (3, 6, 8), True)]),
    ("float64", [(Channel(0), (5, 7), False), (Block((2, 4)), (3, 6, 8), True)]),
  ],
)
def test_masks_equal_numpy_reference_for_every_dtype(dtype, cases):
  """16-bit leaves pool in float32, float64 leaves in float64 (a None level follows `level`)."""
  with jax.enable_x64(dtype == "float64"):
    dt = jnp.float64 if dtype == "float64" else dtype
    for pattern, shape, own in cases:
      xs = [np.stack([_data(b, shape, dt) for b in range(len(LEVELS))])]
      got = _batched_masks(xs, LEVELS, pattern, own_levels=own)
      _check_against_reference(xs, LEVELS, pattern, got)


def test_vmap_equals_the_masks_of_each_element():
  xs = np.stack([_data(40 + b, (6, 8), np.float32) for b in range(len(LEVELS))])
  fn = lambda x, s: _structured_masks([x], [s], Channel(-1))[0]  # noqa: E731
  got = jax.jit(jax.vmap(fn))(jnp.asarray(xs), jnp.asarray(LEVELS))
  _check_against_reference([xs], LEVELS, Channel(-1), [got])


def test_eager_masks_equal_numpy_reference():
  x = _data(3, (5, 7), np.float32)
  for s in (0.0, 0.5, 1.0):
    [m] = _structured_masks([jnp.asarray(x)], [s], Channel(-1))
    np.testing.assert_array_equal(np.asarray(m), reference.structured_keep_mask(x, s, axis=-1))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16, "float64"])
def test_unit_scores_match_numpy_sums(dtype):
  """Block: sum of |x| per block; Channel: sum of squares per channel; float32 (float64 for float64)."""
  with jax.enable_x64(dtype == "float64"):
    dt = jnp.float64 if dtype == "float64" else dtype
    want_dtype = jnp.float64 if dtype == "float64" else jnp.float32
    rtol = 1e-12 if dtype == "float64" else 1e-5
    x = _data(11, (3, 3, 4, 8), dt, ties=False)
    for pattern in (Block((2, 4)), Block((3, 1, 8)), Channel(-1), Channel(1)):
      got = _structured.unit_scores(jnp.asarray(x), pattern)
      assert got.dtype == want_dtype
      want = (
        reference.channel_scores(x, pattern.axis)
        if isinstance(pattern, Channel)
        else reference.block_scores(x, pattern.shape)
      )
      np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol)


def test_random_data_prunes_the_lowest_scoring_units_and_keeps_nan_units_last():
  """On random data the selection is a stable argsort of the kernel's pooled scores; NaN > +inf > numbers."""
  for pattern, shape, nan_at, inf_at in (
    (Channel(-1), (3, 3, 8, 16), (0, 1, 2, 5), (2, 2, 7, 9)),  # channels 5 and 9
    (Block((4, 4)), (16, 24), (5, 9), (12, 1)),  # blocks (1, 2) and (3, 0)
  ):
    units = _units(shape, pattern)
    levels = np.array([0.3, 0.77, (units - 2) / units, (units - 1) / units, 1.0], np.float32)
    xs = np.stack([_data(20 + b, shape, np.float32, ties=False) for b in range(len(levels))])
    xs[(slice(None),) + nan_at] = np.nan
    xs[(slice(None),) + inf_at] = np.inf
    [got] = _batched_masks([xs], levels, pattern)
    for x, s, m in zip(xs, levels, got):
      scores = np.asarray(_structured.unit_scores(jnp.asarray(x), pattern))
      keep = reference.keep_mask(scores, reference.num_to_prune(float(s), scores.size))
      np.testing.assert_array_equal(m, reference.expand_units(keep, x.shape, **_ref_kwargs(pattern)))
      assert m[nan_at] == (s < 1.0)  # the NaN unit goes last
      assert m[inf_at] == (s <= (units - 2) / units)  # the inf unit just before it


def test_global_block_distribution_with_an_override_leaf():
  """'global': one ranking of every block of the pooled leaves; an override leaf is pruned on its own."""
  shapes = [(4, 8), (3, 3, 4, 4), (8, 12)]
  pattern = Block((2, 4))
  levels = np.array([0.0, 0.45, 0.8, 1.0], np.float32)
  xs = [np.stack([_data(30 + b, shape, np.float32) for b in range(len(levels))]) for shape in shapes]
  fn = lambda leaves, s: _structured_masks(  # noqa: E731
    leaves, [None, None, 0.25], pattern, level=s, distribution="global"
  )
  fn = jax.jit(fn)
  got = [fn([jnp.asarray(x[b]) for x in xs], jnp.float32(s)) for b, s in enumerate(levels)]
  for b, s in enumerate(levels):
    want = reference.global_block_keep_masks([xs[0][b], xs[1][b]], float(s), pattern.shape)
    want.append(reference.structured_keep_mask(xs[2][b], 0.25, block=pattern.shape))
    for g, w in zip(got[b], want):
      np.testing.assert_array_equal(np.asarray(g), w)


def test_pattern_and_leaf_errors_name_the_argument_and_the_leaf():
  with pytest.raises(TypeError, match="`pattern` Channel"):
    _structured.check_pattern(Channel(1.0))
  with pytest.raises(TypeError, match="`pattern` Channel"):
    _structured.check_pattern(Channel(True))
  with pytest.raises(ValueError, match="positive ints"):
    _structured.check_pattern(Block((2, 0)))
  with pytest.raises(ValueError, match="positive ints"):
    _structured.check_pattern(Block(()))
  with pytest.raises(TypeError, match="tuple of Python ints"):
    _structured.check_pattern(Block((2.0, 2)))
  assert _structured.check_pattern(Block(4)) == Block((4,))
  with pytest.raises(ValueError, match="leaf 'dense/kernel'.*multiple|divide.*leaf 'dense/kernel'"):
    _structured.check_structure(Block((4, 4)), (8, 6), "leaf 'dense/kernel'")
  with pytest.raises(ValueError, match="more dimensions than leaf 'b'"):
    _structured.check_structure(Block((2, 2)), (8,), "leaf 'b'")
  with pytest.raises(ValueError, match=r"out of range for leaf 'w'.*\[-2, 2\)"):
    _structured.check_structure(Channel(2), (3, 4), "leaf 'w'")
  with pytest.raises(ValueError, match="'global' does not work with Channel"):
    _structured.check_options(Channel(-1), distribution="global")
  with pytest.raises(ValueError, match="'erk' does not work"):
    _structured.check_options(Block((2, 2)), distribution="erk")
  _structured.check_options(Block((2, 2)), distribution="global")


_SHARDED_SCRIPT = textwrap.dedent(
  """
  import sys
  import jax, jax.numpy as jnp, numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  from cyclax import _masks
  from cyclax import Block, Channel
  import reference

  def _structured_masks(candidates, leaf_levels, pattern, **kwargs):
    return _masks.select_masks(candidates, None, leaf_levels, pattern=pattern, **kwargs)

  mesh = Mesh(np.array(jax.devices()), ("d",))
  rng = np.random.default_rng(0)
  w = rng.integers(-2, 3, size=(16, 32)).astype(np.float32)
  conv = rng.integers(-2, 3, size=(3, 3, 16, 32)).astype(np.float32)
  levels = [0.4, 0.7]

  def want(p):
    kw = {"axis": p.axis} if isinstance(p, Channel) else {"block": p.shape}
    return [reference.structured_keep_mask(x, s, **kw) for x, s in zip((w, conv), levels)]

  def spec(x, d):
    return P(*[("d" if i == d else None) for i in range(x.ndim)])

  # (pattern, split dims of w and conv, also under sharded jit): the channel axis, another axis
  # (partial sums added over the shards), a replicated leaf, block dimensions holding whole blocks.
  cases = [
    (Channel(-1), [1, 2], True), (Channel(-1), [0, None], False),
    (Block((2, 4)), [0, 3], True),
  ]
  for pattern, dims, jit_too in cases:
    specs = tuple(spec(x, d) for x, d in zip((w, conv), dims))
    if jit_too:
      placed = [jax.device_put(x, NamedSharding(mesh, s)) for x, s in zip((w, conv), specs)]
      got = jax.jit(lambda a, b: _structured_masks([a, b], levels, pattern))(*placed)
      assert all(np.array_equal(np.asarray(g), v) for g, v in zip(got, want(pattern))), ("jit", pattern)
    fn = lambda a, b: tuple(_structured_masks([a, b], levels, pattern, axis_name="d", sharded_dims=dims))
    got = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=specs))(w, conv)
    assert all(np.array_equal(np.asarray(g), v) for g, v in zip(got, want(pattern))), (pattern, dims)
  # pmap over a replicated leaf
  got = jax.pmap(lambda a: _structured_masks([a], [0.4], Channel(-1))[0])(jnp.broadcast_to(w, (8, 16, 32)))
  assert all(np.array_equal(np.asarray(g), want(Channel(-1))[0]) for g in got)
  # a block cut across shards is refused, naming the leaf
  fn = lambda a: _structured_masks([a], [0.5], Block((8, 8)), axis_name="d", sharded_dims=[1], names=["w"])
  try:
    jax.shard_map(fn, mesh=mesh, in_specs=P(None, "d"), out_specs=[P(None, "d")])(w)
  except ValueError as e:
    assert "w: its shard along dimension 1 has length 4" in str(e), e
  else:
    raise AssertionError("no error")
  print("ok")
  """
)


def test_sharded_jit_shard_map_and_pmap_equal_the_unsharded_masks():
  env = reference.subprocess_env(8)
  env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.abspath(__file__)), env.get("PYTHONPATH", "")])
  result = subprocess.run(
    [sys.executable, "-c", _SHARDED_SCRIPT], env=env, capture_output=True, text=True, timeout=600
  )
  assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-4000:]


def _int_params(seed):
  rng = np.random.default_rng(seed)
  return {
    "b": jnp.asarray(rng.integers(-3, 4, size=(12,)), jnp.float32),
    "conv": jnp.asarray(rng.integers(-3, 4, size=(3, 3, 4, 8)), jnp.float32),
    "w": jnp.asarray(rng.integers(-3, 4, size=(6, 12)), jnp.float32),
  }


def test_cyclical_channel_pruning_prunes_exact_whole_channels_every_step_and_regrows_at_a_cycle_start():
  """Through the public API: every step equals the NumPy projection of p + u; channels regrow at step 8."""
  cycle_steps, target = 8, 0.75
  prune = cyclax.cyclical_prune(
    target, num_cycles=2, cycle_steps=cycle_steps, update_every=1, pattern=cyclax.Channel(-1)
  )
  schedule = cyclax.cyclical_sparsity_schedule(target, num_cycles=2, cycle_steps=cycle_steps)
  tx = optax.chain(optax.sgd(1.0), prune)
  params = _int_params(0)
  state = tx.init(params)
  step = jax.jit(lambda g, st, p: tx.update(g, st, p))
  want = {k: np.asarray(v) for k, v in params.items()}
  rng = np.random.default_rng(1)
  pruned_channels = []  # per step, per kernel: which channels the mask prunes
  for t in range(2 * cycle_steps + 2):
    grads = {k: rng.integers(-2, 3, size=v.shape).astype(np.float32) for k, v in want.items()}
    updates, state = step({k: jnp.asarray(g) for k, g in grads.items()}, state, params)
    params = optax.apply_updates(params, updates)
    s = float(schedule(t))
    for k in want:  # sgd(1.0) on small integers: p - g is exact
      c = want[k] - grads[k]
      want[k] = c if k == "b" else np.where(reference.structured_keep_mask(c, s, axis=-1), c, 0.0)
      np.testing.assert_array_equal(np.asarray(params[k]), want[k], err_msg=f"step {t}, {k}")
    masks = cyclax.get_masks(state)
    pruned_channels.append(
      {k: ~np.asarray(masks[k]).any(axis=tuple(range(masks[k].ndim - 1))) for k in ("w", "conv")}
    )
    for k, units in (("w", 12), ("conv", 8)):
      assert pruned_channels[-1][k].sum() == reference.num_to_prune(s, units)
      if t == cycle_steps:  # the cycle start lowers the sparsity: pruned channels come back
        before, after = pruned_channels[-2][k], pruned_channels[-1][k]
        regrown = before & ~after
        assert after.sum() < before.sum() and regrown.any()
        assert np.any(np.asarray(params[k])[..., regrown] != 0)  # from zero, plus their update


def test_block_pattern_through_magnitude_prune_and_init_errors_name_the_leaf():
  params = _int_params(2)
  tx = cyclax.magnitude_prune(0.5, update_every=1, pattern=cyclax.Block((2, 4)))
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  for k in ("w", "conv"):
    keep = reference.structured_keep_mask(np.asarray(params[k]), 0.5, block=(2, 4))
    np.testing.assert_array_equal(np.asarray(new[k]), np.where(keep, np.asarray(params[k]), 0.0))
  np.testing.assert_array_equal(np.asarray(new["b"]), np.asarray(params["b"]))
  with pytest.raises(ValueError, match="leaf 'w'"):
    cyclax.magnitude_prune(0.5, pattern=cyclax.Block((4, 4))).init(params)
  with pytest.raises(ValueError, match="'global' does not work with Channel"):
    cyclax.magnitude_prune(0.5, pattern=cyclax.Channel(-1), distribution="global")
