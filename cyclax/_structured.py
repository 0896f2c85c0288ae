"""Structured sparsity: prune whole blocks or whole channels by their pooled magnitude.

A structured pattern groups the entries of a leaf into units and prunes whole
units, on the same exact rules as the unstructured kernel:

- :class:`Block` ``(shape)``: the trailing dimensions of a leaf are tiled by
  blocks of ``shape``; leading dimensions not covered by ``shape`` count as
  blocks of size 1. A block's score is the mean ``|x|`` of its entries.
- :class:`Channel` ``(axis)``: every index along ``axis`` is a unit (for a Flax
  ``Dense`` kernel ``(in, out)`` and ``axis=-1``, an output unit; for a Conv
  kernel ``(h, w, in, out)``, an output filter). A channel's score is the L2
  norm of its entries.

Each pruned leaf loses exactly ``num_to_prune(s, number_of_units)`` whole units
(the rounding rule of :func:`cyclax.num_to_prune`); ties go to the lower unit
index in row-major order of the unit grid; a unit holding a NaN has a NaN score,
which ranks above +inf, so it is kept, like a NaN entry in the unstructured
kernel. The selection is the sort-free kernel of the unstructured case, run on
the pooled scores, and the unit mask is broadcast back to the leaf.

How the scores are computed (and what the selection ranks):

- float16, bfloat16 and float32 leaves are pooled in float32, float64 leaves in
  float64 (needs ``jax_enable_x64``);
- a block is ranked by the SUM of ``|x|`` over it and a channel by the SUM of
  ``x**2`` over it. All blocks of a pattern have the same number of entries and
  the square root is increasing, so these rank units exactly like the mean and
  the L2 norm, without the rounding of a division or a square root (which can
  turn two different sums into equal scores). Sums of small integers are
  therefore exact, in any summation order.
- the order in which a device adds the entries is its own, so the last bit of a
  score (and hence the ranking of two units that differ only in that bit) may
  differ from another backend's; a squared norm beyond the float range is +inf.

Distributions: ``"uniform"`` (every leaf at the level ``s``) and per-leaf
overrides work with both patterns. ``"global"`` works with :class:`Block`: every
block of every leaf has ``prod(shape)`` entries, so one threshold on the block
means over all leaves prunes exactly ``num_to_prune(s, total_blocks)`` blocks, which is
the fraction ``s`` of the weights, exactly as the unstructured global rule does
per entry. It is rejected for :class:`Channel`: channels of different leaves have
different numbers of entries (fan-in), so neither their norms nor their counts
are comparable across leaves. ``"erk"`` is rejected for both.

Sharding: under ``jit`` with sharded params (and ``pmap`` with replicated ones)
nothing is needed. Inside ``shard_map`` with ``axis_name``, a leaf split along
its channel axis, or along a dimension where every shard holds whole blocks, is
selected like an unstructured sharded leaf (counts summed over the axis, ties by
the unit index in the whole leaf); a channel whose entries are split over the
shards gets its partial sums of squares added with ``lax.psum``. A block split
across shards is rejected with an error naming the leaf.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Optional, TypeGuard, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cyclax import _layout

AxisName = _layout.AxisName


class Block(NamedTuple):
  """Prune whole blocks of ``shape`` tiling the trailing dimensions of every pruned leaf.

  A block's score is the mean ``|w|`` of its entries; each pruned leaf loses
  exactly ``num_to_prune(s, number_of_blocks)`` whole blocks, ties to the lower
  block index in row-major order. The leaf's last ``len(shape)`` dimensions must
  be multiples of ``shape``; dimensions in front of them are cut into blocks of
  size 1. ``Block(4)`` is ``Block((4,))``.

  Attributes:
    shape: the block shape, a tuple of positive Python ints.

  Example:
    >>> import jax.numpy as jnp, cyclax
    >>> w = jnp.arange(1.0, 17.0).reshape(4, 4)  # blocks (2, 2) have means 3.5, 5.5, 11.5, 13.5
    >>> tx = cyclax.magnitude_prune(0.5, update_every=1, pattern=cyclax.Block((2, 2)))
    >>> _, state = tx.update({"w": jnp.zeros((4, 4))}, tx.init({"w": w}), {"w": w})
    >>> state.masks["w"].astype(int).tolist()
    [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
  """

  shape: tuple[int, ...]


class Channel(NamedTuple):
  """Prune whole channels: the slices of every pruned leaf at one index along ``axis``.

  With ``axis=-1`` (default) a channel of a Flax ``Dense`` kernel ``(in, out)``
  is an output unit and of a ``Conv`` kernel ``(..., in, out)`` an output
  filter. A channel's score is the L2 norm of its entries; each pruned leaf
  loses exactly ``num_to_prune(s, number_of_channels)`` whole channels, ties to
  the lower channel index. :func:`cyclax.shrink_dense_stack` then removes them.

  Attributes:
    axis: the channel axis, a Python int (negative counts from the end).

  Example:
    >>> import jax.numpy as jnp, cyclax
    >>> w = jnp.array([[1.0, -3.0, 0.5], [1.0, 0.0, -0.5]])  # column norms: 1.41, 3, 0.71
    >>> tx = cyclax.magnitude_prune(0.34, update_every=1, pattern=cyclax.Channel(-1))
    >>> _, state = tx.update({"w": jnp.zeros((2, 3))}, tx.init({"w": w}), {"w": w})
    >>> state.masks["w"].astype(int).tolist()
    [[1, 1, 0], [1, 1, 0]]
  """

  axis: int = -1


Structure = Union[Block, Channel]


def is_structured(pattern: Any) -> TypeGuard[Structure]:
  """True for a :class:`Block` or :class:`Channel` pattern (an ``(n, m)`` pair is N:M)."""
  return isinstance(pattern, (Block, Channel))


def _is_int(v: Any) -> TypeGuard[Union[int, np.integer]]:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_pattern(pattern: Structure) -> Structure:
  """Validates a :class:`Block` or :class:`Channel` and returns it with Python ints.

  Raises:
    TypeError: if ``pattern`` is neither, or its fields are not Python ints.
    ValueError: if a block dimension is not positive or the block shape is empty.
  """
  if isinstance(pattern, Channel):
    if not _is_int(pattern.axis):
      raise TypeError(f"`pattern` Channel(axis) needs a Python int axis such as -1, got {pattern.axis!r}.")
    return Channel(int(pattern.axis))
  if isinstance(pattern, Block):
    shape = pattern.shape
    if _is_int(shape):
      shape = (shape,)
    if not isinstance(shape, (tuple, list)) or not all(_is_int(b) for b in shape):
      raise TypeError(
        f"`pattern` Block(shape) needs a tuple of Python ints such as (4, 4), got {pattern.shape!r}."
      )
    if not shape or any(int(b) < 1 for b in shape):
      raise ValueError(
        "`pattern` Block(shape) needs a non-empty tuple of positive ints such as (4, 4), "
        f"got {pattern.shape!r}."
      )
    return Block(tuple(int(b) for b in shape))
  raise TypeError(f"`pattern` must be cyclax.Block(shape), cyclax.Channel(axis) or (n, m), got {pattern!r}.")


def check_options(pattern: Structure, *, distribution: str = "uniform") -> None:
  """Raises at construction for a distribution a structured pattern does not support.

  (``axis_name`` works with both patterns; the leaf-dependent limits are checked
  when the masks are computed.)

  Raises:
    ValueError: for ``distribution="erk"``, or ``"global"`` with :class:`Channel`.
  """
  pattern = check_pattern(pattern)
  if distribution == "erk":
    raise ValueError(
      f"`distribution`='erk' does not work with pattern={pattern!r}: ERK sets per-leaf weight densities, "
      "which a whole number of units cannot meet exactly; use 'uniform' (or 'global' with Block) and "
      "`overrides` for per-leaf levels."
    )
  if distribution == "global" and isinstance(pattern, Channel):
    raise ValueError(
      "`distribution`='global' does not work with Channel: channels of different leaves hold different "
      "numbers of weights (fan-in), so their norms and their counts are not comparable across leaves; "
      "use 'uniform' and `overrides` for per-leaf levels (Block works with 'global')."
    )


def check_structure(pattern: Structure, shape: Sequence[int], name: str = "leaf") -> None:
  """Raises unless a leaf of ``shape`` can take ``pattern`` (call at ``init`` for every pruned leaf).

  Args:
    pattern: a :class:`Block` or :class:`Channel`.
    shape: the leaf's (whole, unsharded) shape.
    name: how errors name the leaf, e.g. ``"leaf 'dense/kernel'"``.

  Raises:
    ValueError: for a block of higher rank than the leaf, trailing dimensions
      that are not multiples of the block, or a channel axis out of range.
  """
  pattern = check_pattern(pattern)
  shape = tuple(int(d) for d in shape)
  ndim = len(shape)
  if isinstance(pattern, Channel):
    if not -ndim <= pattern.axis < ndim:
      raise ValueError(
        f"Channel axis {pattern.axis} is out of range for {name} of shape {shape}; pick an axis in "
        f"[-{ndim}, {ndim}) or exclude the leaf with `filter`."
      )
    return
  block = pattern.shape
  if len(block) > ndim:
    raise ValueError(
      f"Block shape {block} has more dimensions than {name} of shape {shape}; use a block of rank at most "
      f"{ndim} or exclude the leaf with `filter`."
    )
  trailing = shape[ndim - len(block) :]
  if any(d % b for d, b in zip(trailing, block)):
    raise ValueError(
      f"Block shape {block} must divide the trailing dimensions {trailing} of {name} (shape {shape}); "
      "pick a block whose sides divide them or exclude the leaf with `filter`."
    )


def _full_block(pattern: Block, ndim: int) -> tuple[int, ...]:
  return (1,) * (ndim - len(pattern.shape)) + tuple(pattern.shape)


def _acc_dtype(dtype: Any) -> jnp.dtype:
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"structured pruning needs floating-point leaves, got {dtype}.")
  return jnp.dtype(jnp.float64) if dtype.itemsize == 8 else jnp.dtype(jnp.float32)


def unit_grid(pattern: Structure, shape: Sequence[int]) -> tuple[int, ...]:
  """The shape of the grid of units of a leaf: one entry per block or channel.

  Example:
    >>> from cyclax import _structured
    >>> _structured.unit_grid(_structured.Block((2, 4)), (3, 8, 16))
    (3, 4, 4)
    >>> _structured.unit_grid(_structured.Channel(-1), (3, 3, 16, 32))
    (32,)
  """
  pattern = check_pattern(pattern)
  shape = tuple(int(d) for d in shape)
  check_structure(pattern, shape)
  if isinstance(pattern, Channel):
    return (shape[pattern.axis % len(shape)],)
  return tuple(d // b for d, b in zip(shape, _full_block(pattern, len(shape))))


def unit_scores(x: jax.Array, pattern: Structure) -> jax.Array:
  """Per unit, the key the selection ranks: the sum of ``|x|`` per block or of ``x**2`` per channel.

  The sums rank units exactly like the documented scores (block mean, channel
  L2 norm; see the module docstring) and are formed in float32 (float64 for a
  float64 leaf). A NaN entry makes its unit's key NaN.

  Args:
    x: a floating-point leaf that can take ``pattern``.
    pattern: a :class:`Block` or :class:`Channel`.

  Returns:
    An array shaped like the unit grid (:func:`unit_grid`): for a Block, like
    ``x`` with each dimension divided by the block; for a Channel, one entry per
    channel.

  Example:
    >>> import jax.numpy as jnp
    >>> from cyclax import _structured
    >>> x = jnp.array([[1.0, -2.0, 3.0, 0.0], [0.5, 0.5, -1.0, 1.0]])
    >>> _structured.unit_scores(x, _structured.Block((1, 2))).tolist()
    [[3.0, 3.0], [1.0, 2.0]]
    >>> _structured.unit_scores(x, _structured.Channel(0)).tolist()
    [14.0, 2.5]
  """
  pattern = check_pattern(pattern)
  acc = _acc_dtype(x.dtype)
  check_structure(pattern, x.shape, name="x")
  xa = x.astype(acc)
  if isinstance(pattern, Channel):
    axis = pattern.axis % x.ndim
    others = tuple(d for d in range(x.ndim) if d != axis)
    return jnp.sum(xa * xa, axis=others, dtype=acc)
  block = _full_block(pattern, x.ndim)
  if all(b == 1 for b in block):
    return jnp.abs(xa)
  split = [v for d, b in zip(x.shape, block) for v in (d // b, b)]
  return jnp.sum(jnp.abs(xa.reshape(split)), axis=tuple(range(1, 2 * x.ndim, 2)), dtype=acc)


def expand_unit_mask(unit_mask: jax.Array, pattern: Structure, shape: Sequence[int]) -> jax.Array:
  """A keep-mask of the leaf from its unit keep-mask (every entry of a unit takes the unit's value)."""
  pattern = check_pattern(pattern)
  shape = tuple(int(d) for d in shape)
  if isinstance(pattern, Channel):
    axis = pattern.axis % len(shape)
    column = [1] * len(shape)
    column[axis] = shape[axis]
    return jnp.broadcast_to(unit_mask.reshape(column), shape)
  block = _full_block(pattern, len(shape))
  if all(b == 1 for b in block):
    return unit_mask
  split = [v for d, b in zip(shape, block) for v in (d // b, b)]
  ones = [v for d, b in zip(shape, block) for v in (d // b, 1)]
  return jnp.broadcast_to(unit_mask.reshape(ones), split).reshape(shape)


def _local_units(
  x: jax.Array, pattern: Structure, dim: Optional[int], axis_name: AxisName, name: str
) -> tuple[jax.Array, Optional[int]]:
  """Scores of a local block of a leaf inside ``shard_map``, and the unit-grid dimension split over the axis.

  ``dim`` is the leaf dimension split over ``axis_name`` (None: replicated).
  """
  if dim is None:
    return unit_scores(x, pattern), None
  if isinstance(pattern, Channel):
    axis = pattern.axis % x.ndim
    if dim == axis:
      return unit_scores(x, pattern), 0
    # Every shard holds a slice of every channel: add the partial sums of squares.
    return lax.psum(unit_scores(x, pattern), axis_name), None
  block = _full_block(pattern, x.ndim)
  if x.shape[dim] % block[dim]:
    raise ValueError(
      f"{name}: its shard along dimension {dim} has length {x.shape[dim]}, which cuts blocks of {block[dim]} "
      f"(Block {pattern.shape}) across shards; shard a dimension outside the block, or use shards whose "
      "length is a multiple of the block side."
    )
  return unit_scores(x, pattern), dim


def pooled(
  candidates: Sequence[jax.Array],
  pattern: Structure,
  *,
  axis_name: AxisName = None,
  sharded_dims: Optional[Sequence[Optional[int]]] = None,
  names: Optional[Sequence[str]] = None,
) -> tuple[list[jax.Array], Optional[list[Optional[int]]]]:
  """Per leaf, the unit scores the selection ranks, and (with ``axis_name``) the split unit-grid dimension.

  Args:
    candidates: the pruned leaves (or, inside ``shard_map``, their local blocks).
    pattern: a :class:`Block` or :class:`Channel`.
    axis_name: inside ``shard_map``, the mapped axis the leaves are split over.
    sharded_dims: with ``axis_name``, per leaf the dimension split over it, or
      None for a replicated leaf (default: dimension 0 of every leaf).
    names: per leaf, how errors name it (default ``"leaf i"``).

  Returns:
    The unit scores of every leaf, and with ``axis_name`` the dimension of each
    unit grid that is split over it (None: the scores are whole on every
    device), else None.

  Raises:
    ValueError: for a leaf that cannot take the pattern, or a block cut across shards.
  """
  pattern = check_pattern(pattern)
  candidates = list(candidates)
  names = [f"leaf {i}" for i in range(len(candidates))] if names is None else list(names)
  if axis_name is None:
    for c, name in zip(candidates, names):
      check_structure(pattern, c.shape, name)
    return [unit_scores(c, pattern) for c in candidates], None
  dims = [0] * len(candidates) if sharded_dims is None else list(sharded_dims)
  parts = lax.axis_size(axis_name)
  scores, unit_dims = [], []
  for c, d, name in zip(candidates, dims, names):
    d = None if d is None else int(d) % c.ndim
    check_structure(pattern, [int(n) * (parts if i == d else 1) for i, n in enumerate(c.shape)], name)
    score, unit_dim = _local_units(c, pattern, d, axis_name, name)
    scores.append(score)
    unit_dims.append(unit_dim)
  return scores, unit_dims
