"""Bit-packed keep-masks: one bit per weight in the optimizer state.

A bool mask costs one byte per weight. Packed, a leaf's mask is a ``uint8``
array: the leaf's longest axis (the last one among equally long axes) is cut
into groups of 8 entries and each group becomes one byte, bit ``j`` of byte
``w`` holding entry ``8 * w + j`` along that axis. The other axes keep their
length, so nothing is flattened with ``reshape(-1)`` and a leaf sharded along
them gives a mask sharded the same way. The state then needs
``ceil(m / 8) / m`` bytes per weight for a longest axis of length ``m``: exactly
1 bit per weight when ``m`` is a multiple of 8 (padding bits are always 0).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export, lax

_WORD_BITS = 8


@dataclasses.dataclass(frozen=True)
class PackedMask:
  """A keep-mask stored at one bit per weight.

  Attributes:
    words: ``uint8`` array, the mask's shape with the packed axis shortened to
      ``ceil(length / 8)``.
    shape: the shape of the unpacked mask (static).
  """

  words: jax.Array
  shape: tuple[int, ...]


jax.tree_util.register_pytree_node(
  PackedMask, lambda m: ((m.words,), m.shape), lambda shape, children: PackedMask(children[0], shape)
)
# So that a step whose state holds packed masks can be serialised with jax.export.
export.register_pytree_node_serialization(
  PackedMask,
  serialized_name="cyclax.PackedMask",
  serialize_auxdata=lambda shape: json.dumps(list(shape)).encode(),
  deserialize_auxdata=lambda data: tuple(json.loads(data)),
)


def packed_axis(shape: tuple[int, ...]) -> int:
  """The axis that is packed: the longest one, the last among equals (0 for a scalar)."""
  if not shape:
    return 0
  longest = max(shape)
  return max(i for i, n in enumerate(shape) if n == longest)


def _bit_weights(ndim: int, axis: int) -> jax.Array:
  """``1, 2, 4, ..., 128`` laid out along ``axis + 1`` of an ``ndim + 1``-d array."""
  shape = [1] * (ndim + 1)
  shape[axis + 1] = _WORD_BITS
  return jnp.asarray(np.left_shift(1, np.arange(_WORD_BITS)).astype(np.uint8).reshape(shape))


def pack_mask(mask: jax.Array) -> PackedMask:
  """Packs a bool mask into bits along its longest axis.

  Args:
    mask: a bool array of any shape.

  Returns:
    A :class:`PackedMask` holding ``uint8`` words; padding bits are 0.

  Raises:
    TypeError: if ``mask`` is not boolean.

  Example:
    >>> import jax.numpy as jnp, cyclax
    >>> packed = cyclax.pack_mask(jnp.array([[True, False, True], [False, False, True]]))
    >>> packed.words.tolist(), packed.shape
    ([[5], [4]], (2, 3))
  """
  mask = jnp.asarray(mask)
  if mask.dtype != jnp.bool_:
    raise TypeError(f"`mask` must be a bool array, got dtype {mask.dtype}.")
  shape = tuple(mask.shape)
  ext = mask if shape else mask[None]
  axis = packed_axis(ext.shape)
  length = ext.shape[axis]
  num_words = -(-length // _WORD_BITS)
  pad = [(0, 0)] * ext.ndim
  pad[axis] = (0, num_words * _WORD_BITS - length)
  grouped = jnp.pad(ext, pad).reshape(ext.shape[:axis] + (num_words, _WORD_BITS) + ext.shape[axis + 1 :])
  # The bits of one byte are distinct powers of two, so their sum is their OR.
  words = jnp.sum(grouped.astype(jnp.uint8) * _bit_weights(ext.ndim, axis), axis=axis + 1, dtype=jnp.uint8)
  return PackedMask(words=words, shape=shape)


def unpack_mask(packed: PackedMask) -> jax.Array:
  """The bool mask stored in a :class:`PackedMask`.

  Args:
    packed: the output of :func:`pack_mask` (or a mask inside a pruning state
      built with ``packed_masks=True``).

  Returns:
    A bool array of shape ``packed.shape``.

  Example:
    >>> import jax.numpy as jnp, cyclax
    >>> mask = jnp.array([[True, False, True], [False, False, True]])
    >>> bool(jnp.array_equal(cyclax.unpack_mask(cyclax.pack_mask(mask)), mask))
    True
  """
  shape = tuple(packed.shape)
  ext_shape = shape or (1,)
  axis = packed_axis(ext_shape)
  words = jnp.asarray(packed.words)
  num_words = words.shape[axis]
  expanded = jnp.expand_dims(words, axis + 1)
  bits = (expanded & _bit_weights(len(ext_shape), axis)) != 0
  merged = bits.reshape(ext_shape[:axis] + (num_words * _WORD_BITS,) + ext_shape[axis + 1 :])
  mask = lax.slice_in_dim(merged, 0, ext_shape[axis], axis=axis)
  return mask if shape else mask[0]


def is_packed(x: object) -> bool:
  """True for a :class:`PackedMask`."""
  return isinstance(x, PackedMask)


def as_bool(mask: Any) -> Any:
  """A stored mask as a bool array (a :class:`PackedMask` is unpacked; anything else is returned)."""
  return unpack_mask(mask) if isinstance(mask, PackedMask) else mask
