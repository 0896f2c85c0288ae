"""A catalogue of bad and edge-case inputs: each gets a clear error naming what the user wrote,
or the documented behaviour, with no state or parameter silently corrupted."""

import functools
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference

import cyclax

LR = 0.25


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {
    "dense": {"kernel": jnp.asarray(rng.standard_normal((8, 6)), jnp.float32)},
    "out": {"kernel": jnp.asarray(rng.standard_normal((6, 4)), jnp.float32)},
    "bias": jnp.asarray(rng.standard_normal(6), jnp.float32),
  }


def _grads(params, t=0):
  return reference.random_like(params, 100 + t)


def _apply(tx, params, state, grads):
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state


def _step(tx, params, state, t=0):
  return _apply(tx, params, state, _grads(params, t))


# ---------------------------------------------------------------------------
# Construction: every argument is checked when the transformation is built.
# ---------------------------------------------------------------------------

CONSTRUCTION = [
  ("sparsity above 1", lambda: cyclax.magnitude_prune(1.5), ValueError, r"`sparsity`.*\[0, 1\)"),
  ("negative sparsity", lambda: cyclax.magnitude_prune(-0.1), ValueError, r"`sparsity`"),
  ("NaN sparsity", lambda: cyclax.magnitude_prune(float("nan")), ValueError, r"`sparsity`"),
  ("full sparsity not allowed", lambda: cyclax.magnitude_prune(1.0), ValueError, r"allow_full_sparsity"),
  ("string sparsity", lambda: cyclax.magnitude_prune("0.5"), TypeError, r"`sparsity`"),
  ("None sparsity", lambda: cyclax.magnitude_prune(None), TypeError, r"`sparsity`"),
  (
    "vector sparsity",
    lambda: cyclax.magnitude_prune(np.array([0.5, 0.6])),
    ValueError,
    r"`sparsity`.*scalar",
  ),
  ("update_every 0", lambda: cyclax.magnitude_prune(0.5, update_every=0), ValueError, r"`update_every`"),
  (
    "update_every negative",
    lambda: cyclax.magnitude_prune(0.5, update_every=-3),
    ValueError,
    r"`update_every`",
  ),
  (
    "update_every fractional",
    lambda: cyclax.magnitude_prune(0.5, update_every=2.5),
    TypeError,
    r"`update_every`",
  ),
  ("update_every bool", lambda: cyclax.magnitude_prune(0.5, update_every=True), TypeError, r"`update_every`"),
  (
    "zero cycles",
    lambda: cyclax.cyclical_prune(0.9, num_cycles=0, cycle_steps=10),
    ValueError,
    r"`num_cycles`",
  ),
  (
    "zero cycle steps",
    lambda: cyclax.cyclical_prune(0.9, num_cycles=2, cycle_steps=0),
    ValueError,
    r"`cycle_steps`",
  ),
  (
    "cycles past int32",
    lambda: cyclax.cyclical_prune(0.9, num_cycles=2**40, cycle_steps=10),
    ValueError,
    r"num_cycles \* cycle_steps",
  ),
  (
    "cycle steps past int32",
    lambda: cyclax.cyclical_prune(0.9, num_cycles=1, cycle_steps=2**31),
    ValueError,
    r"`cycle_steps`",
  ),
  (
    "schedule past int32",
    lambda: cyclax.cyclical_prune(0.9, num_cycles=8, cycle_steps=2**30),
    ValueError,
    r"num_cycles \* cycle_steps",
  ),
  (
    "ramp_fraction 0",
    lambda: cyclax.cyclical_prune(0.9, num_cycles=2, cycle_steps=10, ramp_fraction=0.0),
    ValueError,
    r"`ramp_fraction`",
  ),
  (
    "ramp_fraction above 1",
    lambda: cyclax.cyclical_prune(0.9, num_cycles=2, cycle_steps=10, ramp_fraction=1.5),
    ValueError,
    r"`ramp_fraction`",
  ),
  (
    "initial above target",
    lambda: cyclax.cyclical_prune(0.5, num_cycles=2, cycle_steps=10, initial_sparsity=0.7),
    ValueError,
    r"`initial_sparsity`",
  ),
  (
    "unknown ramp",
    lambda: cyclax.cyclical_prune(0.5, num_cycles=2, cycle_steps=10, ramp="quadratic"),
    ValueError,
    r"`ramp`.*cubic",
  ),
  (
    "unknown distribution",
    lambda: cyclax.magnitude_prune(0.5, distribution="topk"),
    ValueError,
    r"`distribution`",
  ),
  ("pattern n > m", lambda: cyclax.magnitude_prune(0.5, pattern=(4, 2)), ValueError, r"`pattern`"),
  ("pattern of floats", lambda: cyclax.magnitude_prune(0.5, pattern=(2.0, 4)), TypeError, r"`pattern`"),
  (
    "pattern with global",
    lambda: cyclax.magnitude_prune(0.5, pattern=(2, 4), distribution="global"),
    ValueError,
    r"`pattern`",
  ),
  (
    "sparsity above N:M",
    lambda: cyclax.magnitude_prune(0.75, pattern=(2, 4)),
    ValueError,
    r"`sparsity`.*2:4",
  ),
  (
    "pattern_axis string",
    lambda: cyclax.magnitude_prune(0.5, pattern=(2, 4), pattern_axis="x"),
    TypeError,
    r"`pattern_axis`",
  ),
  (
    "packed_masks string",
    lambda: cyclax.magnitude_prune(0.5, packed_masks="yes"),
    TypeError,
    r"`packed_masks`",
  ),
  (
    "track_regrowth int",
    lambda: cyclax.magnitude_prune(0.5, track_regrowth=1),
    TypeError,
    r"`track_regrowth`",
  ),
  ("axis_name int", lambda: cyclax.magnitude_prune(0.5, axis_name=3), TypeError, r"`axis_name`"),
  (
    "axis_name with pattern",
    lambda: cyclax.magnitude_prune(0.5, pattern=(2, 4), axis_name="x"),
    ValueError,
    r"`axis_name`",
  ),
  ("overrides string", lambda: cyclax.magnitude_prune(0.5, overrides="w"), TypeError, r"`overrides`"),
  (
    "override above 1",
    lambda: cyclax.magnitude_prune(0.5, overrides={"w": 1.5}),
    ValueError,
    r"overrides\['w'\]",
  ),
  (
    "override key not a path",
    lambda: cyclax.magnitude_prune(0.5, overrides={1: 0.5}),
    TypeError,
    r"`overrides` keys",
  ),
  (
    "moment reset arguments swapped",
    lambda: cyclax.reset_regrown_moments(cyclax.magnitude_prune(0.5), optax.adam(1e-3)),
    TypeError,
    r"reset_regrown_moments\(inner, prune\)",
  ),
]


