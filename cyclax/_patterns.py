"""N:M structured sparsity: in every group of M consecutive weights keep N.

Groups run along one axis of a leaf (by default axis -2, the input dimension of
a Flax ``Dense`` kernel shaped ``(in, out)``), which is the 2:4 layout that
sparse tensor cores accelerate. While the sparsity schedule ramps up, every
group keeps ``M - k`` entries with ``k = num_to_prune(s, M)`` (the rounding rule
of :func:`cyclax.num_to_prune`) but never fewer than ``N``, so a schedule whose
target is ``1 - N / M`` reaches exactly N:M.

Inside a group, entries are ranked by ``|w|`` like the unstructured kernel: ties
are pruned lowest index first along the axis, and NaN ranks above +inf. Groups
are small, so the rank of every entry is counted with ``M`` comparisons instead
of a sort.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from cyclax import _exact, _keys, _validation


def check_pattern(pattern: Sequence[int]) -> tuple[int, int]:
  """Validates an ``(n, m)`` pattern and returns it as Python ints.

  Raises:
    TypeError: if ``pattern`` is not a pair of integers.
    ValueError: unless ``1 <= n <= m``.
  """
  try:
    n, m = pattern
  except (TypeError, ValueError):
    raise TypeError(f"`pattern` must be a pair (n, m) of integers such as (2, 4), got {pattern!r}.") from None
  for name, v in (("n", n), ("m", m)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
      raise TypeError(f"`pattern` must be a pair (n, m) of integers, got {name}={v!r}.")
  n, m = int(n), int(m)
  if not 1 <= n <= m:
    raise ValueError(f"`pattern` (n, m) must satisfy 1 <= n <= m (keep n of every m), got ({n}, {m}).")
  return n, m


def check_axis_arg(axis: Any) -> int:
  """Validates ``pattern_axis``: None gives -2 (a Flax kernel's input dimension).

  Raises:
    TypeError: unless ``axis`` is None or a Python int (it must be static).
  """
  if axis is None:
    return -2
  if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
    raise TypeError(
      f"`pattern_axis` must be a Python int or None, got {axis!r}; under optax.inject_hyperparams "
      "pass static_args=('pattern_axis',)."
    )
  return int(axis)


def check_pattern_sparsity(name: str, value: Any, pattern: tuple[int, int]) -> None:
  """Raises if a concrete sparsity exceeds what an ``(n, m)`` pattern allows.

  Raises:
    ValueError: if ``value > 1 - n / m`` (the pattern would silently cap it).
  """
  if not _validation.is_concrete(value):
    return
  n, m = pattern
  if float(np.asarray(value)) * m > (m - n) + 1e-6:
    raise ValueError(
      f"`{name}`={float(np.asarray(value))!r} prunes more than the {n}:{m} pattern allows; it must be "
      f"at most 1 - n / m = {1 - n / m!r} (use exactly that value to end at {n}:{m})."
    )


def check_pattern_axis(shape: Sequence[int], pattern: Sequence[int], axis: int, name: str = "leaf") -> int:
  """Validates that ``shape[axis]`` splits into groups of ``m``; returns the axis as a non-negative int.

  Raises:
    ValueError: if the leaf has no such axis or its length is not a multiple of ``m``.
  """
  _, m = check_pattern(pattern)
  ndim = len(shape)
  if not -ndim <= axis < ndim:
    raise ValueError(
      f"`pattern_axis`={axis} is out of range for {name} of shape {tuple(shape)}; pick an axis in "
      f"[-{ndim}, {ndim}) or exclude the leaf with `filter`."
    )
  axis = axis % ndim
  if shape[axis] % m:
    raise ValueError(
      f"N:M pattern with m={m} needs the length of axis {axis} of {name} (shape {tuple(shape)}) to be a "
      f"multiple of {m}, got {shape[axis]}; change `pattern_axis` or exclude the leaf with `filter`."
    )
  return axis


def num_kept_per_group(sparsity: ArrayLike, pattern: Sequence[int]) -> jax.Array:
  """Entries kept in every group of ``m``: ``max(n, m - num_to_prune(sparsity, m))`` (int32)."""
  n, m = check_pattern(pattern)
  return jnp.maximum(m - _exact.num_to_prune(sparsity, m), n)


def nm_mask(x: jax.Array, sparsity: ArrayLike, pattern: Sequence[int], axis: int = -2) -> jax.Array:
  """Keep-mask of ``x`` that keeps the largest ``|x|`` in every group of ``m`` along ``axis``.

  Args:
    x: a floating-point array whose length along ``axis`` is a multiple of ``m``.
    sparsity: scalar sparsity (may be traced); every group keeps
      ``max(n, m - num_to_prune(sparsity, m))`` entries.
    pattern: ``(n, m)``, e.g. ``(2, 4)``.
    axis: the axis along which consecutive entries form groups.

  Returns:
    A bool array shaped like ``x``, True where an entry is kept.

  Raises:
    ValueError: if the pattern is invalid or ``x.shape[axis]`` is not a multiple of ``m``.

  Example:
    >>> import jax.numpy as jnp, cyclax
    >>> x = jnp.array([[0.1, -3.0, 0.2, 1.0, 5.0, 0.0, -0.5, 0.4]])
    >>> cyclax.nm_mask(x, 0.5, (2, 4), axis=-1).astype(int).tolist()
    [[0, 1, 0, 1, 1, 0, 1, 0]]
  """
  n, m = check_pattern(pattern)
  axis = check_pattern_axis(x.shape, (n, m), axis, name="x")
  keep = num_kept_per_group(sparsity, (n, m))
  shape = x.shape
  grouped = shape[:axis] + (shape[axis] // m, m) + shape[axis + 1 :]
  keys = _keys.score_bits(x).reshape(grouped)
  inner = axis + 1
  position = lax.broadcasted_iota(jnp.int32, grouped, inner)
  # Rank inside the group: entries that sort before this one (smaller |x|, or equal at a lower index).
  rank = jnp.zeros(grouped, jnp.int32)
  for j in range(m):
    other = lax.slice_in_dim(keys, j, j + 1, axis=inner)
    before = jnp.logical_or(other < keys, jnp.logical_and(other == keys, j < position))
    rank = rank + before.astype(jnp.int32)
  return (rank >= m - keep).reshape(shape)
