"""From candidates and sparsity levels to keep-masks: the one dispatcher of a refresh.

Every pruned leaf follows the distribution (``"uniform"``, ``"global"`` or
``"erk"``, see :mod:`cyclax._distribution`) at the main sparsity level, unless
it has its own level (an override), in which case it is pruned on its own at
that level and left out of the distribution. An N:M ``pattern`` replaces all of
this by the group kernel of :mod:`cyclax._patterns`. Counts are computed on
whole leaves (:mod:`cyclax._exact`), the masks by :mod:`cyclax._select`; with a
mapped ``axis_name`` the candidates are the local blocks of the leaves
(:mod:`cyclax._layout`) and the masks equal those of the whole leaves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from cyclax import _distribution, _exact, _layout, _patterns, _select, _structured


def _whole_shapes(
  candidates: Sequence[jax.Array],
  axis_name: _layout.AxisName,
  sharded_dims: Optional[Sequence[Optional[int]]],
) -> list[tuple[int, ...]]:
  """The shapes of the whole leaves the candidates are (blocks of)."""
  if axis_name is None:
    return [tuple(c.shape) for c in candidates]
  return [lay.whole_shape for lay in _layout.layouts(candidates, axis_name, sharded_dims)]


def _check_pattern_use(
  pattern: Any, distribution: str, leaf_levels: Sequence[Optional[ArrayLike]], axis_name: Any
) -> None:
  if _structured.is_structured(pattern):
    _structured.check_options(pattern, distribution=distribution)
  elif pattern is not None and (distribution != "uniform" or any(lv is not None for lv in leaf_levels)):
    raise ValueError("an N:M `pattern` works with distribution='uniform' and no per-leaf sparsity only.")
  elif pattern is not None and axis_name is not None:
    raise ValueError("`axis_name` does not work with an N:M `pattern` (groups are local to a shard anyway).")


def select_masks(
  candidates: Sequence[jax.Array],
  level: ArrayLike,
  leaf_levels: Sequence[Optional[ArrayLike]],
  *,
  distribution: str = "uniform",
  pattern: Any = None,
  pattern_axis: int = -2,
  axis_name: _layout.AxisName = None,
  sharded_dims: Optional[Sequence[Optional[int]]] = None,
  names: Optional[Sequence[str]] = None,
) -> list[jax.Array]:
  """Keep-masks of the pruned leaves' candidates at a sparsity level.

  Args:
    candidates: per pruned leaf, the scores ``p + u`` whose ``|.|`` is ranked
      (with ``axis_name``: the local block of the leaf).
    level: the main sparsity (float32 scalar, may be traced).
    leaf_levels: per candidate, None (follow ``distribution`` at ``level``) or
      its own sparsity (may be traced): such a leaf is pruned on its own and
      left out of the distribution.
    distribution: ``"uniform"``, ``"global"`` or ``"erk"``, counted on whole leaves.
    pattern: None, ``(n, m)`` for N:M groups along ``pattern_axis`` (see
      :func:`cyclax.nm_mask`; only with ``"uniform"`` and no own levels), or a
      :class:`cyclax.Block` / :class:`cyclax.Channel`: the candidates are pooled
      into unit scores (:mod:`cyclax._structured`), the same selection runs on
      them, and whole units are kept or pruned.
    pattern_axis: the axis of the N:M groups.
    axis_name: optional mapped axis the candidates are blocks over (inside
      ``shard_map``): counts are summed over it and the masks equal those of
      the whole leaves.
    sharded_dims: with ``axis_name``, per candidate the dimension split over
      it, or None for a candidate replicated over it (default: dimension 0).
    names: per candidate, how errors name its leaf (structured patterns).

  Returns:
    Bool arrays shaped like ``candidates``, True where kept.

  Raises:
    ValueError: for an unknown ``distribution``, a ``pattern`` with another
      distribution, own levels or ``axis_name``, or ``leaf_levels`` of the
      wrong length.

  Example:
    >>> import jax.numpy as jnp
    >>> from cyclax import _masks
    >>> leaves = [jnp.array([1.0, 2.0, 3.0, 4.0]), jnp.array([0.5, 5.0])]
    >>> masks = _masks.select_masks(leaves, 0.5, [None, None], distribution="global")
    >>> [m.tolist() for m in masks]
    [[False, False, True, True], [False, True]]
  """
  _distribution.check_distribution(distribution)
  candidates, leaf_levels = list(candidates), list(leaf_levels)
  if len(leaf_levels) != len(candidates):
    raise ValueError(
      f"`leaf_levels` must have one entry per candidate ({len(candidates)}), got {len(leaf_levels)}."
    )
  _check_pattern_use(pattern, distribution, leaf_levels, axis_name)
  if _structured.is_structured(pattern):
    scores, unit_dims = _structured.pooled(
      candidates, pattern, axis_name=axis_name, sharded_dims=sharded_dims, names=names
    )
    unit_masks = _unstructured(scores, level, leaf_levels, distribution, axis_name, unit_dims)
    return [_structured.expand_unit_mask(m, pattern, c.shape) for m, c in zip(unit_masks, candidates)]
  if pattern is not None:
    return [_patterns.nm_mask(c, level, pattern, pattern_axis) for c in candidates]
  return _unstructured(candidates, level, leaf_levels, distribution, axis_name, sharded_dims)


def _unstructured(
  candidates: list[jax.Array],
  level: ArrayLike,
  leaf_levels: list[Optional[ArrayLike]],
  distribution: str,
  axis_name: _layout.AxisName,
  sharded_dims: Optional[Sequence[Optional[int]]],
) -> list[jax.Array]:
  """Masks keeping the largest ``|c|`` of every candidate, the counts set by the distribution."""
  if not candidates:
    return []
  shapes = _whole_shapes(candidates, axis_name, sharded_dims)
  dims = [0] * len(candidates) if sharded_dims is None else list(sharded_dims)
  select = lambda idx, ks: _select.prune_masks(
    [candidates[i] for i in idx], ks, axis_name=axis_name, sharded_dims=[dims[i] for i in idx]
  )
  levels = [level if lv is None else lv for lv in leaf_levels]
  ks = list(
    _exact.num_to_prune_each(
      jnp.stack([jnp.asarray(v, jnp.float32) for v in levels]), [math.prod(s) for s in shapes]
    )
  )
  followers = [i for i, lv in enumerate(leaf_levels) if lv is None]
  if followers and distribution == "erk":
    for i, k in zip(followers, _distribution.erk_num_to_prune(level, [shapes[i] for i in followers])):
      ks[i] = k
  if not followers or distribution != "global":
    return select(range(len(candidates)), ks)
  k_total = _exact.num_to_prune_total(level, [math.prod(shapes[i]) for i in followers])
  masks = _select.global_prune_masks(
    [candidates[i] for i in followers],
    k_total,
    axis_name=axis_name,
    sharded_dims=[dims[i] for i in followers],
  )
  by_leaf = dict(zip(followers, masks))
  own = [i for i, lv in enumerate(leaf_levels) if lv is not None]
  by_leaf.update(zip(own, select(own, [ks[i] for i in own])))
  return [by_leaf[i] for i in range(len(candidates))]
