"""Pruning metrics as a flat dict of scalars, ready for any logger."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cyclax import _leaves
from cyclax._inspect import find_prune_state, get_masks


def _count(x: jax.Array) -> jax.Array:
  return jnp.sum(x, dtype=jnp.int32).astype(jnp.float32)


def _fraction(count: jax.Array, size: int) -> jax.Array:
  # XLA turns a division by a constant into a product with its reciprocal under jit; doing that
  # product here makes jitted and eager results bitwise equal.
  return count * np.float32(1.0 / max(size, 1))


def pruning_metrics(opt_state: optax.OptState, params: Optional[optax.Params] = None) -> dict[str, jax.Array]:
  """Scalars that describe the pruning run, keyed by flat ``"group/leaf"`` names.

  Keys (``leaf`` runs over the pruned leaves, named by their path as in
  :func:`sparsity_report`):

  - ``count``, ``misplaced_steps``: the state's counters (int32);
  - ``sparsity/<leaf>``, ``sparsity/total``: fraction of pruned-leaf entries that
    are zero; measured on ``params`` (exact zeros) when given, otherwise read
    from the masks;
  - with ``track_regrowth=True`` only: ``regrown/<leaf>``, ``regrown/total``,
    the fraction of entries that were pruned at an earlier refresh and are kept
    now (the paper's Figure 1 quantity; logged after each refresh it is the
    fraction regrown at that refresh), and ``ever_pruned/total``.

  Every value is a JAX scalar, so the function can run inside ``jax.jit``.

  Args:
    opt_state: an optimizer state holding one cyclax pruning state.
    params: optional params; if given, sparsity counts their exact zeros.

  Returns:
    A flat ``dict[str, jax.Array]`` of scalars.

  Raises:
    ValueError: if ``opt_state`` holds no cyclax pruning state or more than one.

  Example:
    >>> import jax, jax.numpy as jnp, optax, cyclax
    >>> params = {"w": jax.random.normal(jax.random.key(0), (4, 4))}
    >>> tx = optax.chain(optax.sgd(0.1), cyclax.magnitude_prune(0.5, update_every=1, track_regrowth=True))
    >>> state = tx.init(params)
    >>> updates, state = tx.update(params, state, params)
    >>> metrics = cyclax.pruning_metrics(state, optax.apply_updates(params, updates))
    >>> {k: float(v) for k, v in metrics.items()}
    {'count': 1.0, 'misplaced_steps': 0.0, 'sparsity/w': 0.5, 'sparsity/total': 0.5, 'regrown/w': 0.0, \
'regrown/total': 0.0, 'ever_pruned/total': 0.5}
  """
  state = find_prune_state(opt_state)
  metrics: dict[str, jax.Array] = {"count": state.count, "misplaced_steps": state.misplaced_steps}
  # get_masks returns bool masks whether or not they are stored bit-packed.
  masks_tree = get_masks(opt_state)
  masks_with_path, treedef = jax.tree_util.tree_flatten_with_path(masks_tree)
  names = [_leaves.path_str(path) for path, _ in masks_with_path]
  masks = [m for _, m in masks_with_path]
  sizes = [m.size for m in masks]
  total_size = sum(sizes)

  if params is None:
    zeros = [_count(jnp.logical_not(m)) for m in masks]
  else:
    try:
      p_leaves = treedef.flatten_up_to(_params_like_masks(params, masks_tree))
    except (ValueError, TypeError) as e:
      raise ValueError(f"`params` must have the structure the pruning state was created with: {e}") from None
    zeros = [_count(p == 0) for p in p_leaves]
  for name, z, size in zip(names, zeros, sizes):
    metrics[f"sparsity/{name}"] = _fraction(z, size)
  metrics["sparsity/total"] = _fraction(sum(zeros, jnp.zeros([], jnp.float32)), total_size)

  if state.ever_pruned is not None:
    ever = treedef.flatten_up_to(state.ever_pruned)
    regrown = [_count(jnp.logical_and(e, m)) for e, m in zip(ever, masks)]
    for name, r, size in zip(names, regrown, sizes):
      metrics[f"regrown/{name}"] = _fraction(r, size)
    metrics["regrown/total"] = _fraction(sum(regrown, jnp.zeros([], jnp.float32)), total_size)
    ever_total = sum((_count(e) for e in ever), jnp.zeros([], jnp.float32))
    metrics["ever_pruned/total"] = _fraction(ever_total, total_size)
  return metrics


def _params_like_masks(params: optax.Params, masks: optax.Params) -> optax.Params:
  """``params`` with the leaves that are dense (mask None) replaced by None."""
  return jax.tree.map(lambda m, p: None if m is None else p, masks, params, is_leaf=lambda x: x is None)
