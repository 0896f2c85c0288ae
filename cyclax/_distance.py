"""How far apart two masks are: the Jaccard distance between their kept sets."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cyclax import _inspect, _leaves, _validation


def _count(x: jax.Array) -> jax.Array:
  """Number of True entries as float32; exact below 2**24, int32 partial sums below 2**31 each."""
  if x.size <= _validation.INT32_MAX:
    return jnp.sum(x, dtype=jnp.int32).astype(jnp.float32)
  rows = jnp.sum(x.reshape(x.shape[0], -1), axis=1, dtype=jnp.int32)
  return jnp.sum(rows.astype(jnp.float32))


def mask_distance(a: Any, b: Any) -> jax.Array:
  r"""Jaccard distance between the kept weights of two masks.

  With ``A`` and ``B`` the sets of kept entries (True in the keep-masks) of all
  pruned leaves together,

  .. math::
    d(A, B) = 1 - \frac{|A \cap B|}{|A \cup B|},

  and 0 when both sets are empty. It is 0 for equal masks and 1 for masks that
  keep no weight in common; Srinivas et al. (2022, Table 5) report it between
  the mask at the end of each cycle and the mask at the end of the first.

  Args:
    a: a keep-mask tree (bool arrays, True = kept; None for dense leaves, as
      returned by :func:`get_masks`; :class:`PackedMask` leaves are unpacked) or
      an optimizer state holding one cyclax pruning state.
    b: the same for the other mask; its pruned leaves must have the same paths
      and shapes as ``a``'s.

  Returns:
    A float32 scalar in [0, 1] (computed with jax.numpy, so it works under
    ``jax.jit`` and ``jax.vmap``).

  Raises:
    ValueError: if the two trees differ in structure, in which leaves are
      pruned, or in a leaf's shape, or if a mask leaf is not boolean.

  Example:
    >>> import jax.numpy as jnp, cyclax
    >>> a = {"w": jnp.array([True, True, False, False]), "b": None}
    >>> b = {"w": jnp.array([True, False, True, False]), "b": None}
    >>> round(float(cyclax.mask_distance(a, b)), 4)  # 1 shared of 3 kept in either
    0.6667
  """
  is_none = lambda x: x is None  # noqa: E731
  leaves_a, tree_a = jax.tree_util.tree_flatten_with_path(_inspect.masks_from(a), is_leaf=is_none)
  leaves_b, tree_b = jax.tree_util.tree_flatten_with_path(_inspect.masks_from(b), is_leaf=is_none)
  if tree_a != tree_b:
    raise ValueError(
      f"`a` and `b` must be masks of the same params tree; got structures {tree_a} and {tree_b}."
    )
  both = jnp.zeros([], jnp.float32)
  either = jnp.zeros([], jnp.float32)
  for (path, ma), (_, mb) in zip(leaves_a, leaves_b):
    name = _leaves.path_str(path)
    if ma is None and mb is None:
      continue
    if ma is None or mb is None:
      which = "`b`" if ma is None else "`a`"
      raise ValueError(f"leaf {name!r} is pruned only in {which}; both masks must prune the same leaves.")
    ma, mb = jnp.asarray(ma), jnp.asarray(mb)
    for arg, m in (("a", ma), ("b", mb)):
      if m.dtype != np.bool_:
        raise ValueError(
          f"`{arg}` leaf {name!r} must be a bool keep-mask (True = kept), got dtype {m.dtype}."
        )
    if ma.shape != mb.shape:
      raise ValueError(f"leaf {name!r} has shape {ma.shape} in `a` but {mb.shape} in `b`.")
    both = both + _count(ma & mb)
    either = either + _count(ma | mb)
  return jnp.where(either > 0, 1.0 - both / jnp.maximum(either, 1.0), 0.0).astype(jnp.float32)
