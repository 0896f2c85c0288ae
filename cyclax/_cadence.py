"""When the masks are refreshed.

The default cadence refreshes at step ``t`` (the state's ``count``) when

- ``t % update_every == 0``, or
- the sparsity schedule drops at ``t``: ``s(t) < s(t - 1)`` (a cycle start), so
  that weights can grow back at exactly that step, or
- the schedule settles at ``t``: it reaches a level that it then holds (the end
  of a ramp, a one-shot or step jump), so that this level is applied at once.
  cyclax's schedules say where with a ``settles_at(count) -> bool`` attribute; a
  schedule of your own can carry one too.

So a cyclical run of ``num_cycles * cycle_steps`` steps ends exactly at the
target and every cycle start lowers the sparsity at that step, whatever
``update_every`` is. Only the main ``sparsity`` schedule is read; a constant
sparsity refreshes every ``update_every`` steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from cyclax import _validation


def sparsity_at(sparsity: optax.ScalarOrSchedule, count: ArrayLike, name: str = "sparsity") -> jax.Array:
  """The sparsity at ``count`` as a float32 scalar clipped to [0, 1] (NaN stays NaN).

  Raises:
    TypeError: if a schedule returns something other than a scalar.
  """
  value = sparsity(count) if callable(sparsity) else sparsity
  if value is None or jnp.ndim(value) != 0:
    shape = None if value is None else jnp.shape(value)
    raise TypeError(
      f"the {name} schedule must return a scalar sparsity (a float or a 0-d array), got "
      f"{'None' if value is None else f'an array of shape {shape}'}."
    )
  if not jnp.issubdtype(jnp.result_type(value), jnp.number):
    raise TypeError(f"the {name} schedule must return a real number, got {value!r}.")
  return jnp.clip(jnp.asarray(value, jnp.float32), 0.0, 1.0)


def on_cadence(count: jax.Array, update_every: Any) -> jax.Array:
  """``count % update_every == 0``, exact for any positive ``update_every`` (also past int32)."""
  if _validation.is_concrete(update_every) and int(np.asarray(update_every)) > _validation.INT32_MAX:
    return count == 0  # the count never reaches a second multiple
  every = jnp.maximum(jnp.asarray(update_every, jnp.int32), 1)
  return count % every == 0


def schedule_turns(schedule: optax.Schedule, count: jax.Array) -> jax.Array:
  """True where the schedule drops, or where it settles (see the module docstring)."""
  count = jnp.asarray(count, jnp.int32)
  previous = sparsity_at(schedule, jnp.maximum(count, 1) - 1)
  turns = sparsity_at(schedule, count) < previous
  settles_at = getattr(schedule, "settles_at", None)
  if settles_at is not None:
    turns = jnp.logical_or(turns, jnp.asarray(settles_at(count), jnp.bool_))
  return jnp.logical_and(count > 0, turns)


def refresh_due(sparsity: optax.ScalarOrSchedule, update_every: Any, count: jax.Array) -> jax.Array:
  """Whether the default cadence refreshes at ``count`` (a traced bool scalar)."""
  due = on_cadence(count, update_every)
  if callable(sparsity):
    due = jnp.logical_or(due, schedule_turns(sparsity, count))
  return due


def host_refresh_due(sparsity: optax.ScalarOrSchedule, update_every: Any) -> Callable[[int], bool]:
  """``refresh_due`` evaluated on the host CPU for a Python int step (compiled once).

  Raises:
    TypeError: if ``update_every`` is traced (set by ``optax.inject_hyperparams``):
      the host cannot know it.
  """
  if not _validation.is_concrete(update_every):
    raise TypeError(
      "refresh_due needs a concrete `update_every`; under optax.inject_hyperparams the cadence is only "
      "known inside the compiled step (use refresh_masks=None)."
    )
  every = int(np.asarray(update_every))
  turns = jax.jit(lambda c: schedule_turns(sparsity, c)) if callable(sparsity) else None
  cpu = jax.devices("cpu")[0]

  def due(step: int) -> bool:
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)):
      raise TypeError(f"`step` must be a Python int (the pruning state's count), got {step!r}.")
    step = int(step)
    if not 0 <= step <= _validation.INT32_MAX:
      raise ValueError(f"`step` must lie in [0, 2**31 - 1] (the int32 step count), got {step}.")
    if step % every == 0:
      return True
    if turns is None:
      return False
    with jax.default_device(cpu):
      return bool(turns(np.int32(step)))

  return due
