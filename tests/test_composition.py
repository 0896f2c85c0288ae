"""cyclax inside optax wrappers, flax training loops and arbitrary pytrees."""

import dataclasses
import functools
from typing import NamedTuple, Optional

import equinox as eqx
import jax
import jax.numpy as jnp
import nnx_models
import numpy as np
import optax
import pytest
import reference
from flax import nnx
from flax.training import train_state
from jax import lax

import cyclax

LR = 0.25  # a power of two: the SGD step is exact, so NumPy references agree bit for bit


def _params(seed=0):
  return reference.random_tree(
    seed, {"w": ((5, 7), jnp.float32), "v": ((3, 3), jnp.bfloat16), "b": (7, jnp.float32)}
  )


def _grads(params, seed):
  return reference.random_like(params, seed)


def _run(tx, params, num_steps, jit=True, grads_fn=_grads):
  """Returns the params and optimizer state after every step."""
  return reference.run_history(tx, params, num_steps, grads_fn, jit=jit)


def _assert_exact_sparsity(params, sparsity, names):
  for name in names:
    leaf = np.asarray(params[name])
    assert int(np.sum(leaf == 0)) == reference.num_to_prune(sparsity, leaf.size), name


def _counting_step(tx):
  """A jitted training step and the list it appends to each time it is traced."""
  traces = []

  @jax.jit
  def step(params, state, grads):
    traces.append(1)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step, traces


def test_chain_with_adamw_and_clipping():
  tx = optax.chain(
    optax.clip_by_global_norm(1.0), optax.adamw(0.1), cyclax.magnitude_prune(0.6, update_every=2)
  )
  history = _run(tx, _params(), 4)
  for params, _ in history:
    _assert_exact_sparsity(params, 0.6, ["w", "v"])
    assert int(np.sum(np.asarray(params["b"]) == 0)) == 0
  assert int(cyclax.find_prune_state(history[-1][1]).count) == 4


def test_masked_prunes_only_selected_subtree():
  params = _params()
  inner = optax.chain(
    optax.sgd(LR), cyclax.magnitude_prune(0.5, update_every=1, filter=lambda p, x: x.ndim >= 1)
  )
  tx = optax.masked(inner, {"w": True, "v": False, "b": True})
  history = _run(tx, params, 3)
  for t, ((new, _), (old, _)) in enumerate(zip(history, [(params, None)] + history[:-1])):
    _assert_exact_sparsity(new, 0.5, ["w", "b"])
    # Masked out: the raw gradient passes through untouched.
    np.testing.assert_array_equal(
      reference.bits(new["v"]), reference.bits(optax.apply_updates(old["v"], _grads(old, t)["v"]))
    )
  masks = cyclax.get_masks(history[-1][1])
  assert set(masks) == {"w", "v", "b"} and masks["w"].shape == (5, 7) and masks["b"].shape == (7,)
  assert isinstance(masks["v"], optax.MaskedNode)


def test_inject_hyperparams_sparsity_and_update_every_change_between_steps():
  params = {"w": jnp.asarray(np.random.default_rng(1).standard_normal((6, 5)), jnp.float32)}
  injected = optax.inject_hyperparams(cyclax.magnitude_prune)(sparsity=0.25, update_every=2)
  tx = optax.chain(optax.sgd(LR), injected)
  step, traces = _counting_step(tx)

  state = tx.init(params)
  # (sparsity, update_every) set before each step; refresh when count % update_every == 0.
  plan = [(0.25, 2), (0.25, 2), (0.75, 2), (0.5, 3), (0.5, 3), (0.5, 3), (0.5, 3)]
  refreshes = [True, False, True, True, False, False, True]
  prev_mask = None
  for t, ((sparsity, every), refresh) in enumerate(zip(plan, refreshes)):
    hp = state[1].hyperparams
    hp["sparsity"] = jnp.full_like(hp["sparsity"], sparsity)
    hp["update_every"] = lax.full_like(hp["update_every"], every)
    grads = _grads(params, t)
    candidate = np.asarray(params["w"]) - np.float32(LR) * np.asarray(grads["w"])
    params, state = step(params, state, grads)
    mask = np.asarray(cyclax.get_masks(state)["w"])
    if refresh:
      np.testing.assert_array_equal(
        mask, reference.keep_mask(candidate, reference.num_to_prune(sparsity, 30))
      )
    else:
      np.testing.assert_array_equal(mask, prev_mask)
    assert int(np.sum(np.asarray(params["w"]) == 0)) == int(np.sum(~mask))
    prev_mask = mask
  assert len(traces) == 1  # hyperparameters are traced: no recompilation


