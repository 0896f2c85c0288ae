"""Mask refresh on shards: which dimension of each leaf is split over a mapped axis.

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
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import optax
from jax import lax

from cyclax import _distribution, _leaves, _select

AxisName = _select.AxisName
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


def resolve_sharded_dims(params: optax.Params, flags: Sequence[bool], sharded_dims: ShardedDims) -> list:
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
  out = []
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


def _whole_shape(layout: Any) -> tuple[int, ...]:
  shape = list(layout.shape)
  if layout.axis is not None:
    shape[layout.dim] *= lax.axis_size(layout.axis)
  return tuple(shape)


def prune_masks(
  candidates: Sequence[jax.Array],
  level: jax.Array,
  leaf_levels: Sequence[Optional[jax.Array]],
  distribution: str,
  axis_name: AxisName,
  dims: Sequence[Optional[int]],
) -> list[jax.Array]:
  """Keep-masks of local blocks, equal to those of the whole leaves.

  Args:
    candidates: the local block of every pruned leaf.
    level: the sparsity (float32 scalar, may be traced).
    leaf_levels: per leaf, None (follow ``distribution``) or its own sparsity.
    distribution: ``"uniform"``, ``"global"`` or ``"erk"``, counted on whole leaves.
    axis_name: the mapped axis the blocks are split over.
    dims: per leaf, the dimension split over ``axis_name``, or None (replicated).

  Returns:
    Bool arrays shaped like ``candidates``, True where kept.
  """
  candidates, dims = list(candidates), list(dims)
  layouts = _select._layouts(candidates, axis_name, dims)
  ks = [None if s is None else _select.num_to_prune(s, lay.size) for s, lay in zip(leaf_levels, layouts)]
  pool = [i for i, s in enumerate(leaf_levels) if s is None]
  if distribution == "global" and pool:
    masks: list[Any] = [None] * len(candidates)
    k_total = _select.num_to_prune_total(level, [layouts[i].size for i in pool])
    pooled = _select.global_prune_masks(
      [candidates[i] for i in pool], k_total, axis_name=axis_name, sharded_dims=[dims[i] for i in pool]
    )
    alone = [i for i in range(len(candidates)) if i not in pool]
    single = _select.prune_masks(
      [candidates[i] for i in alone],
      [ks[i] for i in alone],
      axis_name=axis_name,
      sharded_dims=[dims[i] for i in alone],
    )
    for i, m in list(zip(pool, pooled)) + list(zip(alone, single)):
      masks[i] = m
    return masks
  if distribution == "erk" and pool:
    erk = _distribution.erk_num_to_prune(level, [_whole_shape(layouts[i]) for i in pool])
    for i, k in zip(pool, erk):
      ks[i] = k
  for i in pool:
    if ks[i] is None:
      ks[i] = _select.num_to_prune(level, layouts[i].size)
  return _select.prune_masks(candidates, ks, axis_name=axis_name, sharded_dims=dims)


def total(values: Sequence[jax.Array], axis_name: AxisName, dims: Sequence[Optional[int]]) -> jax.Array:
  """Sum of per-leaf int32 counts over whole leaves: split leaves are summed over the axis."""
  if axis_name is None:
    return sum(values, jnp.zeros([], jnp.int32))
  split = [v for v, d in zip(values, dims) if d is not None]
  whole = [v for v, d in zip(values, dims) if d is None]
  out = sum(whole, jnp.zeros([], jnp.int32))
  if split:
    out = out + lax.psum(sum(split), axis_name)
  return out
