"""Pruning metrics as a flat dict of scalars, ready for any logger."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cyclax import _leaves
from cyclax._inspect import align_masks, find_prune_state, masks_of


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

  - ``count``, ``misplaced_steps``, ``nonfinite_steps``, ``skipped_refreshes``:
    the state's counters (int32, see :class:`MagnitudePruneState`);
  - ``sparsity/<leaf>``, ``sparsity/total``: fraction of pruned-leaf entries that
    are zero; measured on ``params`` (exact zeros) when given, otherwise read
    from the masks;
  - with ``track_regrowth=True`` only: ``regrown/<leaf>``, ``regrown/total``,
    the fraction of entries that were pruned at an earlier refresh and are kept
    now (the paper's Figure 1 quantity; logged after each refresh it is the
    fraction regrown at that refresh), ``ever_pruned/total``, and
    ``survival/<leaf>``, ``survival/total``: of the weights regrown at the
    latest refresh that lowered the leaf's number of pruned entries (a cycle
    start; regrown = kept by that refresh's mask and pruned by the mask before
    it, the state's ``last_regrown``), the fraction kept by the current masks;
    0 while no weight has regrown. Logged at the end of a cycle, it is the
    share of that cycle's regrowth that survived it.

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
    >>> sorted(metrics)[:4], float(metrics["sparsity/w"]), float(metrics["survival/total"])
    (['count', 'ever_pruned/total', 'misplaced_steps', 'nonfinite_steps'], 0.5, 0.0)
  """
  state = find_prune_state(opt_state)
  metrics: dict[str, jax.Array] = {
    "count": state.count,
    "misplaced_steps": state.misplaced_steps,
    "nonfinite_steps": state.nonfinite_steps,
    "skipped_refreshes": state.skipped_refreshes,
  }
  masks_tree = masks_of(state)
  masks_with_path, treedef = jax.tree_util.tree_flatten_with_path(masks_tree)
  names = [_leaves.path_str(path) for path, _ in masks_with_path]
  masks = [m for _, m in masks_with_path]
  sizes = [m.size for m in masks]
  total_size = sum(sizes)

  if params is None:
    zeros = [_count(jnp.logical_not(m)) for m in masks]
  else:
    # Matched by key path, so Flax NNX params (Param nodes) line up with the masks (OptVariable nodes).
    aligned = align_masks(params, masks_tree)
    by_mask = {id(m): p for p, m in zip(jax.tree.leaves(params), aligned) if m is not None}
    zeros = [_count(by_mask[id(m)] == 0) for m in masks]
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
    metrics.update(_survival(names, masks, treedef.flatten_up_to(state.last_regrown)))
  return metrics


def _survival(names: list[str], masks: list[jax.Array], regrown: list[jax.Array]) -> dict[str, jax.Array]:
  """Per leaf and in total: the fraction of the weights regrown at the latest drop that are kept now."""
  out: dict[str, jax.Array] = {}
  zero = jnp.zeros([], jnp.float32)
  kept = [_count(jnp.logical_and(r, m)) for r, m in zip(regrown, masks)]
  grown = [_count(r) for r in regrown]
  for name, k, g in zip(names, kept, grown):
    out[f"survival/{name}"] = jnp.where(g > 0, k / jnp.maximum(g, 1.0), zero)
  k_total, g_total = sum(kept, zero), sum(grown, zero)
  out["survival/total"] = jnp.where(g_total > 0, k_total / jnp.maximum(g_total, 1.0), zero)
  return out