def test_inject_hyperparams_cyclical_prune_equals_plain():
  params = _params(2)
  kwargs = dict(num_cycles=2, cycle_steps=3, update_every=1)
  plain = optax.chain(optax.sgd(LR), cyclax.cyclical_prune(0.8, **kwargs))
  injected = optax.chain(
    optax.sgd(LR),
    optax.inject_hyperparams(cyclax.cyclical_prune)(0.8, **kwargs),  # every argument traced
  )
  for (p1, s1), (p2, s2) in zip(_run(plain, params, 5), _run(injected, params, 5)):
    reference.assert_trees_bitwise_equal(p1, p2)
    reference.assert_trees_bitwise_equal(cyclax.find_prune_state(s1), cyclax.find_prune_state(s2))


def test_multi_steps_prunes_on_every_inner_step():
  params = _params(3)
  chain = optax.chain(optax.sgd(LR), cyclax.cyclical_prune(0.7, num_cycles=2, cycle_steps=2, update_every=1))
  tx = optax.MultiSteps(chain, every_k_schedule=2)
  # The same gradient twice per accumulation: its mean is exact, so the run must
  # equal the plain chain fed that gradient once per inner step.
  history = _run(tx, params, 6, grads_fn=lambda p, t: _grads(p, 100 + t // 2))
  plain = _run(chain, params, 3, grads_fn=lambda p, t: _grads(p, 100 + t))
  for t, (p, state) in enumerate(history):
    prune_state = cyclax.find_prune_state(state)
    assert int(prune_state.count) == (t + 1) // 2
    if t % 2 == 0:  # accumulating: params unchanged
      reference.assert_trees_bitwise_equal(p, params if t == 0 else history[t - 1][0])
    else:
      reference.assert_trees_bitwise_equal(p, plain[t // 2][0])
      reference.assert_trees_bitwise_equal(prune_state, cyclax.find_prune_state(plain[t // 2][1]))


def test_apply_if_finite_skips_non_finite_step_and_keeps_pruning_state():
  params = _params(4)
  chain = optax.chain(optax.sgd(LR), cyclax.magnitude_prune(0.5, update_every=1))
  tx = optax.apply_if_finite(chain, max_consecutive_errors=3)

  def grads_fn(p, t):
    g = _grads(p, t if t < 2 else t - 1)
    if t == 2:
      g["w"] = g["w"].at[1, 2].set(jnp.nan)
    return g

  history = _run(tx, params, 4, grads_fn=grads_fn)
  skipped = _run(chain, params, 3, grads_fn=lambda p, t: _grads(p, t))
  reference.assert_trees_bitwise_equal(history[2][0], history[1][0])  # NaN step: params unchanged
  reference.assert_trees_bitwise_equal(
    cyclax.find_prune_state(history[2][1]), cyclax.find_prune_state(history[1][1])
  )
  assert int(history[2][1].notfinite_count) == 1
  # Afterwards the run is the run that never saw the NaN step.
  for got, want in [(history[0], skipped[0]), (history[1], skipped[1]), (history[3], skipped[2])]:
    reference.assert_trees_bitwise_equal(got[0], want[0])
    reference.assert_trees_bitwise_equal(cyclax.find_prune_state(got[1]), cyclax.find_prune_state(want[1]))


def test_tree_map_params_reaches_the_masks():
  params = _params()
  tx = optax.chain(optax.adam(0.1), cyclax.magnitude_prune(0.5))
  state = tx.init(params)
  spec = jax.sharding.PartitionSpec
  mapped = optax.tree_utils.tree_map_params(
    tx, lambda p: spec(*(["x"] + [None] * (p.ndim - 1))), state, transform_non_params=lambda _: spec()
  )
  prune = cyclax.find_prune_state(mapped)
  assert prune.masks["w"] == spec("x", None) and prune.masks["v"] == spec("x", None)
  assert prune.masks["b"] is None
  assert prune.count == spec()
  assert mapped[0][0].mu["b"] == spec("x")  # the optimizer's own params-shaped state too


def test_flax_train_state_apply_gradients_equals_plain_loop():
  params = _params(5)
  tx = optax.chain(optax.sgd(LR), cyclax.cyclical_prune(0.6, num_cycles=2, cycle_steps=2, update_every=1))
  state = train_state.TrainState.create(apply_fn=None, params=params, tx=tx)
  apply = jax.jit(lambda s, g: s.apply_gradients(grads=g))
  plain = _run(tx, params, 4)
  for t in range(4):
    state = apply(state, _grads(state.params, t))
    reference.assert_trees_bitwise_equal(state.params, plain[t][0])
    reference.assert_trees_bitwise_equal(cyclax.get_masks(state.opt_state), cyclax.get_masks(plain[t][1]))
  _assert_exact_sparsity(
    state.params, float(cyclax.cyclical_sparsity_schedule(0.6, num_cycles=2, cycle_steps=2)(3)), ["w", "v"]
  )


def test_flax_nnx_optimizer_under_nnx_jit():
  model = nnx_models.MLP(nnx.Rngs(0))
  tx = optax.chain(optax.sgd(LR), cyclax.magnitude_prune(0.5, update_every=1))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  params = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))  # a plain optax run beside it
  plain_state = tx.init(params)
  x = jnp.asarray(np.random.default_rng(6).standard_normal((8, 6)), jnp.float32)

  def loss(model):
    return jnp.mean(model(x) ** 2)

  @nnx.jit
  def train_step(model, optimizer):
    grads = nnx.grad(loss)(model)
    optimizer.update(model, grads)
    return grads

  plain_step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p)))
  for _ in range(3):
    grads = train_step(model, optimizer)
    params, plain_state = plain_step(params, plain_state, grads)
    reference.assert_trees_bitwise_equal(nnx.state(model, nnx.Param), params)
  for layer in (model.hidden, model.out):
    kernel = np.asarray(layer.kernel[...])
    assert int(np.sum(kernel == 0)) == reference.num_to_prune(0.5, kernel.size)
    assert int(np.sum(np.asarray(layer.bias[...]) == 0)) < layer.bias[...].size
  masks = cyclax.get_masks(optimizer.opt_state)
  # Only the two kernels carry a mask (nnx wraps state leaves in OptVariable).
  assert sorted(m.shape for m in jax.tree.leaves(masks)) == [(6, 9), (9, 3)]
  np.testing.assert_array_equal(
    np.asarray(masks["out"]["kernel"][...]), np.asarray(model.out.kernel[...]) != 0
  )


def test_flax_nnx_leaf_names_have_no_value_suffix():
  model = nnx_models.MLP(nnx.Rngs(1))
  tx = optax.chain(optax.sgd(LR), cyclax.magnitude_prune(0.5, update_every=1))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x = jnp.asarray(np.random.default_rng(12).standard_normal((8, 6)), jnp.float32)
  nnx.jit(lambda m, o: o.update(m, nnx.grad(lambda m: jnp.mean(m(x) ** 2))(m)))(model, optimizer)
  arrays = {
    f"{layer}/{kind}": np.asarray(getattr(getattr(model, layer), kind)[...])
    for layer in ("hidden", "out")
    for kind in ("kernel", "bias")
  }
  report = cyclax.sparsity_report(nnx.state(model, nnx.Param))
  assert sorted(report) == sorted([*arrays, "total"])
  for name, value in arrays.items():
    assert float(report[name]) == np.float32(np.sum(value == 0)) / np.float32(value.size)
  metrics = cyclax.pruning_metrics(optimizer.opt_state)
  assert sorted(k for k in metrics if k.startswith("sparsity/")) == [
    "sparsity/hidden/kernel",
    "sparsity/out/kernel",
    "sparsity/total",
  ]
  # Names of other trees are unchanged: a dict key or NamedTuple field called `value` in the middle.
  tree = {"value": _Pair(jnp.zeros((2, 2)), jnp.ones((2, 2)))}
  assert sorted(cyclax.sparsity_report(tree)) == ["total", "value/first", "value/second"]


def test_equinox_mlp_prunes_weights_and_keeps_biases_dense_like_numpy():
  model = eqx.nn.MLP(6, 3, width_size=10, depth=2, key=jax.random.key(0))
  sparsity = 0.6
  tx = optax.chain(optax.sgd(LR), cyclax.magnitude_prune(sparsity, update_every=1))
  state = tx.init(eqx.filter(model, eqx.is_inexact_array))
  x = jnp.asarray(np.random.default_rng(13).standard_normal((16, 6)), jnp.float32)

  @eqx.filter_jit
  def step(model, state):
    grads = eqx.filter_grad(lambda m: jnp.mean(jax.vmap(m)(x) ** 2))(model)
    updates, state = tx.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
    return eqx.apply_updates(model, updates), state, grads

  for _ in range(3):
    old = [(np.asarray(layer.weight), np.asarray(layer.bias)) for layer in model.layers]
    model, state, grads = step(model, state)
    for (w, b), layer, g in zip(old, model.layers, grads.layers):
      # NumPy step: SGD with an exact learning rate, then keep the largest |candidate| of each weight.
      candidate = w - np.float32(LR) * np.asarray(g.weight)
      mask = reference.keep_mask(candidate, reference.num_to_prune(sparsity, candidate.size))
      reference.assert_trees_bitwise_equal(np.asarray(layer.weight), np.where(mask, candidate, np.float32(0)))
      reference.assert_trees_bitwise_equal(np.asarray(layer.bias), b - np.float32(LR) * np.asarray(g.bias))
  masks = cyclax.get_masks(state)
  for layer, mask_layer in zip(model.layers, masks.layers):
    assert mask_layer.bias is None and mask_layer.weight.shape == layer.weight.shape  # (out, in)
    np.testing.assert_array_equal(np.asarray(mask_layer.weight), np.asarray(layer.weight) != 0)


@dataclasses.dataclass
class _Layer:
  weight: jax.Array
  bias: Optional[jax.Array]


jax.tree_util.register_dataclass(_Layer, data_fields=["weight", "bias"], meta_fields=[])


def test_trees_with_none_leaves():
  rng = np.random.default_rng(7)
  params = {
    "a": _Layer(jnp.asarray(rng.standard_normal((4, 6)), jnp.float32), None),
    "b": _Layer(jnp.asarray(rng.standard_normal((3, 3)), jnp.float32), jnp.ones(3)),
    "frozen": None,
  }
  tx = optax.chain(optax.sgd(LR), cyclax.magnitude_prune(0.5, update_every=1))
  history = _run(tx, params, 2)
  params, state = history[-1]
  masks = cyclax.get_masks(state)
  assert masks["a"].bias is None and masks["frozen"] is None and masks["b"].bias is None
  assert masks["a"].weight.shape == (4, 6)
  assert params["a"].bias is None and params["frozen"] is None
  assert int(np.sum(np.asarray(params["a"].weight) == 0)) == 12
  assert int(np.sum(np.asarray(params["b"].weight) == 0)) == 5


class _Pair(NamedTuple):
  first: jax.Array
  second: jax.Array


def _container_tx():
  return optax.chain(optax.sgd(LR), cyclax.cyclical_prune(0.5, num_cycles=2, cycle_steps=2, update_every=1))


@functools.cache
def _container_reference_run():
  base = _params(8)
  fixed = {"w": base["w"], "v": base["v"]}
  return _run(_container_tx(), fixed, 3, grads_fn=lambda p, t: _grads(fixed, t))


@pytest.mark.parametrize("kind", ["tuple", "namedtuple", "list", "nnx_state", "nested"])
def test_tree_containers_give_the_same_result_as_dicts(kind):
  base = _params(8)
  w, v = base["w"], base["v"]
  make = {
    "tuple": lambda a, b: (a, b),
    "namedtuple": _Pair,
    "list": lambda a, b: [a, b],
    "nnx_state": lambda a, b: nnx.State({"first": a, "second": b}),
    "nested": lambda a, b: {"x": (a, {"y": [b]})},
  }[kind]

  def grads_fn(p, t):
    g = _grads({"w": w, "v": v}, t)
    return make(g["w"], g["v"])

  reference_run = _container_reference_run()
  run = _run(_container_tx(), make(w, v), 3, grads_fn=grads_fn)
  for (p, s), (p_ref, _) in zip(run, reference_run):
    reference.assert_trees_bitwise_equal(jax.tree.leaves(p), jax.tree.leaves(make(p_ref["w"], p_ref["v"])))
    assert jax.tree.structure(cyclax.get_masks(s)) == jax.tree.structure(make(True, True))


def test_init_accepts_shape_dtype_structs():
  params = _params()
  structs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  for tx in (
    cyclax.magnitude_prune(0.5),
    optax.chain(optax.adam(0.1), cyclax.cyclical_prune(0.9, num_cycles=2, cycle_steps=10)),
  ):
    from_structs = tx.init(structs)
    from_arrays = tx.init(params)
    reference.assert_trees_bitwise_equal(from_structs, from_arrays)
    assert jax.tree.map(jax.typeof, jax.eval_shape(tx.init, structs)) == jax.tree.map(jax.typeof, from_arrays)


@pytest.mark.parametrize(
  "make",
  [
    lambda: cyclax.magnitude_prune(0.5, update_every=2),
    lambda: cyclax.cyclical_prune(0.9, num_cycles=2, cycle_steps=3, update_every=1),
    lambda: optax.inject_hyperparams(cyclax.magnitude_prune)(sparsity=0.5, update_every=2),
  ],
  ids=["magnitude", "cyclical", "injected"],
)
def test_state_avals_identical_after_init_and_update_and_lax_cond_works(make):
  tx = optax.chain(optax.sgd(LR), make())
  params = _params(9)
  grads = _grads(params, 0)
  state = tx.init(params)
  avals = jax.tree.map(jax.typeof, state)
  assert jax.tree.map(jax.typeof, jax.eval_shape(lambda s: tx.update(grads, s, params)[1], state)) == avals

  @jax.jit
  def maybe_step(pred, state):
    return lax.cond(pred, lambda s: tx.update(grads, s, params)[1], lambda s: s, state)

  new_state = maybe_step(True, state)
  assert jax.tree.map(jax.typeof, new_state) == avals
  assert int(cyclax.find_prune_state(new_state).count) == 1
  reference.assert_trees_bitwise_equal(maybe_step(False, state), state)


def test_no_recompilation_across_steps():
  tx = optax.chain(optax.adam(0.1), cyclax.cyclical_prune(0.8, num_cycles=2, cycle_steps=3, update_every=2))
  step, traces = _counting_step(tx)

  params = _params(10)
  state = tx.init(params)
  for t in range(5):
    params, state = step(params, state, _grads(params, t))
  assert len(traces) == 1 and step._cache_size() == 1


def test_jitted_and_eager_runs_are_bitwise_identical():
  tx = optax.chain(optax.sgd(LR), cyclax.cyclical_prune(0.7, num_cycles=2, cycle_steps=2, update_every=1))
  params = _params(11)
  for (p1, s1), (p2, s2) in zip(_run(tx, params, 2, jit=True), _run(tx, params, 2, jit=False)):
    reference.assert_trees_bitwise_equal(p1, p2)
    reference.assert_trees_bitwise_equal(s1, s2)


def test_tree_map_params_works_with_tree_valued_overrides_and_sharded_dims():
  params = _params()
  prune = cyclax.magnitude_prune(
    0.5, overrides={"w": 0.25}, axis_name="x", sharded_dims={"w": 0, "v": None, "b": None}
  )
  tx = optax.chain(optax.adam(0.1), prune)
  spec = jax.sharding.PartitionSpec
  mapped = optax.tree_utils.tree_map_params(
    tx,
    lambda p: spec(*(["x"] + [None] * (p.ndim - 1))),
    tx.init(params),
    transform_non_params=lambda _: spec(),
  )
  prune_state = cyclax.find_prune_state(mapped)
  assert prune_state.masks["w"] == spec("x", None) and prune_state.masks["b"] is None
