"""Sparsity schedules: plain, jit-safe ``step -> value`` functions.

Every schedule here is an ``optax.Schedule``: it takes the step count (a Python
int or a traced integer array) and returns a float32 scalar. They can be passed
to :func:`cyclax.magnitude_prune` as ``sparsity`` or used anywhere optax takes a
schedule.

Arguments that arrive as traced arrays (for example through
``optax.inject_hyperparams``) cannot be checked when the schedule is built, so
the schedules clip them into range instead: sparsities into [0, 1], counts of
steps and cycles to at least 1, ``begin_step`` and ``prune_step`` to at least 0,
``ramp_fraction`` into [0, 1]. A traced ``ramp_fraction`` of 0 (or a traced
``end_step <= begin_step``) means a ramp of length zero: the target from the
ramp's first step on. No traced value gives NaN or a ramp that runs backwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from cyclax import _validation

Ramp = Literal["cubic", "linear", "step"]
RAMPS = ("cubic", "linear", "step")


def _check_ramp(ramp: str) -> None:
  if not isinstance(ramp, str) or ramp not in RAMPS:
    allowed = ", ".join(repr(r) for r in RAMPS)
    raise ValueError(f"`ramp` must be one of {allowed}, got {ramp!r}.")


def _cubic_ramp(start: jax.Array, end: jax.Array, progress: jax.Array) -> jax.Array:
  """Zhu & Gupta's cubic: ``end + (start - end) * (1 - progress)**3``."""
  progress = jnp.clip(progress, 0.0, 1.0)
  return end + (start - end) * (1.0 - progress) ** 3


def _linear_ramp(start: jax.Array, end: jax.Array, progress: jax.Array) -> jax.Array:
  """``end + (start - end) * (1 - progress)``: a straight line from ``start`` to ``end``."""
  progress = jnp.clip(progress, 0.0, 1.0)
  return end + (start - end) * (1.0 - progress)


def _step_ramp(start: jax.Array, end: jax.Array, jumped: jax.Array) -> jax.Array:
  """``start`` until the jump, ``end`` from it on."""
  return jnp.where(jumped, end, start)


def _is_concrete(*values: ArrayLike) -> bool:
  return all(_validation.is_concrete(v) for v in values)


def _settling(schedule: optax.Schedule, settles_at: Callable[[jax.Array], jax.Array]) -> optax.Schedule:
  """Attaches ``settles_at``: ``count -> bool``, True where the schedule reaches a level it then holds.

  :func:`cyclax.magnitude_prune` refreshes the masks at those steps (the end of a
  ramp, a jump), besides every ``update_every`` steps and where the sparsity drops.
  """
  schedule.__dict__["settles_at"] = settles_at  # a function attribute: read with getattr
  return schedule


def _sparsity_value(value: ArrayLike) -> jax.Array:
  """A sparsity as float32, clipped into [0, 1] (the identity on checked, concrete values)."""
  return jnp.clip(jnp.asarray(value, jnp.float32), 0.0, 1.0)


def constant_sparsity_schedule(sparsity: ArrayLike) -> optax.Schedule:
  """The same sparsity at every step (plain iterative hard thresholding).

  Args:
    sparsity: fraction of weights to prune, in [0, 1].

  Returns:
    A schedule ``step -> sparsity``.

  Raises:
    ValueError: if ``sparsity`` is outside [0, 1].

  Example:
    >>> import cyclax
    >>> schedule = cyclax.constant_sparsity_schedule(0.75)
    >>> float(schedule(0)), float(schedule(10_000))
    (0.75, 0.75)
  """
  _validation.check_sparsity("sparsity", sparsity, allow_full=True)

  def schedule(count: ArrayLike) -> jax.Array:
    del count
    return _sparsity_value(sparsity)

  return schedule


def one_shot_sparsity_schedule(target_sparsity: ArrayLike, prune_step: int = 0) -> optax.Schedule:
  """No pruning before ``prune_step``, ``target_sparsity`` from it on.

  With ``update_every`` larger than the run, this is one-shot pruning followed by
  fine-tuning on the fixed mask.

  Args:
    target_sparsity: fraction of weights to prune, in [0, 1].
    prune_step: first step at which weights are pruned (>= 0).

  Returns:
    A schedule ``step -> sparsity``.

  Raises:
    ValueError: if an argument is out of range.

  Example:
    >>> import cyclax
    >>> schedule = cyclax.one_shot_sparsity_schedule(0.9, prune_step=100)
    >>> float(schedule(99)), round(float(schedule(100)), 6)
    (0.0, 0.9)
  """
  _validation.check_sparsity("target_sparsity", target_sparsity, allow_full=True)
  if _is_concrete(prune_step):
    if int(prune_step) < 0:
      raise ValueError(f"`prune_step` must be >= 0, got {prune_step}.")
    prune_at = prune_step
  else:
    prune_at = jnp.maximum(jnp.asarray(prune_step, jnp.int32), 0)

  def schedule(count: ArrayLike) -> jax.Array:
    target = _sparsity_value(target_sparsity)
    return jnp.where(jnp.asarray(count) >= prune_at, target, jnp.zeros_like(target))

  return _settling(schedule, lambda count: jnp.asarray(count) == prune_at)


