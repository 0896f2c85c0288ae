"""A jitted training step that contains cyclax exports, round-trips and lowers for other platforms."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import reference
from jax import export

import cyclax

# One transformation per case, each on its own part of the params (optax.multi_transform), so that
# one exported step covers every distribution, packed masks, N:M and regrowth tracking.
CASES = {
  "uniform": {},
  "global": {"distribution": "global", "packed_masks": True, "track_regrowth": True},
  "erk": {"distribution": "erk"},
  "nm": {"pattern": (2, 4)},
}


def _register_optax_states(tree):
  """Registers the optax state types in ``tree`` for serialisation, as a user exporting a step does."""
  is_optax = lambda x: (
    isinstance(x, tuple) and hasattr(x, "_fields") and type(x).__module__.startswith("optax")
  )
  for node in jax.tree.leaves(tree, is_leaf=is_optax):
    if is_optax(node):
      try:
        export.register_namedtuple_serialization(
          type(node), serialized_name=f"test.{type(node).__qualname__}"
        )
      except ValueError:
        pass  # already registered
      _register_optax_states(tuple(node))


def _step_and_inputs(cases):
  rng = np.random.default_rng(11)
  params = {
    case: {
      "w": jnp.asarray(rng.standard_normal((8, 12)), jnp.float32),
      "v": jnp.asarray(rng.standard_normal((4, 8)), jnp.float32),
      "b": jnp.asarray(rng.standard_normal(12), jnp.float32),
    }
    for case in cases
  }
  prune = {
    case: cyclax.cyclical_prune(
      0.5 if "pattern" in kwargs else 0.8, num_cycles=2, cycle_steps=4, update_every=2, **kwargs
    )
    for case, kwargs in CASES.items()
    if case in cases
  }
  tx = optax.chain(optax.adam(0.05), optax.multi_transform(prune, {case: case for case in cases}))

  def step(params, state):
    grads = jax.tree.map(jnp.cos, params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  _register_optax_states(state)
  return jax.jit(step), params, state


def test_default_step_serialises_deserialises_and_runs_to_the_same_result():
  # Compiling a refresh takes seconds on CPU: the run covers the global distribution with packed
  # masks and regrowth tracking; every case is serialised and lowered below.
  step, params, state = _step_and_inputs(["global"])
  restored = export.deserialize(export.export(step)(params, state).serialize())
  want, got = (params, state), (params, state)
  for _ in range(5):  # two refreshes, a ramp end and a cycle start
    want = step(*want)
    got = restored.call(*got)
  reference.assert_trees_bitwise_equal(want, got)
  assert int(jnp.sum(got[0]["global"]["w"] == 0)) > 0


def test_default_step_of_every_case_serialises_and_lowers_for_gpu_and_tpu_from_this_host():
  step, params, state = _step_and_inputs(list(CASES))
  exported = export.export(step, platforms=["cpu", "cuda", "rocm", "tpu"])(params, state)
  assert exported.platforms == ("cpu", "cuda", "rocm", "tpu")
  assert not re.search(r"callback", exported.mlir_module(), re.IGNORECASE)
  restored = export.deserialize(exported.serialize())
  assert restored.in_tree == exported.in_tree and restored.out_tree == exported.out_tree
  assert restored.mlir_module() == exported.mlir_module()
