"""The arguments of a pruning transformation, checked once.

:func:`make_config` validates every argument of :func:`cyclax.magnitude_prune`
when the transformation is built and returns a frozen :class:`PruneConfig`.
Everything that needs the params (which leaves are pruned, their overrides and
split dimensions) is resolved per params tree by :func:`make_plan`, at ``init``
and again, at trace time only, in ``update``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Optional

import jax
import numpy as np
import optax

from cyclax import _distribution, _layout, _leaves, _patterns, _structured, _validation

# Every count is an int32 scalar and every leaf size must fit in one.
MAX_LEAF_SIZE = _validation.INT32_MAX


@dataclasses.dataclass(frozen=True)
class PruneConfig:
  """The validated arguments of :func:`cyclax.magnitude_prune` (see its docstring)."""

  sparsity: optax.ScalarOrSchedule
  update_every: Any  # a Python int >= 1, or a traced int32 from optax.inject_hyperparams
  filter: Optional[_leaves.Filter]
  allow_full_sparsity: bool
  pattern: Any  # None, an (n, m) pair of ints, or a structured pattern (Block, Channel)
  pattern_axis: int  # the N:M group axis
  track_regrowth: bool
  distribution: str
  overrides: Optional[_distribution.Overrides]
  packed_masks: bool
  axis_name: _layout.AxisName
  sharded_dims: _layout.ShardedDims

  @property
  def refreshes_every_step(self) -> bool:
    """True when ``update_every`` is the Python int 1: every step refreshes, no cadence is traced."""
    return isinstance(self.update_every, int) and self.update_every == 1


def _check_bool(name: str, value: Any) -> None:
  if not isinstance(value, (bool, np.bool_)):
    hint = " (under optax.inject_hyperparams, list it in `static_args`)" if hasattr(value, "shape") else ""
    raise TypeError(f"`{name}` must be True or False{hint}, got {value!r}.")


def make_config(sparsity: optax.ScalarOrSchedule, options: Mapping[str, Any]) -> PruneConfig:
  """Validates the arguments of :func:`cyclax.magnitude_prune` (raises what it documents).

  Args:
    sparsity: its ``sparsity``.
    options: every one of its keyword arguments, by name.
  """
  flags = {name: options[name] for name in ("allow_full_sparsity", "track_regrowth", "packed_masks")}
  for name, value in flags.items():
    _check_bool(name, value)
  allow_full = bool(flags["allow_full_sparsity"])
  if callable(sparsity):
    pass
  elif sparsity is None:
    raise TypeError("`sparsity` must be a number in [0, 1) or a schedule step -> sparsity, got None.")
  else:
    _validation.check_sparsity("sparsity", sparsity, allow_full=allow_full)
  # Any positive integer: an update_every past 2**31 - 1 never comes round again after step 0.
  _validation.check_positive_int("update_every", options["update_every"])
  _distribution.check_distribution(options["distribution"])
  _distribution.check_overrides(options["overrides"], allow_full=allow_full)
  _layout.check_axis_name(options["axis_name"])
  pattern, pattern_axis = _check_pattern(
    options["pattern"],
    options["pattern_axis"],
    sparsity,
    options["distribution"],
    options["overrides"],
    options["axis_name"],
  )
  checked = {name: bool(value) for name, value in flags.items()}
  return PruneConfig(
    sparsity=sparsity, **{**options, **checked, "pattern": pattern, "pattern_axis": pattern_axis}
  )


def _check_pattern(
  pattern: Any,
  pattern_axis: Any,
  sparsity: optax.ScalarOrSchedule,
  distribution: str,
  overrides: Any,
  axis_name: _layout.AxisName,
) -> tuple[Any, int]:
  """Validates ``pattern`` with the options it does not combine with; returns it and the N:M axis."""
  if pattern is None:
    return None, -2
  if _structured.is_structured(pattern):
    if pattern_axis is not None:
      raise ValueError(
        "`pattern_axis` is for N:M patterns; a Block tiles the trailing dimensions and a Channel names "
        f"its own axis, got pattern_axis={pattern_axis!r} with pattern={pattern!r}."
      )
    pattern = _structured.check_pattern(pattern)
    _structured.check_options(pattern, distribution=distribution)
    return pattern, -2
  pattern = _patterns.check_pattern(pattern)
  pattern_axis = _patterns.check_axis_arg(pattern_axis)
  if not callable(sparsity):
    _patterns.check_pattern_sparsity("sparsity", sparsity, pattern)
  if distribution != "uniform" or overrides is not None:
    raise ValueError("`pattern` works with distribution='uniform' and overrides=None only.")
  if axis_name is not None:
    raise ValueError("`axis_name` does not work with `pattern` (N:M groups are local to a shard anyway).")
  return pattern, pattern_axis


class Plan(NamedTuple):
  """What a config means for one params tree: static, resolved at trace time.

  Attributes:
    treedef: the params' tree structure.
    pruned: flatten-order indices of the pruned leaves.
    names: the pruned leaves' paths (``a/b/kernel``).
    overrides: per pruned leaf, None or its own sparsity (a number or a schedule).
    dims: per pruned leaf, the dimension split over ``axis_name`` (None: replicated);
      None without ``axis_name``.
  """

  treedef: Any
  pruned: tuple[int, ...]
  names: tuple[str, ...]
  overrides: tuple[Any, ...]
  dims: Optional[tuple[Optional[int], ...]]


def _check_pattern_fits(config: PruneConfig, shape: Sequence[int], name: str) -> None:
  """Raises unless ``config.pattern`` fits the pruned leaf ``name`` of this shape."""
  if _structured.is_structured(config.pattern):
    _structured.check_structure(config.pattern, shape, f"leaf '{name}'")
  elif config.pattern is not None:
    _patterns.check_pattern_axis(shape, config.pattern, config.pattern_axis, name=f"leaf '{name}'")


def make_plan(config: PruneConfig, params: optax.Params) -> Plan:
  """Resolves the filter, overrides and split dimensions for ``params``.

  Raises:
    ValueError: for a pruned leaf of ``2**31`` or more entries, a leaf the
      pattern does not fit, an ``overrides`` key that names no pruned leaf, or
      ``sharded_dims`` that do not fit the leaves (each naming the leaf).
    TypeError: if the filter selects a non-floating-point leaf.
  """
  with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  if not any(_leaves.is_array_like(leaf) for _, leaf in with_path):
    # No arrays (optax.tree_map_params inits with a placeholder): nothing to prune or check.
    return Plan(treedef, (), (), (), None if config.axis_name is None else ())
  flags = _leaves.select_leaves(params, config.filter)
  pruned = tuple(i for i, f in enumerate(flags) if f)
  names = tuple(_leaves.path_str(with_path[i][0]) for i in pruned)
  for i, name in zip(pruned, names):
    leaf = with_path[i][1]
    size = int(np.prod(leaf.shape, dtype=np.int64))
    if size > MAX_LEAF_SIZE:
      raise ValueError(
        f"leaf '{name}' of shape {tuple(leaf.shape)} has {size} entries; cyclax counts in int32 and "
        f"prunes leaves of at most 2**31 - 1 entries. Split the leaf or exclude it with `filter`."
      )
    _check_pattern_fits(config, leaf.shape, name)
  leaf_overrides = _distribution.resolve_overrides(
    params, flags, config.overrides, allow_full=config.allow_full_sparsity
  )
  dims = None
  if config.axis_name is not None:
    all_dims = _layout.resolve_sharded_dims(params, flags, config.sharded_dims)
    dims = tuple(all_dims[i] for i in pruned)
  return Plan(
    treedef=treedef,
    pruned=pruned,
    names=names,
    overrides=tuple(leaf_overrides[i] for i in pruned),
    dims=dims,
  )