def gradual_sparsity_schedule(
  target_sparsity: ArrayLike,
  begin_step: int,
  end_step: int,
  initial_sparsity: ArrayLike = 0.0,
  *,
  ramp: Ramp = "cubic",
) -> optax.Schedule:
  r"""Gradual magnitude pruning's ramp (Zhu & Gupta, 2017), cubic by default.

  With ``p = (t - t_0) / (t_1 - t_0)`` clipped to [0, 1], the sparsity is

  .. math::
    s(t) = s_f + (s_i - s_f) (1 - p)^3

  for the default ``ramp="cubic"``: ``s_i`` up to ``begin_step``, ``s_f`` from
  ``end_step`` on. ``ramp="linear"`` uses ``1 - p`` instead of ``(1 - p)^3``;
  ``ramp="step"`` holds ``s_i`` and jumps to ``s_f`` at half of the ramp, at
  the first step ``t`` with ``2 (t - t_0) >= t_1 - t_0``.

  Args:
    target_sparsity: final sparsity ``s_f`` in [0, 1].
    begin_step: first step of the ramp ``t_0`` (>= 0).
    end_step: step ``t_1 > t_0`` at which ``s_f`` is reached.
    initial_sparsity: sparsity ``s_i`` at and before ``begin_step``.
    ramp: ``"cubic"`` (default), ``"linear"`` or ``"step"`` (``s_i`` until
      the middle of the ramp, then ``s_f``).

  Returns:
    The schedule, a function of the step.

  Raises:
    ValueError: for an argument out of range or an unknown ``ramp``.

  Example:
    >>> import cyclax
    >>> schedule = cyclax.gradual_sparsity_schedule(0.8, begin_step=0, end_step=100)
    >>> [round(float(schedule(t)), 4) for t in (0, 50, 100, 200)]
    [0.0, 0.7, 0.8, 0.8]
    >>> step = cyclax.gradual_sparsity_schedule(0.8, begin_step=0, end_step=100, ramp="step")
    >>> [round(float(step(t)), 4) for t in (0, 49, 50, 200)]
    [0.0, 0.0, 0.8, 0.8]
  """
  _check_ramp(ramp)
  _validation.check_sparsity("target_sparsity", target_sparsity, allow_full=True)
  _validation.check_sparsity("initial_sparsity", initial_sparsity, allow_full=True)
  if _is_concrete(begin_step, end_step):
    if int(begin_step) < 0:
      raise ValueError(f"`begin_step` must be >= 0, got {begin_step}.")
    if int(end_step) <= int(begin_step):
      raise ValueError(f"`end_step` must be > `begin_step` ({begin_step}), got {end_step}.")
    begin, end = begin_step, end_step
    length = float(end_step - begin_step)
    ramp_exists = True
  else:
    # Traced: a negative begin_step starts at 0, and end_step <= begin_step is a ramp of length 0.
    begin = jnp.maximum(jnp.asarray(begin_step, jnp.int32), 0)
    end = jnp.asarray(end_step, jnp.int32)
    ramp_exists = end > begin
    length = jnp.where(ramp_exists, end - begin, 1).astype(jnp.float32)

  def schedule(count: ArrayLike) -> jax.Array:
    start = _sparsity_value(initial_sparsity)
    target = _sparsity_value(target_sparsity)
    if ramp == "step":
      elapsed = jnp.asarray(count, jnp.int32) - begin
      half_way = 2 * elapsed >= jnp.maximum(end - begin, 0)
      return _step_ramp(start, target, (elapsed >= 0) & half_way)
    progress = (jnp.asarray(count, jnp.float32) - begin) / length
    if ramp_exists is not True:
      progress = jnp.where(ramp_exists, progress, jnp.where(progress >= 0.0, 1.0, 0.0))
    shape = _cubic_ramp if ramp == "cubic" else _linear_ramp
    return shape(start, target, progress)

  def settles_at(count: ArrayLike) -> jax.Array:
    count = jnp.asarray(count, jnp.int32)
    if ramp == "step":  # the jump: the first step at or past half of the ramp
      return count == begin + (jnp.maximum(end - begin, 0) + 1) // 2
    return count == jnp.maximum(end, begin)

  return _settling(schedule, settles_at)