@pytest.mark.parametrize("name, make, error, pattern", CONSTRUCTION, ids=[c[0] for c in CONSTRUCTION])
def test_construction_rejects_bad_arguments_by_name(name, make, error, pattern):
  with pytest.raises(error, match=pattern):
    make()


def test_bfloat16_scalar_sparsity_is_accepted_and_exact():
  params = _params()
  tx = optax.chain(optax.sgd(LR), cyclax.magnitude_prune(jnp.array(0.7, jnp.bfloat16), update_every=1))
  new, _ = _step(tx, params, tx.init(params))
  level = float(jnp.array(0.7, jnp.bfloat16))
  assert int(jnp.sum(new["dense"]["kernel"] == 0)) == reference.num_to_prune(level, 48)


@pytest.mark.parametrize("every", [2**31, 10**10])
def test_huge_update_every_means_one_refresh_at_step_zero(every):
  params = _params()
  prune = cyclax.magnitude_prune(0.5, update_every=every)
  tx = optax.chain(optax.sgd(LR), prune)
  state = tx.init(params)
  params, state = _step(tx, params, state, 0)
  first = cyclax.get_masks(state)
  for t in range(1, 4):
    params, state = _step(tx, params, state, t)
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(cyclax.get_masks(state))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not any(prune.refresh_due(t) for t in range(1, 1000))


# ---------------------------------------------------------------------------
# init: whatever needs the params is checked there, naming the leaf.
# ---------------------------------------------------------------------------


def test_override_key_that_names_no_leaf_lists_the_pruned_leaves():
  tx = cyclax.magnitude_prune(0.5, overrides={"dense/kernal": 0.3})
  with pytest.raises(ValueError, match=r"'dense/kernal' names no leaf.*dense/kernel"):
    tx.init(_params())


def test_filter_selecting_an_integer_leaf_names_it():
  params = {**_params(), "steps": jnp.zeros((2, 2), jnp.int32)}
  with pytest.raises(TypeError, match=r"'steps'"):
    cyclax.magnitude_prune(0.5, filter=lambda path, leaf: True).init(params)


def test_filter_tree_that_does_not_match_the_params_says_so():
  with pytest.raises(ValueError, match=r"`filter`"):
    cyclax.magnitude_prune(0.5, filter={"dense": True}).init(_params())


