"""Argument checks shared by the public constructors.

Checks run on concrete Python or NumPy values only: a traced value (for
example one injected by ``optax.inject_hyperparams``) cannot be inspected, so
the kernels clip it into range instead.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: Any) -> bool:
  """True when ``x`` holds a value that can be read on the host now."""
  if callable(x):
    return False
  try:
    np.asarray(x)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return False
  except TypeError:
    return False
  return True


def check_sparsity(name: str, value: Any, *, allow_full: bool = False) -> None:
  """Raises if a concrete sparsity lies outside [0, 1) (or [0, 1])."""
  if not is_concrete(value):
    return
  arr = np.asarray(value)
  if arr.shape != ():
    raise ValueError(f"`{name}` must be a scalar, got shape {arr.shape}.")
  # jnp.issubdtype also knows bfloat16 and the other ml_dtypes floats.
  if arr.dtype == np.bool_ or not (
    jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)
  ):
    raise TypeError(f"`{name}` must be a real number in [0, 1), got {value!r}.")
  v = float(arr)
  upper_ok = v <= 1.0 if allow_full else v < 1.0
  if not (v >= 0.0 and upper_ok):
    allowed = "[0, 1]" if allow_full else "[0, 1) (pass allow_full_sparsity=True to allow 1.0)"
    raise ValueError(f"`{name}` must lie in {allowed}, got {v!r}.")


def check_positive_int(name: str, value: Any) -> None:
  """Raises if a concrete value is not a positive integer."""
  if not is_concrete(value):
    return
  arr = np.asarray(value)
  if arr.shape != () or not (
    np.issubdtype(arr.dtype, np.integer)
    or (np.issubdtype(arr.dtype, np.floating) and float(arr).is_integer())
  ):
    raise TypeError(f"`{name}` must be a positive integer, got {value!r}.")
  if isinstance(value, bool) or arr.dtype == np.bool_:
    raise TypeError(f"`{name}` must be a positive integer, got {value!r}.")
  if int(arr) <= 0:
    raise ValueError(f"`{name}` must be a positive integer (>= 1), got {int(arr)}.")


def check_fraction(name: str, value: Any) -> None:
  """Raises if a concrete value is outside (0, 1]."""
  if not is_concrete(value):
    return
  arr = np.asarray(value)
  if (
    arr.shape != () or not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating)
  ):
    raise TypeError(f"`{name}` must be a real number in (0, 1], got {value!r}.")
  v = float(arr)
  if not 0.0 < v <= 1.0:
    raise ValueError(f"`{name}` must lie in (0, 1], got {v!r}.")


def require_params(params: Any, transformation: str) -> None:
  """Raises the error for an ``update`` called without the params it needs."""
  if params is None:
    raise ValueError(
      f"cyclax.{transformation} needs the current params: call "
      "`tx.update(updates, state, params)` (params=None was given)."
    )


INT32_MAX = 2**31 - 1


def check_step_count(name: str, value: Any) -> None:
  """Raises unless a concrete ``value`` is a positive integer that fits the int32 step count."""
  check_positive_int(name, value)
  if is_concrete(value) and int(np.asarray(value)) > INT32_MAX:
    raise ValueError(
      f"`{name}` must be at most 2**31 - 1 = {INT32_MAX} (the step count is an int32), got {int(value)}."
    )


def check_refresh_flag(refresh_masks: Any) -> None:
  """Raises unless ``refresh_masks`` is None or a Python bool (it is read at trace time)."""
  if refresh_masks is None or isinstance(refresh_masks, (bool, np.bool_)):
    return
  raise TypeError(
    "`refresh_masks` must be None (refresh on the default cadence), True or False, as a Python bool: it "
    "decides at trace time whether the step refreshes the masks. Compute it on the host, e.g. "
    "`refresh_masks=prune.refresh_due(step)`, and mark it static: "
    f"`jax.jit(train_step, static_argnames='refresh_masks')`. Got {refresh_masks!r}."
  )


def check_schedule_length(num_cycles: Any, cycle_steps: Any) -> None:
  """Raises unless ``num_cycles * cycle_steps`` fits the int32 step count (concrete values only)."""
  check_step_count("cycle_steps", cycle_steps)
  check_positive_int("num_cycles", num_cycles)
  if is_concrete(num_cycles) and is_concrete(cycle_steps):
    total = int(np.asarray(num_cycles)) * int(np.asarray(cycle_steps))
    if total > INT32_MAX:
      raise ValueError(
        f"the schedule must fit the int32 step count: num_cycles * cycle_steps = {total} exceeds "
        f"2**31 - 1 = {INT32_MAX}; the count would saturate before the last cycles ran."
      )
