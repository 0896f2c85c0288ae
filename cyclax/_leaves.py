"""Which leaves of a params tree are pruned.

By default every floating-point leaf with two or more dimensions (kernels,
embeddings, convolution filters) is pruned, and vectors and scalars (biases,
normalisation scales) stay dense.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Optional, TypeGuard, Union

import jax
import jax.numpy as jnp
import optax

# A pytree of bools shaped like (or a prefix of) the params, or a predicate.
Filter = Union[Any, Callable[[tuple, Any], bool]]


def default_filter(path: tuple, leaf: Any) -> bool:
  """Prune floating-point leaves with ``ndim >= 2``.

  Args:
    path: the leaf's key path (unused).
    leaf: an array or ``jax.ShapeDtypeStruct``.

  Returns:
    True for floating-point leaves with at least two dimensions.
  """
  del path
  return jnp.issubdtype(leaf.dtype, jnp.floating) and len(leaf.shape) >= 2


def is_array_like(x: Any) -> bool:
  return hasattr(x, "shape") and hasattr(x, "dtype")


def path_str(path: tuple) -> str:
  """A readable ``a/b/0``-style name for a key path.

  A final ``.value`` attribute, where Flax NNX variables keep their array, is
  left out: an NNX kernel is named ``layer/kernel``, as in a dict of arrays.
  """
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
    path = path[:-1]
  parts = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
    else:
      parts.append(str(entry))
  return "/".join(parts)


class _Box:
  """Holds one value so that it stays a single leaf whatever it is (None, a list)."""

  def __init__(self, value: Any):
    self.value = value


def broadcast_prefix(prefix: Any, params: optax.Params, name: str, allowed: str) -> list:
  """Per leaf of ``params`` (flatten order), the entry of ``prefix`` above it.

  Args:
    prefix: a pytree with the params' structure, or a prefix of it (an entry
      then applies to its whole subtree); its entries may be None.
    params: the params tree.
    name: the argument's name, for errors.
    allowed: what one entry may be, for errors.

  Returns:
    A list aligned with ``jax.tree.leaves(params)``.

  Raises:
    ValueError: if ``prefix`` is not a prefix of the params' structure.
  """
  try:
    boxed = jax.tree.map(
      lambda v, sub: jax.tree.map(lambda _: _Box(v), sub), prefix, params, is_leaf=lambda x: x is None
    )
  except (ValueError, TypeError) as e:
    raise ValueError(
      f"`{name}` must be {allowed}, or a pytree of them with the params' structure (or a prefix of it): {e}"
    ) from None
  values = [b.value for b in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, _Box))]
  num_leaves = len(jax.tree.leaves(params))
  if len(values) != num_leaves:
    raise ValueError(
      f"`{name}` gives {len(values)} entries for {num_leaves} params leaves; it must have the params' "
      "structure (or a prefix of it)."
    )
  return values


def _filter_arity(filter: Callable[..., Any]) -> int:
  """2 for a ``(path, leaf) -> bool`` filter, 1 for the ``params -> tree of bools`` form."""
  try:
    signature = inspect.signature(filter)
  except (TypeError, ValueError):
    return 2  # a builtin or C callable: assume the documented form
  for arity in (2, 1):
    try:
      signature.bind(*([None] * arity))
      return arity
    except TypeError:
      pass
  raise TypeError(
    "`filter` must be a callable (path, leaf) -> bool, or params -> a pytree of bools (the optax.masked "
    f"form), or a pytree of bools; got a callable with signature {signature}."
  )


def _is_params_filter(filter: Any) -> TypeGuard[Callable[[optax.Params], Any]]:
  """True for the ``params -> tree of bools`` form of ``filter``: a callable that takes one argument."""
  return callable(filter) and _filter_arity(filter) == 1


def select_leaves(params: optax.Params, filter: Optional[Filter]) -> list[bool]:
  """Per leaf of ``params`` (in flatten order), whether it is pruned.

  Args:
    params: the params tree (arrays or ``jax.ShapeDtypeStruct`` leaves).
    filter: None for :func:`default_filter`, a callable ``(path, leaf) -> bool``,
      a callable ``params -> pytree of bools`` (as ``optax.masked`` takes), or
      a pytree of bools matching ``params`` (or a prefix of it).

  Returns:
    A list of Python bools aligned with ``jax.tree.leaves(params)``.

  Raises:
    ValueError: if a filter tree does not match the params tree, or a callable
      filter returns something other than a bool.
    TypeError: if the filter selects a leaf that is not floating point.
  """
  leaves_with_path = jax.tree_util.tree_flatten_with_path(params)[0]
  if not leaves_with_path:
    return []
  if _is_params_filter(filter):
    filter = filter(params)  # the optax.masked form: params -> tree of bools
  if filter is None or callable(filter):
    predicate = default_filter if filter is None else filter
    flags = []
    for path, leaf in leaves_with_path:
      # A user's filter may return anything: checked below.
      flag: Any = predicate(path, leaf) if is_array_like(leaf) else False
      if not isinstance(flag, (bool, jnp.bool_)) and not (
        hasattr(flag, "shape") and flag.shape == () and flag.dtype == bool
      ):
        raise ValueError(
          f"`filter` must return a Python bool for each leaf, got {flag!r} for leaf '{path_str(path)}'."
        )
      flags.append(bool(flag))
  else:
    flags = broadcast_prefix(filter, params, "filter", "a callable (path, leaf) -> bool or a bool")
    for f, (path, _) in zip(flags, leaves_with_path):
      if not isinstance(f, (bool, jnp.bool_)):
        raise ValueError(f"`filter` tree leaves must be bools, got {f!r} for leaf '{path_str(path)}'.")
    flags = [bool(f) for f in flags]
  for flag, (path, leaf) in zip(flags, leaves_with_path):
    if flag and not (is_array_like(leaf) and jnp.issubdtype(leaf.dtype, jnp.floating)):
      dtype = getattr(leaf, "dtype", type(leaf).__name__)
      raise TypeError(
        f"`filter` selects leaf '{path_str(path)}' of dtype {dtype}; only floating-point leaves "
        "(float16, bfloat16, float32, float64) can be pruned."
      )
  return flags