def test_filter_returning_a_non_bool_names_the_leaf():
  with pytest.raises(ValueError, match=r"`filter`.*'bias'"):
    cyclax.magnitude_prune(0.5, filter=lambda path, leaf: "yes").init(_params())


def test_one_argument_filter_is_the_optax_masked_form():
  params = _params()
  mask_fn = lambda p: jax.tree.map(lambda x: x.shape == (8, 6), p)
  state = cyclax.magnitude_prune(0.5, filter=mask_fn).init(params)
  masks = state.masks
  assert masks["dense"]["kernel"] is not None and masks["out"]["kernel"] is None and masks["bias"] is None


def test_filter_with_a_signature_that_fits_neither_form_shows_both():
  with pytest.raises(TypeError, match=r"\(path, leaf\) -> bool"):
    cyclax.magnitude_prune(0.5, filter=lambda a, b, c: True).init(_params())


def test_nm_leaf_whose_axis_is_not_a_multiple_names_the_leaf():
  params = {"w": jnp.ones((6, 8)), "u": jnp.ones((8, 8))}
  with pytest.raises(ValueError, match=r"leaf 'w'.*multiple of 4"):
    cyclax.magnitude_prune(0.5, pattern=(2, 4)).init(params)


def test_leaf_with_two_to_the_31_entries_is_rejected_at_init_by_name():
  params = {"embed": jax.ShapeDtypeStruct((2**16, 2**15), jnp.bfloat16), "w": jnp.ones((4, 4))}
  with pytest.raises(ValueError, match=r"leaf 'embed'.*2\*\*31"):
    jax.eval_shape(cyclax.magnitude_prune(0.5).init, params)


def test_sharded_dims_out_of_range_names_the_leaf():
  tx = cyclax.magnitude_prune(
    0.5, axis_name="x", sharded_dims={"dense": {"kernel": 2}, "out": 0, "bias": None}
  )
  with pytest.raises(ValueError, match=r"'dense/kernel'"):
    tx.init(_params())


# ---------------------------------------------------------------------------
# update: inputs and states that do not fit, named.
# ---------------------------------------------------------------------------


def test_update_without_params_asks_for_them():
  tx = cyclax.magnitude_prune(0.5)
  params = _params()
  with pytest.raises(ValueError, match=r"params"):
    tx.update(_grads(params), tx.init(params), None)


def test_updates_of_a_resized_model_name_the_leaf_and_both_shapes():
  params = _params()
  tx = cyclax.magnitude_prune(0.5)
  state = tx.init(params)
  grads = _grads(params)
  grads["dense"]["kernel"] = jnp.ones((8, 7))
  with pytest.raises(ValueError, match=r"'dense/kernel'.*\(8, 6\).*\(8, 7\)"):
    tx.update(grads, state, params)


def test_state_of_a_resized_model_names_the_leaf_and_both_shapes():
  small = _params()
  big = {**small, "dense": {"kernel": jnp.ones((8, 10))}}
  tx = cyclax.magnitude_prune(0.5)
  with pytest.raises(ValueError, match=r"'dense/kernel'.*\(8, 6\).*\(8, 10\)"):
    tx.update(_grads(small), tx.init(big), small)


def test_none_update_for_a_pruned_leaf_names_it():
  params = _params()
  tx = cyclax.magnitude_prune(0.5)
  grads = _grads(params)
  grads["out"]["kernel"] = None
  with pytest.raises(ValueError, match=r"None for the pruned leaf 'out/kernel'"):
    tx.update(grads, tx.init(params), params)


def test_updates_with_another_structure_say_so():
  params = _params()
  tx = cyclax.magnitude_prune(0.5)
  with pytest.raises(ValueError, match=r"`updates` must have the params' tree structure"):
    tx.update({"dense": _grads(params)["dense"]}, tx.init(params), params)


@pytest.mark.parametrize("setting", ["packed_masks", "track_regrowth"])
@pytest.mark.parametrize("state_value", [True, False])
def test_state_with_the_other_mask_setting_says_which_setting(setting, state_value):
  params = _params()
  state = cyclax.magnitude_prune(0.5, **{setting: state_value}).init(params)
  tx = cyclax.magnitude_prune(0.5, **{setting: not state_value})
  with pytest.raises(ValueError, match=rf"{setting}={state_value}.*{setting}={not state_value}"):
    tx.update(_grads(params), state, params)


