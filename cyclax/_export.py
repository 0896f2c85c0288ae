"""Getting a pruned model out: sparse BCOO leaves, their size, or plain dense arrays.

These helpers run on the host after training (they read masks to count the
kept entries, which fixes the shapes of the sparse arrays), not inside
``jax.jit``.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import sparse

from cyclax import _inspect, _leaves

# BCOO stores one int32 coordinate per dimension for every kept entry.
_INDEX_DTYPE = np.int32


def _is_bcoo(x: Any) -> bool:
  return isinstance(x, sparse.BCOO)


def _resolve_masks(params: optax.Params, masks: Any) -> list[Optional[np.ndarray]]:
  """Per params leaf: a host bool mask for pruned leaves, None for dense ones."""
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_bcoo)
  if masks is None:
    # BCOO leaves are already exported; the filter sees only their shape and dtype.
    probe = treedef.unflatten(
      [jax.ShapeDtypeStruct(x.shape, x.dtype) if _is_bcoo(x) else x for _, x in leaves_with_path]
    )
    flags = _leaves.select_leaves(probe, None)
    return [
      np.asarray(leaf) != 0 if f and not _is_bcoo(leaf) else None
      for f, (_, leaf) in zip(flags, leaves_with_path)
    ]
  out = []
  for m, (path, leaf) in zip(_inspect.align_masks(params, masks, is_leaf=_is_bcoo), leaves_with_path):
    if m is None:
      out.append(None)
      continue
    m = np.asarray(m)
    if m.dtype != np.bool_ or m.shape != tuple(leaf.shape):
      raise ValueError(
        f"mask of leaf '{_leaves.path_str(path)}' must be a bool array of shape {tuple(leaf.shape)}, "
        f"got {m.dtype} of shape {m.shape}."
      )
    out.append(m)
  return out


def to_bcoo(params: optax.Params, masks: Any = None) -> Any:
  """Converts every pruned leaf to a ``jax.experimental.sparse.BCOO`` of its kept entries.

  Args:
    params: the trained params, or a tree that contains them once, such as
      Flax variables ``{"params": state.params}`` when the optimizer was built
      over ``state.params`` (leaves outside that subtree are left as they are).
    masks: which entries are kept: an optimizer state holding a cyclax pruning
      state (its masks are used), a masks tree as returned by
      :func:`get_masks` (bool arrays, None for dense leaves), or None to store
      the non-zero entries of every leaf the default filter prunes
      (floating-point, ``ndim >= 2``).

  Returns:
    A tree shaped like ``params`` in which each pruned leaf is a BCOO array
    holding exactly its kept entries (row-major order, int32 indices) and every
    other leaf is unchanged. ``sparse.sparsify(fn)`` runs a model on it.

  Raises:
    ValueError: if ``masks`` matches neither ``params`` nor exactly one subtree
      of it, or a mask is not a bool array of its leaf's shape.

  Example:
    >>> import jax.numpy as jnp, cyclax
    >>> params = {"w": jnp.array([[0.0, 2.0], [3.0, 0.0]]), "b": jnp.ones(2)}
    >>> sparse_params = cyclax.to_bcoo(params)
    >>> sparse_params["w"].nse, sparse_params["w"].todense().tolist()
    (2, [[0.0, 2.0], [3.0, 0.0]])
  """
  leaves, treedef = jax.tree.flatten(params, is_leaf=_is_bcoo)
  out = []
  for leaf, m in zip(leaves, _resolve_masks(params, masks)):
    if m is None or _is_bcoo(leaf):
      out.append(leaf)
      continue
    indices = np.argwhere(m).astype(_INDEX_DTYPE)
    data = np.asarray(leaf)[m]
    out.append(
      sparse.BCOO(
        (jnp.asarray(data), jnp.asarray(indices)), shape=leaf.shape, indices_sorted=True, unique_indices=True
      )
    )
  return treedef.unflatten(out)


def _itemsize(dtype: Any) -> int:
  return int(np.dtype(dtype).itemsize)


def sparse_size_report(params: optax.Params, masks: Any = None) -> dict[str, dict[str, int]]:
  """Stored entries and bytes of the exported model, per leaf and in total.

  Args:
    params: params (or a tree containing them, as in :func:`to_bcoo`), or the
      output of :func:`to_bcoo`.
    masks: as in :func:`to_bcoo`; ignored for leaves that are already BCOO.

  Returns:
    ``{"path/to/leaf": {"nnz", "dense_bytes", "sparse_bytes"}, ..., "total": {...}}``
    with Python ints: ``nnz`` is the number of stored entries of a BCOO leaf
    (and the number of non-zeros of a dense one), ``dense_bytes`` the size of
    the leaf as a dense array, ``sparse_bytes`` its size as exported (BCOO data
    plus int32 indices; unchanged for leaves left dense).

  Example:
    >>> import jax.numpy as jnp, cyclax
    >>> report = cyclax.sparse_size_report({"w": jnp.array([[0.0, 2.0], [3.0, 0.0]])})
    >>> report["w"]  # 2 float32 values + 2 x 2 int32 indices
    {'nnz': 2, 'dense_bytes': 16, 'sparse_bytes': 24}
  """
  exported = to_bcoo(params, masks)
  leaves_with_path = jax.tree_util.tree_flatten_with_path(exported, is_leaf=_is_bcoo)[0]
  report: dict[str, dict[str, int]] = {}
  total = {"nnz": 0, "dense_bytes": 0, "sparse_bytes": 0}
  for path, leaf in leaves_with_path:
    if not hasattr(leaf, "shape"):
      continue
    size = int(np.prod(leaf.shape, dtype=np.int64))
    dense_bytes = size * _itemsize(leaf.dtype)
    if _is_bcoo(leaf):
      entry = {
        "nnz": int(leaf.nse),
        "dense_bytes": dense_bytes,
        "sparse_bytes": int(leaf.data.nbytes) + int(leaf.indices.nbytes),
      }
    else:
      entry = {
        "nnz": int(np.count_nonzero(np.asarray(leaf))),
        "dense_bytes": dense_bytes,
        "sparse_bytes": dense_bytes,
      }
    report[_leaves.path_str(path)] = entry
    for key in total:
      total[key] += entry[key]
  report["total"] = total
  return report


def strip_pruning(params: Any, masks: Any = None) -> Any:
  """Plain dense params, with the pruned entries as exact zeros.

  Accepts what cyclax hands out: params trained with cyclax (returned as they
  are) or the output of :func:`to_bcoo` (BCOO leaves are densified). When
  ``masks`` is given (an optimizer state or a masks tree), pruned entries are
  also set to ``+0.0``, which repairs params edited outside the optimizer.

  Args:
    params: a params tree (or a tree containing it, as in :func:`to_bcoo`),
      possibly with BCOO leaves.
    masks: optional, as in :func:`to_bcoo`.

  Returns:
    A tree of ordinary ``jax.Array`` leaves shaped like the params.

  Example:
    >>> import jax.numpy as jnp, cyclax
    >>> params = {"w": jnp.array([[0.0, 2.0], [3.0, 0.0]])}
    >>> cyclax.strip_pruning(cyclax.to_bcoo(params))["w"].tolist()
    [[0.0, 2.0], [3.0, 0.0]]
  """
  dense = jax.tree.map(lambda x: x.todense() if _is_bcoo(x) else x, params, is_leaf=_is_bcoo)
  if masks is None:
    return dense
  leaves, treedef = jax.tree.flatten(dense)
  out = [
    leaf if m is None else jnp.where(jnp.asarray(m), leaf, jnp.zeros_like(leaf))
    for leaf, m in zip(leaves, _resolve_masks(dense, masks))
  ]
  return treedef.unflatten(out)
