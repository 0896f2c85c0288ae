"""Argument checks shared by the public constructors.

Checks run on concrete Python or NumPy values only: a traced value (for
example one injected by ``optax.inject_hyperparams``) cannot be inspected, so
the kernels clip it into range instead.
"""

from __future__ import annotations

from typing import Any

import jax
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
  if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
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


def check_fraction(name: str, value: Any, *, low_open: bool = True) -> None:
  """Raises if a concrete value is outside (0, 1] (or [0, 1])."""
  if not is_concrete(value):
    return
  allowed = "(0, 1]" if low_open else "[0, 1]"
  arr = np.asarray(value)
  if (
    arr.shape != () or not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating)
  ):
    raise TypeError(f"`{name}` must be a real number in {allowed}, got {value!r}.")
  v = float(arr)
  ok = (0.0 < v <= 1.0) if low_open else (0.0 <= v <= 1.0)
  if not ok:
    raise ValueError(f"`{name}` must lie in {allowed}, got {v!r}.")


def require_params(params: Any, transformation: str) -> None:
  """Raises the error for an ``update`` called without the params it needs."""
  if params is None:
    raise ValueError(
      f"cyclax.{transformation} needs the current params: call "
      "`tx.update(updates, state, params)` (params=None was given)."
    )