def test_state_made_with_another_filter_says_so_instead_of_pruning_biases():
  params = _params()
  state = cyclax.magnitude_prune(0.5, filter=lambda path, leaf: True).init(params)
  with pytest.raises(ValueError, match=r"another `filter`"):
    cyclax.magnitude_prune(0.5).update(_grads(params), state, params)
  state = cyclax.magnitude_prune(0.5).init(params)
  with pytest.raises(ValueError, match=r"another `filter`.*'bias'"):
    cyclax.magnitude_prune(0.5, filter=lambda path, leaf: True).update(_grads(params), state, params)


@pytest.mark.parametrize(
  "schedule, shown",
  [(lambda c: jnp.full(3, 0.5), r"shape \(3,\)"), (lambda c: None, r"None")],
  ids=["vector", "none"],
)
def test_schedule_that_does_not_return_a_scalar_says_so(schedule, shown):
  params = _params()
  tx = cyclax.magnitude_prune(schedule, update_every=1)
  with pytest.raises(TypeError, match=rf"schedule must return a scalar.*{shown}"):
    tx.update(_grads(params), tx.init(params), params)


def test_split_leaves_inside_shard_map_without_axis_name_ask_for_it():
  mesh = jax.make_mesh((1,), ("model",))
  spec = jax.sharding.PartitionSpec("model")
  params = {"w": jnp.asarray(np.random.default_rng(2).standard_normal((8, 4)), jnp.float32)}
  tx = cyclax.magnitude_prune(0.5, update_every=1)
  state = tx.init(params)

  def step(p, g, s):
    return tx.update(g, s, p)

  state_spec = jax.tree.map(lambda _: jax.sharding.PartitionSpec(), state)
  state_spec = state_spec._replace(masks={"w": spec})
  mapped = jax.shard_map(
    step, mesh=mesh, in_specs=({"w": spec}, {"w": spec}, state_spec), out_specs=({"w": spec}, state_spec)
  )
  sharded = jax.device_put(params, jax.sharding.NamedSharding(mesh, spec))
  state = state._replace(masks=jax.device_put(state.masks, jax.sharding.NamedSharding(mesh, spec)))
  with pytest.raises(ValueError, match=r"leaf 'w'.*\['model'\].*axis_name"):
    mapped(sharded, sharded, state)


def test_moment_reset_with_a_non_pruning_second_argument_fails_at_init():
  tx = cyclax.reset_regrown_moments(optax.adam(1e-3), optax.sgd(0.1))
  with pytest.raises(ValueError, match=r"`prune`.*cyclax"):
    tx.init(_params())


# ---------------------------------------------------------------------------
# Bad values never wipe out sparsity.
# ---------------------------------------------------------------------------


def _nan_after(t0):
  return lambda count: jnp.where(count < t0, 0.75, jnp.nan)


@pytest.mark.parametrize("jit", [False, True])
def test_nan_schedule_keeps_the_previous_masks_and_counts_the_skips(jit):
  params = _params()
  tx = optax.chain(optax.sgd(LR), cyclax.magnitude_prune(_nan_after(2), update_every=1))
  step = jax.jit(functools.partial(_apply, tx)) if jit else functools.partial(_apply, tx)
  state = tx.init(params)
  history = []
  for t in range(5):
    params, state = step(params, state, _grads(params, t))
    history.append(cyclax.get_masks(state) if t < 2 else None)
  prune_state = state[1]
  assert int(prune_state.skipped_refreshes) == 3
  with pytest.warns(cyclax.PruningValueWarning, match="skipped"):
    masks = cyclax.get_masks(state)
  np.testing.assert_array_equal(
    np.asarray(masks["dense"]["kernel"]), np.asarray(history[1]["dense"]["kernel"])
  )
  assert int(jnp.sum(params["dense"]["kernel"] == 0)) == reference.num_to_prune(0.75, 48)


def test_nan_sparsity_injected_under_jit_keeps_the_masks():
  params = _params()
  tx = optax.chain(
    optax.sgd(LR), optax.inject_hyperparams(cyclax.magnitude_prune)(sparsity=0.5, update_every=1)
  )
  step = jax.jit(functools.partial(_apply, tx))
  state = tx.init(params)
  params, state = step(params, state, _grads(params, 0))
  before = np.asarray(cyclax.get_masks(state)["dense"]["kernel"])
  state[1].hyperparams["sparsity"] = jnp.full_like(state[1].hyperparams["sparsity"], jnp.nan)
  params, state = step(params, state, _grads(params, 1))
  prune_state = state[1].inner_state
  assert int(prune_state.skipped_refreshes) == 1
  np.testing.assert_array_equal(np.asarray(prune_state.masks["dense"]["kernel"]), before)
  assert int(jnp.sum(params["dense"]["kernel"] == 0)) == reference.num_to_prune(0.5, 48)


