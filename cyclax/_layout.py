"""Sharding geometry: where each device's block of a leaf lies in the whole leaf.

Under ``jax.jit`` with sharded params nothing here is needed: XLA partitions the
kernel's counting passes and sums the counts across devices. Inside
``jax.shard_map`` (or a ``pmap`` over sharded params) every device sees only its
block of each leaf, so the transformation must be told the mapped axis
(``axis_name``) and, per leaf, the dimension split over it (``sharded_dims``).
The counts are then summed with ``lax.psum``, the number to prune is computed
from the whole leaf's size, and ties are ranked by the row-major index in the
whole leaf: the masks equal those of the unsharded run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from cyclax import _leaves

AxisName = Optional[Union[str, tuple[str, ...]]]
# An int (or None) for every leaf, a pytree of them shaped like (a prefix of) the
# params, or a callable ``(path, leaf) -> int | None``. None: replicated over the axis.
ShardedDims = Union[int, None, Any, Callable[[tuple, Any], Optional[int]]]


def check_axis_name(axis_name: Any) -> None:
  """Raises TypeError unless ``axis_name`` is None, a string or a tuple of strings."""
  ok = axis_name is None or isinstance(axis_name, str)
  ok = ok or (isinstance(axis_name, tuple) and axis_name and all(isinstance(a, str) for a in axis_name))
  if not ok:
    raise TypeError(
      f"`axis_name` must be None, a mesh axis name (str) or a tuple of them, got {axis_name!r}."
    )


def resolve_sharded_dims(
  params: optax.Params, flags: Sequence[bool], sharded_dims: ShardedDims
) -> list[Optional[int]]:
  """Per leaf of ``params`` (flatten order), the split dimension (``>= 0``) or None.

  Leaves that are not pruned (``flags[i]`` False) get None.

  Raises:
    ValueError: if a pruned leaf's dimension is out of range, a value is not an
      int or None, or a tree of dims does not match the params.
  """
  with_path = jax.tree_util.tree_flatten_with_path(params)[0]
  if sharded_dims is None or isinstance(sharded_dims, int):
    dims = [sharded_dims] * len(with_path)
  elif callable(sharded_dims):
    dims = [sharded_dims(path, leaf) for path, leaf in with_path]
  else:
    dims = _leaves.broadcast_prefix(
      sharded_dims, params, "sharded_dims", "an int, None or a callable (path, leaf) -> int | None"
    )
  out: list[Optional[int]] = []
  for flag, d, (path, leaf) in zip(flags, dims, with_path):
    if not flag or d is None:
      out.append(None)
      continue
    ndim = len(leaf.shape)
    if isinstance(d, bool) or not isinstance(d, int) or not -ndim <= d < ndim:
      raise ValueError(
        f"`sharded_dims` for leaf '{_leaves.path_str(path)}' of shape {tuple(leaf.shape)} must be None "
        f"or a dimension in [-{ndim}, {ndim}), got {d!r}."
      )
    out.append(d % ndim)
  return out


class Layout(NamedTuple):
  """Where a leaf's local block lies in the whole leaf.

  Without a mapped axis the block is the whole leaf. Inside ``shard_map`` (or
  ``pmap``) a leaf split along ``dim`` over the mapped ``axis`` holds block
  ``axis_index(axis)`` of that dimension; its counts are summed over ``axis``
  and ties are ranked by the row-major index in the whole leaf.
  """

  shape: tuple[int, ...]
  axis: AxisName = None
  dim: int = 0

  @property
  def whole_shape(self) -> tuple[int, ...]:
    """The shape of the whole leaf."""
    whole = list(self.shape)
    if self.axis is not None:
      whole[self.dim] *= lax.axis_size(self.axis)
    return tuple(whole)

  @property
  def size(self) -> int:
    """Entries in the whole leaf."""
    return int(np.prod(self.whole_shape, dtype=np.int64))

  def _coords(self) -> list[jax.Array]:
    """Per dimension, every local entry's coordinate in the whole leaf."""
    coords = [lax.broadcasted_iota(jnp.int32, self.shape, d) for d in range(len(self.shape))]
    if self.axis is not None:
      offset = lax.axis_index(self.axis).astype(jnp.int32) * self.shape[self.dim]
      coords[self.dim] = coords[self.dim] + offset
    return coords

  def row_major_index(self) -> jax.Array:
    """Row-major position of every local entry in the whole leaf, from iotas."""
    whole, coords = self.whole_shape, self._coords()
    index = jnp.zeros(self.shape, jnp.int32)
    stride = 1
    for d in reversed(range(len(self.shape))):
      index = index + coords[d] * stride
      stride *= whole[d]
    return index

  def before(self, j: jax.Array) -> jax.Array:
    """``row_major_index() < j`` for a scalar ``0 <= j <= size``, compared digit by digit.

    The index itself is never formed: inside a loop it would be loop-invariant
    and XLA would hoist it into a leaf-sized int32 array.
    """
    whole, coords = self.whole_shape, self._coords()
    j = jnp.asarray(j, jnp.int32)
    strides = [int(np.prod(whole[d + 1 :], dtype=np.int64)) for d in range(len(whole))]
    less = j > 0 if not whole else jnp.zeros(self.shape, jnp.bool_)
    for d in reversed(range(len(whole))):
      digit = j // strides[d] if d == 0 else (j // strides[d]) % whole[d]
      less = jnp.logical_or(coords[d] < digit, jnp.logical_and(coords[d] == digit, less))
    return less


def layouts(
  scores: Sequence[jax.Array], axis_name: AxisName, sharded_dims: Optional[Sequence[Optional[int]]]
) -> list[Layout]:
  """Per score, its :class:`Layout`: split along ``sharded_dims[i]`` (default 0), or replicated if None.

  Raises:
    ValueError: if ``sharded_dims`` has the wrong length or names a dimension a score does not have.
  """
  if axis_name is None:
    return [Layout(tuple(s.shape)) for s in scores]
  dims = [0] * len(scores) if sharded_dims is None else list(sharded_dims)
  if len(dims) != len(scores):
    raise ValueError(f"`sharded_dims` must have one entry per score ({len(scores)}), got {len(dims)}.")
  out = []
  for s, d in zip(scores, dims):
    if d is None:
      out.append(Layout(tuple(s.shape)))
    elif isinstance(d, (int, np.integer)) and -s.ndim <= d < s.ndim:
      out.append(Layout(tuple(s.shape), axis_name, int(d) % s.ndim))
    else:
      raise ValueError(
        f"`sharded_dims` entries must be None or a dimension of the score ({s.shape}), got {d!r}."
      )
  return out
