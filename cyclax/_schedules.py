"""Sparsity schedules: plain, jit-safe ``step -> value`` functions.

Every schedule here is an ``optax.Schedule``: it takes the step count (a Python
int or a traced integer array) and returns a float32 scalar. They can be passed
to :func:`cyclax.magnitude_prune` as ``sparsity`` or used anywhere optax takes a
schedule.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from cyclax import _validation


def _cubic_ramp(start: jax.Array, end: jax.Array, progress: jax.Array) -> jax.Array:
  """Zhu & Gupta's cubic: ``end + (start - end) * (1 - progress)**3``."""
  progress = jnp.clip(progress, 0.0, 1.0)
  return end + (start - end) * (1.0 - progress) ** 3


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
    return jnp.asarray(sparsity, jnp.float32)

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
  if int(prune_step) < 0:
    raise ValueError(f"`prune_step` must be >= 0, got {prune_step}.")

  def schedule(count: ArrayLike) -> jax.Array:
    target = jnp.asarray(target_sparsity, jnp.float32)
    return jnp.where(jnp.asarray(count) >= prune_step, target, jnp.zeros_like(target))

  return schedule


def gradual_sparsity_schedule(
  target_sparsity: ArrayLike,
  begin_step: int,
  end_step: int,
  initial_sparsity: ArrayLike = 0.0,
) -> optax.Schedule:
  r"""Gradual magnitude pruning's cubic ramp (Zhu & Gupta, 2017).

  .. math::
    s(t) = s_f + (s_i - s_f) \left(1 - \frac{t - t_0}{t_1 - t_0}\right)^3

  for ``begin_step <= t <= end_step``, ``s_i`` before and ``s_f`` after.

  Args:
    target_sparsity: final sparsity ``s_f`` in [0, 1].
    begin_step: first step of the ramp ``t_0`` (>= 0).
    end_step: step ``t_1 > t_0`` at which ``s_f`` is reached.
    initial_sparsity: sparsity ``s_i`` at and before ``begin_step``.

  Returns:
    A schedule ``step -> sparsity``.

  Raises:
    ValueError: if an argument is out of range.

  Example:
    >>> import cyclax
    >>> schedule = cyclax.gradual_sparsity_schedule(0.8, begin_step=0, end_step=100)
    >>> [round(float(schedule(t)), 4) for t in (0, 50, 100, 200)]
    [0.0, 0.7, 0.8, 0.8]
  """
  _validation.check_sparsity("target_sparsity", target_sparsity, allow_full=True)
  _validation.check_sparsity("initial_sparsity", initial_sparsity, allow_full=True)
  if int(begin_step) < 0:
    raise ValueError(f"`begin_step` must be >= 0, got {begin_step}.")
  if int(end_step) <= int(begin_step):
    raise ValueError(f"`end_step` must be > `begin_step` ({begin_step}), got {end_step}.")
  length = float(end_step - begin_step)

  def schedule(count: ArrayLike) -> jax.Array:
    progress = (jnp.asarray(count, jnp.float32) - begin_step) / length
    return _cubic_ramp(
      jnp.asarray(initial_sparsity, jnp.float32), jnp.asarray(target_sparsity, jnp.float32), progress
    )

  return schedule


def cyclical_sparsity_schedule(
  target_sparsity: ArrayLike,
  *,
  num_cycles: int,
  cycle_steps: int,
  initial_sparsity: Optional[ArrayLike] = None,
  ramp_fraction: float = 0.8,
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

  Args:
    target_sparsity: the sparsity ``s_t`` every cycle ends at, in [0, 1].
    num_cycles: number of cycles (>= 1).
    cycle_steps: optimizer steps per cycle (>= 1).
    initial_sparsity: sparsity at the start of cycles 2, 3, ...; defaults to
      ``0.5 * target_sparsity``. Must not exceed ``target_sparsity``.
    ramp_fraction: fraction of a cycle spent ramping, in (0, 1]; the rest of the
      cycle holds the target (the paper's fine-tuning phase).

  Returns:
    A schedule ``step -> sparsity``.

  Raises:
    ValueError: if an argument is out of range.

  Example:
    >>> import cyclax
    >>> schedule = cyclax.cyclical_sparsity_schedule(0.9, num_cycles=2, cycle_steps=100)
    >>> [round(float(schedule(t)), 4) for t in (0, 80, 99, 100, 180, 500)]
    [0.0, 0.9, 0.9, 0.45, 0.9, 0.9]
  """
  _validation.check_sparsity("target_sparsity", target_sparsity, allow_full=True)
  _validation.check_positive_int("num_cycles", num_cycles)
  _validation.check_positive_int("cycle_steps", cycle_steps)
  _validation.check_fraction("ramp_fraction", ramp_fraction)
  if initial_sparsity is None:
    initial_sparsity = 0.5 * jnp.asarray(target_sparsity, jnp.float32)
  else:
    _validation.check_sparsity("initial_sparsity", initial_sparsity, allow_full=True)
    if _validation.is_concrete(initial_sparsity) and _validation.is_concrete(target_sparsity):
      if float(initial_sparsity) > float(target_sparsity):
        raise ValueError(
          f"`initial_sparsity` ({float(initial_sparsity)}) must not exceed "
          f"`target_sparsity` ({float(target_sparsity)})."
        )
  # optax.inject_hyperparams passes every numeric argument as a (possibly traced) array.
  if all(_validation.is_concrete(x) for x in (num_cycles, cycle_steps, ramp_fraction)):
    num_cycles, cycle_steps = int(num_cycles), int(cycle_steps)
    ramp_steps = float(ramp_fraction) * cycle_steps
  else:
    num_cycles = jnp.asarray(num_cycles, jnp.int32)
    cycle_steps = jnp.asarray(cycle_steps, jnp.int32)
    ramp_steps = jnp.asarray(ramp_fraction, jnp.float32) * cycle_steps.astype(jnp.float32)

  def schedule(count: ArrayLike) -> jax.Array:
    count = jnp.maximum(jnp.asarray(count, jnp.int32), 0)
    cycle = count // cycle_steps
    tau = (count - cycle * cycle_steps).astype(jnp.float32)
    target = jnp.asarray(target_sparsity, jnp.float32)
    start = jnp.where(cycle == 0, 0.0, jnp.asarray(initial_sparsity, jnp.float32))
    value = _cubic_ramp(start, target, tau / ramp_steps)
    return jnp.where(cycle >= num_cycles, target, value)

  return schedule


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
  period = int(period)

  def periodic_schedule(count: ArrayLike) -> jax.Array:
    count = jnp.maximum(jnp.asarray(count, jnp.int32), 0)
    local = count % period
    if num_periods is not None:
      last_start = (int(num_periods) - 1) * period
      local = jnp.where(count >= last_start, count - last_start, local)
    return schedule(local)

  return periodic_schedule