def _cycle_start_sparsity(target_sparsity: ArrayLike, initial_sparsity: Optional[ArrayLike]) -> ArrayLike:
  """The sparsity at the start of cycles 2, 3, ...: ``initial_sparsity`` checked, or half the target."""
  if initial_sparsity is None:
    # Half the target; a Python float when the target is concrete, so that building the schedule
    # creates no device array (which, made under a mesh, could not be closed over in shard_map).
    if _validation.is_concrete(target_sparsity):
      return 0.5 * float(np.float32(np.asarray(target_sparsity, np.float32)))
    return 0.5 * jnp.asarray(target_sparsity, jnp.float32)
  _validation.check_sparsity("initial_sparsity", initial_sparsity, allow_full=True)
  if _is_concrete(initial_sparsity, target_sparsity):
    initial_value = float(np.asarray(initial_sparsity))
    target_value = float(np.asarray(target_sparsity))
    if initial_value > target_value:
      raise ValueError(
        f"`initial_sparsity` ({initial_value}) must not exceed `target_sparsity` ({target_value})."
      )
  return initial_sparsity


def cyclical_sparsity_schedule(
  target_sparsity: ArrayLike,
  *,
  num_cycles: int,
  cycle_steps: int,
  initial_sparsity: Optional[ArrayLike] = None,
  ramp_fraction: float = 0.8,
  ramp: Ramp = "cubic",
) -> optax.Schedule:
  r"""The cyclical sparsity schedule of Srinivas et al. (2022).

  The run is split into ``num_cycles`` cycles of ``cycle_steps`` steps. Inside a
  cycle, with ``tau`` the step within the cycle and ``R = ramp_fraction *
  cycle_steps``, the sparsity follows a cubic ramp up to the target and then
  holds it:

  .. math::
    s(\tau) = s_t + (s_{init} - s_t) (1 - \min(\tau / R, 1))^3

  ``s_init`` is 0 in the first cycle and ``initial_sparsity`` (default ``0.5 *
  target_sparsity``, as in the paper) in later ones, so each new cycle lowers the
  sparsity and lets wrongly pruned weights grow back. After the last cycle the
  schedule holds ``s_t``.

  ``ramp`` picks the shape inside a cycle (the paper's Table 5 ablation):
  ``"cubic"`` (the default, above), ``"linear"`` (``1 - min(tau / R, 1)``
  instead of its cube) or ``"step"``: ``s_init`` for the first half of the
  cycle, then ``s_t`` from the first ``tau`` with ``2 tau >= cycle_steps`` on
  (one jump at the halfway mark; ``ramp_fraction`` is not used).

  Args:
    target_sparsity: the sparsity ``s_t`` every cycle ends at, in [0, 1].
    num_cycles: number of cycles (>= 1).
    cycle_steps: optimizer steps per cycle (>= 1).
    initial_sparsity: sparsity at the start of cycles 2, 3, ...; defaults to
      ``0.5 * target_sparsity``. Must not exceed ``target_sparsity``.
    ramp_fraction: fraction of a cycle spent ramping, in (0, 1]; the rest of the
      cycle holds the target (the paper's fine-tuning phase). A traced value is
      clipped into [0, 1], and 0 means the target from the cycle's first step.
    ramp: the shape of the ramp, ``"cubic"`` (default), ``"linear"`` or
      ``"step"``.

  Returns:
    A schedule ``step -> sparsity``.

  Raises:
    ValueError: if an argument is out of range or ``ramp`` is unknown.

  Example:
    >>> import cyclax
    >>> schedule = cyclax.cyclical_sparsity_schedule(0.9, num_cycles=2, cycle_steps=100)
    >>> [round(float(schedule(t)), 4) for t in (0, 80, 99, 100, 180, 500)]
    [0.0, 0.9, 0.9, 0.45, 0.9, 0.9]
    >>> step = cyclax.cyclical_sparsity_schedule(0.9, num_cycles=2, cycle_steps=100, ramp="step")
    >>> [round(float(step(t)), 4) for t in (0, 49, 50, 100, 150, 500)]
    [0.0, 0.0, 0.9, 0.45, 0.9, 0.9]
  """
  _check_ramp(ramp)
  _validation.check_sparsity("target_sparsity", target_sparsity, allow_full=True)
  _validation.check_schedule_length(num_cycles, cycle_steps)
  _validation.check_fraction("ramp_fraction", ramp_fraction)
  initial_sparsity = _cycle_start_sparsity(target_sparsity, initial_sparsity)
  # optax.inject_hyperparams passes every numeric argument as a (possibly traced) array.
  if _is_concrete(num_cycles, cycle_steps, ramp_fraction):
    cycles, steps = int(num_cycles), int(cycle_steps)
    ramp_steps = float(ramp_fraction) * steps
    ramp_exists = True
    ramp_end = int(np.ceil(np.float32(ramp_steps)))  # the first tau with tau / ramp_steps >= 1
  else:
    # Traced values cannot be checked: clip them into range (see the module docstring).
    cycles = jnp.maximum(jnp.asarray(num_cycles, jnp.int32), 1)
    steps = jnp.maximum(jnp.asarray(cycle_steps, jnp.int32), 1)
    fraction = jnp.clip(jnp.asarray(ramp_fraction, jnp.float32), 0.0, 1.0)
    ramp_steps = fraction * steps.astype(jnp.float32)
    ramp_exists = ramp_steps > 0.0
    ramp_end = jnp.ceil(ramp_steps).astype(jnp.int32)
    ramp_steps = jnp.where(ramp_exists, ramp_steps, 1.0)

  def schedule(count: ArrayLike) -> jax.Array:
    count = jnp.maximum(jnp.asarray(count, jnp.int32), 0)
    cycle = count // steps
    tau_int = count - cycle * steps
    tau = tau_int.astype(jnp.float32)
    target = _sparsity_value(target_sparsity)
    # A traced initial_sparsity above the target would make the ramp run downwards: cap it.
    initial = jnp.minimum(_sparsity_value(initial_sparsity), target)
    start = jnp.where(cycle == 0, 0.0, initial)
    if ramp == "step":
      value = _step_ramp(start, target, 2 * tau_int >= steps)
    else:
      progress = tau / ramp_steps
      if ramp_exists is not True:
        progress = jnp.where(ramp_exists, progress, 1.0)
      value = (_cubic_ramp if ramp == "cubic" else _linear_ramp)(start, target, progress)
    return jnp.where(cycle >= cycles, target, value)

  def settles_at(count: ArrayLike) -> jax.Array:
    # Inside each cycle: the ramp's end (or the step's jump). A ramp that fills the whole cycle ends
    # where the next cycle starts, so the last one settles when the schedule starts to hold.
    count = jnp.asarray(count, jnp.int32)
    cycle = count // steps
    tau = count - cycle * steps
    end = (steps + 1) // 2 if ramp == "step" else ramp_end
    inside = (cycle < cycles) & (tau == end) & (end < steps)
    return inside | ((count == cycles * steps) & (end >= steps))

  return _settling(schedule, settles_at)