@pytest.mark.parametrize(
  "hyper",
  [
    {"cycle_steps": 0},
    {"cycle_steps": -5},
    {"ramp_fraction": 0.0},
    {"ramp_fraction": -0.5},
    {"num_cycles": -1},
    {"initial_sparsity": -0.3},
  ],
  ids=lambda h: "-".join(f"{k}={v}" for k, v in h.items()),
)
def test_traced_schedule_arguments_out_of_range_give_finite_sparsities(hyper):
  # Traced (as optax.inject_hyperparams passes them), out-of-range values cannot raise.
  args = dict(target_sparsity=0.8, num_cycles=2, cycle_steps=5, initial_sparsity=0.4, ramp_fraction=0.8)
  schedule = jax.jit(lambda c, h: cyclax.cyclical_sparsity_schedule(**{**args, **h})(c))
  traced = {k: jnp.asarray(v) for k, v in hyper.items()}
  values = [float(schedule(t, traced)) for t in range(14)]
  assert all(np.isfinite(values)) and all(0.0 <= v <= 0.8 + 1e-7 for v in values), values


def test_nonfinite_params_in_pruned_slots_are_reported_as_such_not_as_misplacement():
  params = _params()
  tx = optax.chain(optax.sgd(LR), cyclax.magnitude_prune(0.5, update_every=1))
  state = tx.init(params)
  params, state = _step(tx, params, state, 0)
  pruned_at = tuple(np.argwhere(~np.asarray(cyclax.get_masks(state)["dense"]["kernel"]))[0])
  params["dense"]["kernel"] = params["dense"]["kernel"].at[pruned_at].set(jnp.inf)  # diverged
  params, state = _step(tx, params, state, 1)
  prune_state = state[1]
  assert int(prune_state.nonfinite_steps) == 1 and int(prune_state.misplaced_steps) == 0
  with warnings.catch_warnings():
    warnings.simplefilter("error", cyclax.PruningOrderWarning)
    with pytest.warns(cyclax.PruningValueWarning, match="NaN or inf"):
      cyclax.pruning_metrics(state)


def test_nm_groups_with_nan_keep_exactly_n_and_report_the_nan_left_in_a_pruned_slot():
  w = jnp.asarray(
    [[jnp.nan, jnp.nan, jnp.nan, 0.5], [0.1, -2.0, 0.3, 4.0]], jnp.float32
  ).T  # groups along axis 0
  params = {"w": w}
  tx = optax.chain(optax.sgd(0.0), cyclax.magnitude_prune(0.5, pattern=(2, 4), update_every=1))
  state = tx.init(params)
  params, state = _apply(tx, params, state, jax.tree.map(jnp.zeros_like, params))
  mask = np.asarray(cyclax.get_masks(state)["w"])
  # NaN ranks above +inf: the two highest-ranked NaNs (ties: the later index) are kept in group 0.
  np.testing.assert_array_equal(mask[:, 0], [False, True, True, False])
  np.testing.assert_array_equal(mask[:, 1], [False, True, False, True])
  # The NaN in the pruned slot cannot be zeroed by an additive update: it stays NaN.
  assert np.isnan(np.asarray(params["w"])[0, 0])
  params, state = _apply(tx, params, state, jax.tree.map(jnp.zeros_like, params))
  assert int(state[1].nonfinite_steps) == 1 and int(state[1].misplaced_steps) == 0


def test_misplaced_chain_is_counted_and_reported_by_the_helpers():
  params = _params()
  tx = optax.chain(cyclax.magnitude_prune(0.5, update_every=1), optax.sgd(LR))
  state = tx.init(params)
  for t in range(3):
    params, state = _step(tx, params, state, t)
  assert int(state[0].misplaced_steps) == 2
  with pytest.warns(cyclax.PruningOrderWarning, match="LAST transformation"):
    cyclax.get_masks(state)


def test_callable_filter_under_inject_hyperparams_works_when_listed_in_static_args():
  params = _params()
  injected = optax.inject_hyperparams(cyclax.magnitude_prune, static_args=("filter",))
  tx = optax.chain(
    optax.sgd(LR), injected(sparsity=0.5, update_every=1, filter=lambda path, leaf: leaf.ndim == 2)
  )
  new, state = _step(tx, params, tx.init(params))
  assert int(jnp.sum(new["dense"]["kernel"] == 0)) == 24 and int(jnp.sum(new["bias"] == 0)) == 0
  assert re.search("static_args", cyclax.magnitude_prune.__doc__)
