"""Turning channel sparsity into a smaller dense model.

Pruning whole output units of a stack of dense layers (``Channel(-1)`` on each
kernel shaped ``(in, out)``) leaves kernel columns of zeros. Removing such a
unit from layer ``i`` (its kernel column and bias entry) and the matching input
row from layer ``i + 1`` gives smaller dense layers that compute the same
outputs, faster on any hardware.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from cyclax import _inspect


def _value(x: Any) -> Any:
  """The array inside a Flax ``Variable`` (anything with ``get_value``), or ``x`` itself."""
  return x.get_value() if hasattr(x, "get_value") else x


def _is_linear(layer: Any) -> bool:
  return all(hasattr(layer, a) for a in ("kernel", "in_features", "out_features"))


def _layer_arrays(layer: Any, index: int) -> tuple[jax.Array, Optional[jax.Array]]:
  if _is_linear(layer):
    bias = getattr(layer, "bias", None)
    return jnp.asarray(_value(layer.kernel)), None if bias is None else jnp.asarray(_value(bias))
  try:
    kernel, bias = layer
  except (TypeError, ValueError):
    raise TypeError(
      f"`layers[{index}]` must be a flax.nnx.Linear or a (kernel, bias) pair, got {type(layer).__name__}."
    ) from None
  return jnp.asarray(_value(kernel)), None if bias is None else jnp.asarray(_value(bias))


def _kernel_mask(entry: Any, index: int) -> Optional[np.ndarray]:
  """The kernel mask in one layer's entry of ``masks`` (an array, a pair, or a mapping with 'kernel')."""
  entry = _value(entry)
  if entry is None or hasattr(entry, "shape"):
    return None if entry is None else np.asarray(entry)
  if isinstance(entry, Mapping) and "kernel" in entry:
    return _kernel_mask(entry["kernel"], index)
  if isinstance(entry, (tuple, list)) and len(entry) == 2:
    return _kernel_mask(entry[0], index)
  raise TypeError(
    f"`masks[{index}]` must be None, a bool array shaped like the kernel, a (kernel_mask, bias_mask) pair "
    f"or a mapping with a 'kernel' entry, got {type(entry).__name__}."
  )


def _mask_entries(masks: Any, num_layers: int) -> list[Any]:
  if masks is None:
    return [None] * num_layers
  masks = _inspect.masks_from(masks)  # an optimizer state holding one pruning state, or the masks
  if not isinstance(masks, (Sequence, Mapping)) or isinstance(masks, str):
    raise TypeError(
      "`masks` must be a sequence (or an int-keyed mapping) with one entry per layer, or an optimizer "
      f"state holding a cyclax pruning state, got {type(masks).__name__}."
    )
  if isinstance(masks, Mapping):
    if sorted(masks.keys(), key=str) != sorted(range(len(masks)), key=str):
      raise TypeError(
        f"a mapping `masks` must be keyed 0..n-1 like a list of layers (e.g. the masks of an nnx.List), "
        f"got keys {list(masks.keys())}; pick the layers' entry, e.g. masks['layers']."
      )
    masks = [masks[i] for i in range(len(masks))]
  masks = list(masks)
  if len(masks) != num_layers:
    raise ValueError(f"`masks` must have one entry per layer ({num_layers}), got {len(masks)}.")
  return masks


def shrink_dense_stack(
  layers: Sequence[Any],
  masks: Any = None,
  *,
  activation: Optional[Callable[[jax.Array], jax.Array]] = jax.nn.relu,
) -> list[Any]:
  """Removes the dead hidden units of a stack of dense layers; the outputs stay the same.

  The stack computes ``h_{i+1} = activation(h_i @ kernel_i + bias_i)`` for every
  layer but the last, which gives the outputs ``h_n @ kernel_n + bias_n``. Each
  kernel is first multiplied by its mask. A hidden unit ``j`` of layer ``i`` is
  removed when its kernel column is all zeros (a pruned channel) or when its
  row in the next kernel is all zeros (nothing reads it): the column and bias
  entry go from layer ``i``, the row from layer ``i + 1``. A unit with a zero
  column still outputs the constant ``activation(bias_i[j])`` (``relu(b)`` is
  not 0 when ``b > 0``), so ``activation(bias_i[j]) * kernel_{i+1}[j]`` is
  folded into the next bias: the smaller stack equals the masked stack on
  every input, up to float rounding of the sums (exactly, on values whose sums
  are exact). The last layer's outputs are the model's and are never removed,
  and the first layer's input rows are kept (the input is unchanged).

  Args:
    layers: ``flax.nnx.Linear`` layers, or ``(kernel, bias)`` pairs with
      kernels shaped ``(in, out)`` and bias ``(out,)`` or None; each layer's
      ``in`` must equal the previous one's ``out``.
    masks: None (use the kernels as they are), or one entry per layer: None, a
      bool array shaped like the kernel (True = kept), a ``(kernel_mask,
      bias_mask)`` pair, or a mapping with a ``"kernel"`` entry (e.g.
      ``cyclax.get_masks(opt_state)["layers"]`` for a model holding an
      ``nnx.List`` of layers under ``layers``). An optimizer state whose params
      are the stack itself is read with :func:`cyclax.get_masks`.
    activation: the elementwise function between layers (default
      ``jax.nn.relu``); None for a linear stack.

  Returns:
    New layers of the same kind (cloned ``nnx.Linear`` with the smaller
    kernels and ``in_features``/``out_features`` set; or ``(kernel, bias)``
    pairs); the inputs are not modified.

  Raises:
    TypeError: for layers or masks of an unsupported kind.
    ValueError: for shapes that do not chain, masks that do not match the
      kernels, or a constant unit to fold into a layer without a bias.

  Example:
    >>> import jax.numpy as jnp, cyclax
    >>> w1 = jnp.array([[1.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])  # hidden unit 1 is pruned
    >>> b1 = jnp.array([0.0, 3.0, 0.5])
    >>> w2, b2 = jnp.array([[1.0], [2.0], [-1.0]]), jnp.array([0.25])
    >>> (k1, c1), (k2, c2) = cyclax.shrink_dense_stack([(w1, b1), (w2, b2)])
    >>> k1.shape, k2.shape, c2.tolist()  # relu(3.0) * 2.0 folded into the last bias
    ((2, 2), (2, 1), [6.25])
  """
  layers = list(layers)
  if not layers:
    return []
  kernels, biases = _masked_kernels(layers, _mask_entries(masks, len(layers)))
  act = (lambda v: v) if activation is None else activation
  for i in range(len(layers) - 1):
    _remove_dead_units(kernels, biases, i, act)
  return [_rebuilt(layer, kernel, bias) for layer, kernel, bias in zip(layers, kernels, biases)]