def periodic(schedule: optax.Schedule, period: int, num_periods: Optional[int] = None) -> optax.Schedule:
  """Restarts ``schedule`` every ``period`` steps.

  Turns any optax schedule into one that begins again with each pruning cycle,
  e.g. a learning rate that resets at every cycle and decays within it, as in
  cyclical pruning.

  Args:
    schedule: any ``step -> value`` function (an optax schedule).
    period: steps per period (>= 1); use the pruning schedule's ``cycle_steps``.
    num_periods: if given, the schedule restarts only this many times in all:
      after ``num_periods * period`` steps the last period simply continues
      (``schedule`` sees ``step - (num_periods - 1) * period``).

  Returns:
    A schedule ``step -> schedule(step mod period)``.

  Raises:
    ValueError: if ``period`` or ``num_periods`` is not a positive integer.

  Example:
    >>> import optax, cyclax
    >>> lr = cyclax.periodic(optax.linear_schedule(1.0, 0.0, transition_steps=10), period=10)
    >>> [float(lr(t)) for t in (0, 5, 10, 15)]
    [1.0, 0.5, 1.0, 0.5]
  """
  if not callable(schedule):
    raise TypeError(f"`schedule` must be callable step -> value, got {type(schedule).__name__}.")
  _validation.check_positive_int("period", period)
  if num_periods is not None:
    _validation.check_positive_int("num_periods", num_periods)
  # Traced values (optax.inject_hyperparams) are clipped to at least 1 instead.
  every = int(period) if _is_concrete(period) else jnp.maximum(jnp.asarray(period, jnp.int32), 1)
  periods = None
  if num_periods is not None:
    periods = (
      int(num_periods) if _is_concrete(num_periods) else jnp.maximum(jnp.asarray(num_periods, jnp.int32), 1)
    )

  def local_count(count: ArrayLike) -> jax.Array:
    count = jnp.maximum(jnp.asarray(count, jnp.int32), 0)
    local = count % every
    if periods is not None:
      last_start = (periods - 1) * every
      local = jnp.where(count >= last_start, count - last_start, local)
    return local

  def periodic_schedule(count: ArrayLike) -> ArrayLike:
    return schedule(local_count(count))

  inner = getattr(schedule, "settles_at", None)
  if inner is None:
    return periodic_schedule
  return _settling(periodic_schedule, lambda count: inner(local_count(count)))