def _masked_kernels(layers: list[Any], entries: list[Any]) -> tuple[list[jax.Array], list[Any]]:
  """Every layer's kernel times its mask, and its bias, after checking that the shapes chain."""
  kernels, biases = [], []
  for i, ((kernel, bias), entry) in enumerate(zip(map(_layer_arrays, layers, range(len(layers))), entries)):
    if kernel.ndim != 2:
      raise ValueError(f"`layers[{i}]` must have a 2-D kernel (in, out), got shape {tuple(kernel.shape)}.")
    if bias is not None and bias.shape != kernel.shape[1:]:
      raise ValueError(
        f"`layers[{i}]` bias shape {tuple(bias.shape)} does not match kernel {tuple(kernel.shape)}."
      )
    if i and kernel.shape[0] != kernels[-1].shape[1]:
      raise ValueError(
        f"`layers[{i}]` takes {kernel.shape[0]} inputs but layer {i - 1} gives "
        f"{kernels[-1].shape[1]} outputs."
      )
    mask = _kernel_mask(entry, i)
    if mask is not None:
      if mask.shape != kernel.shape:
        raise ValueError(f"`masks[{i}]` has shape {mask.shape}, the kernel {tuple(kernel.shape)}.")
      kernel = jnp.where(jnp.asarray(mask, bool), kernel, jnp.zeros_like(kernel))
    kernels.append(kernel)
    biases.append(bias)
  return kernels, biases


def _remove_dead_units(kernels: list[Any], biases: list[Any], i: int, act: Callable) -> None:
  """Drops layer ``i``'s dead or unread units in place, folding constant outputs into the next bias."""
  dead_in: np.ndarray = ~np.any(np.asarray(kernels[i]) != 0, axis=0)  # constant output activation(bias)
  unread: np.ndarray = ~np.any(np.asarray(kernels[i + 1]) != 0, axis=1)  # nothing downstream reads it
  fold = dead_in & ~unread
  if np.any(fold):
    rows = np.flatnonzero(fold)
    bias = biases[i]
    const = act(jnp.zeros(len(rows), kernels[i].dtype) if bias is None else bias[rows])
    shift = const @ kernels[i + 1][rows]
    if biases[i + 1] is None:
      if np.any(np.asarray(shift) != 0):
        raise ValueError(
          f"pruned units of layer {i} output the constant activation(bias) != 0, which must be folded into "
          f"the bias of layer {i + 1}, and that layer has none."
        )
    else:
      biases[i + 1] = (biases[i + 1] + shift).astype(biases[i + 1].dtype)
  keep = np.flatnonzero(~(dead_in | unread))
  kernels[i] = kernels[i][:, keep]
  biases[i] = None if biases[i] is None else biases[i][keep]
  kernels[i + 1] = kernels[i + 1][keep]


def _rebuilt(layer: Any, kernel: jax.Array, bias: Optional[jax.Array]) -> Any:
  """A layer of the same kind as ``layer`` with the given (smaller) kernel and bias."""
  if not _is_linear(layer):
    return (kernel, bias)
  from flax import nnx

  new = nnx.clone(layer)
  new.kernel.set_value(kernel)
  if bias is not None:
    new.bias.set_value(bias)
  new.in_features, new.out_features = int(kernel.shape[0]), int(kernel.shape[1])
  return new
