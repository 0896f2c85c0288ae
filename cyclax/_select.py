"""Exact magnitude selection without sorting: a radix-4 search over integer keys.

Given a leaf of scores and a traced number ``k``, find the ``k`` entries to
prune: the ``k`` smallest ``|x|``, with ties at the threshold broken toward the
lower row-major (C-order) index, so the result equals pruning the first ``k``
entries of ``numpy.argsort(abs(x).ravel(), kind="stable")``. NaN ranks above
+inf (all NaNs equal), so a NaN is always kept and the number pruned stays exact.

The threshold is the ``k``-th smallest key of ``|x|`` (:mod:`cyclax._keys`),
found by a radix-4 search: every pass counts the entries at or below three
candidate keys in ONE fused reduction (a variadic ``lax.reduce``), which reads
the leaf once and shrinks the candidate interval four-fold, so a 32-bit leaf
needs 16 passes and a 16-bit leaf 8. A leaf that must prune only part of the
entries tied at its threshold reads the indices of its first three ties in one
more pass, which is enough when it prunes at most three of them; beyond that
the same search runs over the row-major index.

Every count goes through :func:`count_true`, which can ``lax.psum`` the counts
over a named mapped axis, so the kernel runs unchanged on the blocks of leaves
inside ``shard_map`` (:mod:`cyclax._layout`). Under ``jit`` with sharded inputs
the reductions become local reductions plus exchanges of per-device counts:
nothing is gathered, sorted, reshaped or allocated beyond the masks.

:func:`global_prune_masks` picks one threshold over many leaves (mixed dtypes
compared exactly in a common float type) with counts that stay exact beyond
``2**31`` entries in total (:mod:`cyclax._exact`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Optional, Union

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from cyclax import _exact, _keys, _layout

_WAYS = 4  # radix-4: three thresholds per pass
# A leaf that prunes at most this many of the entries tied at its threshold reads their
# indices in one pass; more take a search over the row-major index. Every pass of the tie
# loop returns this many int32 (tie indices, or one flag per threshold of the search).
_TIES_READ = _WAYS - 1


def count_true(preds: Sequence[jax.Array], axis_name: _layout.AxisName = None) -> list[jax.Array]:
  """Number of True entries of each predicate, in one fused pass.

  The predicates (same shape) are reduced by ONE variadic ``lax.reduce``, so the
  data they are computed from is read once. With ``axis_name`` the counts are
  summed over that mapped axis (``lax.psum``): every count in the kernel goes
  through here, which is what makes it run on shards.

  Args:
    preds: boolean arrays of one shape.
    axis_name: optional name of a mapped axis (``shard_map``/``pmap``) to sum over.

  Returns:
    One int32 scalar per predicate.
  """
  preds = list(preds)
  ops = [p.astype(jnp.int32) for p in preds]
  # XLA:CPU rewrites a single-operand sum into a tree of reduce-windows over a materialised
  # int32 copy of the predicate (slow, and leaf-sized); a variadic reduce stays one fused
  # loop. So a single count is padded with a second one, kept alive (XLA drops unused outputs).
  padded = len(ops) == 1
  if padded:
    ops.append(jnp.logical_not(preds[0]).astype(jnp.int32))
  zeros = tuple(jnp.zeros([], jnp.int32) for _ in ops)
  dims = tuple(range(ops[0].ndim))
  counts = list(lax.reduce(tuple(ops), zeros, lambda a, b: tuple(x + y for x, y in zip(a, b)), dims))
  if padded:
    # ``count + count(not pred) - count(not pred)``: exact, and XLA does not fold it.
    counts = [(counts[0] + counts[1]) - counts[1]]
  if axis_name is not None:
    counts = list(lax.psum(counts, axis_name))
  return counts


# ---------------------------------------------------------------------------
# The radix-4 search
# ---------------------------------------------------------------------------


def _split_points(lo: jax.Array, hi: jax.Array) -> list[jax.Array]:
  """``_WAYS - 1`` keys splitting ``[lo, hi]`` into ``_WAYS`` near-equal parts."""
  size = hi - lo + 1
  q, r = size // _WAYS, size % _WAYS
  one = jnp.ones([], lo.dtype)
  return [lo + jnp.maximum(j * q + (j * r) // _WAYS, one) - one for j in range(1, _WAYS)]


def _narrow(
  lo: jax.Array, hi: jax.Array, t: list[jax.Array], below: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """The sub-interval holding the answer, given the bools ``below[j] = count(<= t[j]) < k``."""
  # count(<= t_j) grows with j: the answer is in the first sub-interval whose top reaches k.
  m = jnp.sum(below.astype(jnp.int32))
  tops = jnp.stack(t + [hi])
  bottoms = jnp.stack([lo] + [tj + 1 for tj in t])
  return jnp.maximum(bottoms[m], lo), tops[m]


def _loop_token(lo: jax.Array, hi: jax.Array) -> jax.Array:
  """An int32 that is always -1 inside a search loop, but that XLA cannot prove constant."""
  return jnp.where(lo > hi, 0, -1)


def _search(
  below_k: Callable[[int, list[jax.Array], jax.Array], jax.Array],
  bounds: Sequence[tuple[jax.Array, jax.Array]],
) -> list[jax.Array]:
  """Per problem, the smallest ``t`` in ``[lo, hi]`` with ``count(<= t) >= k``.

  A radix-4 interval search run for all problems together: each round asks
  ``below_k(i, thresholds, loop_token)`` whether ``count(<= t_j) < k`` for the
  three thresholds of problem ``i`` (a bool array) (one pass over its data; ``loop_token`` is
  for :meth:`cyclax._keys.Keys.key`) and keeps the quarter that holds the
  answer. The caller guarantees ``count(<= hi) >= k`` and that any ``t < lo``
  has ``count(<= t) < k``. Bounds are unsigned so no arithmetic overflows.
  """

  def cond(state):
    return jnp.any(jnp.stack([lo < hi for lo, hi in state]))

  def body(state):
    loop_token = _loop_token(*state[0])
    new = []
    for i, (lo, hi) in enumerate(state):
      t = _split_points(lo, hi)
      new.append(_narrow(lo, hi, t, below_k(i, t, loop_token)))
    return new

  state = lax.while_loop(cond, body, [(lo, hi) for lo, hi in bounds])
  return [hi for _, hi in state]


# ---------------------------------------------------------------------------
# Ties at the threshold
# ---------------------------------------------------------------------------


def _merge_smallest(a: tuple, b: tuple) -> tuple:
  """The smallest of two ascending tuples (``j``-th = min over ``i`` of max(a_i, b_{j-i}))."""
  out = []
  for j in range(len(a)):
    best = jnp.minimum(a[j], b[j])
    for i in range(j):
      best = jnp.minimum(best, jnp.maximum(a[i], b[j - 1 - i]))
    out.append(best)
  return tuple(out)


def _smallest_tie_indices(key: _keys.Keys, layout: _layout.Layout, threshold: jax.Array) -> list[jax.Array]:
  """The ``_TIES_READ`` smallest row-major indices (in the whole leaf) of entries keyed ``threshold``.

  One pass: a variadic reduce that merges ascending tuples; missing ones are
  ``size``. Across a mapped axis the tuples are merged by one ``pmin`` per
  position (indices are distinct, so the next smallest is the least local one
  above the previous).
  """
  size = jnp.int32(layout.size)
  idx = jnp.where(key.eq(threshold), layout.row_major_index(), size)
  ops = (idx,) + tuple(jnp.full(layout.shape, size) for _ in range(_TIES_READ - 1))
  inits = tuple(size for _ in range(_TIES_READ))
  local = list(lax.reduce(ops, inits, _merge_smallest, tuple(range(len(layout.shape)))))
  if layout.axis is None:
    return local
  out, prev = [], jnp.int32(-1)
  for _ in range(_TIES_READ):
    above = [jnp.where(v > prev, v, size) for v in local]
    prev = lax.pmin(functools.reduce(jnp.minimum, above), layout.axis)
    out.append(prev)
  return out


def _tie_read_pass(key: _keys.Keys, layout: _layout.Layout, threshold: jax.Array) -> Callable:
  """A branch of the tie loop: the first tie indices of one leaf."""
  return lambda lo, hi, loop_token: jnp.stack(_smallest_tie_indices(key, layout, threshold))


def _index_search_pass(
  key: _keys.Keys, layout: _layout.Layout, threshold: jax.Array, ties_to_prune: jax.Array
) -> Callable:
  """A branch of the tie loop: one round of the search over one leaf's row-major index.

  Per split point ``t`` of ``[lo, hi]``: 1 if fewer than ``ties_to_prune`` ties
  have an index at most ``t``, else 0.
  """

  def flags(lo, hi, loop_token):
    before = [layout.before(t.astype(jnp.int32) + 1) for t in _split_points(lo, hi)]
    counts = count_true([key.eq(threshold, b, loop_token) for b in before], layout.axis)
    return jnp.stack([(c < ties_to_prune).astype(jnp.int32) for c in counts])

  return flags


def _partial_tie_cuts(
  leaves: Sequence[tuple[_keys.Keys, _layout.Layout, jax.Array, jax.Array]], partial: Sequence[jax.Array]
) -> jax.Array:
  """The cut of every leaf that prunes part of its ties (``partial``); other entries are 0.

  ``leaves`` holds, per leaf, its keys, layout, threshold and number of ties to prune.

  Leaves are visited one after the other inside ONE while loop with ONE switch,
  so the compiled refresh does not grow with the number of leaves and only the
  leaves that prune part of their ties pay passes: one pass (its first tie
  indices) for a leaf that prunes at most ``_TIES_READ`` of them, one pass per
  round of a search over the index otherwise.
  """
  keys, layouts, thresholds, ties_to_prune = zip(*leaves)
  num = len(keys)
  reads = jnp.stack([p & (r <= _TIES_READ) for p, r in zip(partial, ties_to_prune)])
  searches = jnp.stack([p & (r > _TIES_READ) for p, r in zip(partial, ties_to_prune)])
  tops = jnp.array([max(lay.size - 1, 0) for lay in layouts], jnp.uint32)
  wanted = jnp.stack(ties_to_prune)
  branches = [_index_search_pass(*leaf) for leaf in leaves]
  branches += [_tie_read_pass(*leaf) for leaf in zip(keys, layouts, thresholds)]
  branches.append(lambda lo, hi, loop_token: jnp.zeros([_TIES_READ], jnp.int32))  # nothing to do

  def body(state):
    i, lo, hi, cuts = state
    reading = reads[i]
    searching = jnp.logical_and(searches[i], lo < hi)
    which = jnp.where(reading, num + i, jnp.where(searching, i, 2 * num))
    out = lax.switch(which, branches, lo, hi, _loop_token(lo, hi))
    new_lo, new_hi = _narrow(lo, hi, _split_points(lo, hi), out > 0)
    # A leaf that reads its ties is done in one visit; a searched leaf when its interval closes.
    read_cut = out[jnp.clip(wanted[i] - 1, 0, _TIES_READ - 1)] + 1
    done_cut = jnp.where(reading, read_cut, hi.astype(jnp.int32) + 1)
    cuts = jnp.where(searching, cuts, cuts.at[i].set(done_cut))
    following = tops[jnp.minimum(i + 1, num - 1)]
    return (
      jnp.where(searching, i, i + 1),
      jnp.where(searching, new_lo, jnp.uint32(0)),
      jnp.where(searching, new_hi, following),
      cuts,
    )

  init = (jnp.int32(0), jnp.uint32(0), tops[0], jnp.zeros([num], jnp.int32))
  return lax.while_loop(lambda state: state[0] < num, body, init)[3]


def _tie_cuts(
  keys: Sequence[_keys.Keys],
  layouts: Sequence[_layout.Layout],
  thresholds: Sequence[jax.Array],
  ties_to_prune: Sequence[jax.Array],
  num_tied: Sequence[jax.Array],
) -> list[jax.Array]:
  """Per leaf, the cut ``J``: prune the ties at the threshold whose row-major index is below ``J``.

  ``J = 0`` prunes no tie and ``J = size`` all of them; in between (a leaf
  prunes some but not all of its ``num_tied`` ties) ``J`` is one past the index
  of the last tie pruned, found by :func:`_partial_tie_cuts` only when some
  leaf needs it.
  """
  all_or_none = [
    jnp.where(r > 0, jnp.int32(lay.size), jnp.int32(0)) for r, lay in zip(ties_to_prune, layouts)
  ]
  partial = [jnp.logical_and(r > 0, r < a) for r, a in zip(ties_to_prune, num_tied)]

  def some_partial():
    cuts = _partial_tie_cuts(list(zip(keys, layouts, thresholds, ties_to_prune)), partial)
    return [jnp.where(p, cuts[i], c) for i, (p, c) in enumerate(zip(partial, all_or_none))]

  return lax.cond(jnp.any(jnp.stack(partial)), some_partial, lambda: all_or_none)


def _keep_masks(
  keys: Sequence[_keys.Keys],
  layouts: Sequence[_layout.Layout],
  thresholds: Sequence[jax.Array],
  cuts: Sequence[jax.Array],
) -> list[jax.Array]:
  """True where an entry is kept: above the threshold, or tied at it at an index from the cut on."""
  masks = []
  for key, lay, thr, cut in zip(keys, layouts, thresholds, cuts):
    pruned = jnp.logical_or(key.lt(thr), key.eq(thr, lay.before(cut)))
    masks.append(jnp.logical_not(pruned))
  return masks


# ---------------------------------------------------------------------------
# Per leaf and global selection
# ---------------------------------------------------------------------------


def prune_masks(
  scores: Sequence[jax.Array],
  ks: Sequence[ArrayLike],
  *,
  axis_name: _layout.AxisName = None,
  sharded_dims: Optional[Sequence[Optional[int]]] = None,
) -> list[jax.Array]:
  """Keep-masks pruning exactly ``ks[i]`` smallest-magnitude entries of ``scores[i]``.

  Ties in ``|x|`` are pruned lowest row-major index first; NaN ranks above +inf.
  All leaves are searched together, one fused counting pass per leaf per round.

  Args:
    scores: floating-point arrays (any shape, float16/bfloat16/float32/float64).
    ks: per leaf, the number of entries to prune (may be traced); clipped to
      ``[0, size]``.
    axis_name: optional mapped axis name: inside ``shard_map`` each device holds
      a block of each leaf, counts are summed over this axis, and ``ks`` are the
      numbers to prune from the whole leaves. Ties are broken by the row-major
      index in the whole leaf, so the masks equal those of the unsharded leaves.
    sharded_dims: with ``axis_name``, per score the dimension split over the
      axis (the device at ``axis_index`` holds that block), or None for a score
      replicated over it. Default: every score split along dimension 0.

  Returns:
    Boolean arrays shaped like ``scores``: True where an entry is kept.

  Raises:
    TypeError: if a score is not floating point.
    ValueError: for ``ks`` or ``sharded_dims`` of the wrong length, or a
      sharded dimension the score does not have.

  Example:
    >>> import jax.numpy as jnp
    >>> from cyclax import _select
    >>> [mask] = _select.prune_masks([jnp.array([0.3, -0.1, 0.2, 0.1])], [2])
    >>> mask.tolist()
    [True, False, True, False]
  """
  scores, ks = list(scores), list(ks)
  if len(scores) != len(ks):
    raise ValueError(f"`ks` must have one entry per score ({len(scores)}), got {len(ks)}.")
  if not scores:
    return []
  keys = [_keys.own_keys(s) for s in scores]
  layouts = _layout.layouts(scores, axis_name, sharded_dims)
  ks = [jnp.clip(jnp.asarray(k, jnp.int32), 0, lay.size) for k, lay in zip(ks, layouts)]

  def below_k(i, t, loop_token):
    counts = count_true([keys[i].le(tj, loop_token) for tj in t], layouts[i].axis)
    return jnp.stack(counts) < ks[i]

  found = _search(below_k, [key.bounds() for key in keys])
  thresholds = [t.astype(key.key_dtype) for t, key in zip(found, keys)]
  counts = [
    count_true([key.lt(thr), key.eq(thr)], lay.axis) for key, lay, thr in zip(keys, layouts, thresholds)
  ]
  ties_to_prune = [k - below for k, (below, _) in zip(ks, counts)]
  num_tied = [tied for _, tied in counts]
  cuts = _tie_cuts(keys, layouts, thresholds, ties_to_prune, num_tied)
  return _keep_masks(keys, layouts, thresholds, cuts)


def global_prune_masks(
  scores: Sequence[jax.Array],
  k_total: Union[int, ArrayLike, _exact.Wide],
  *,
  axis_name: _layout.AxisName = None,
  sharded_dims: Optional[Sequence[Optional[int]]] = None,
) -> list[jax.Array]:
  """Keep-masks pruning exactly ``k_total`` smallest-magnitude entries over all leaves together.

  One threshold for every leaf. The ranking is that of ``|x|`` with every leaf
  cast exactly to a common float type (float32, or float64 when a leaf is
  float64); ties are pruned in order of leaf position in ``scores``, then
  row-major index inside a leaf; NaN ranks above +inf. Leaves are never
  concatenated: every round counts each leaf in one fused pass and adds the
  per-leaf int32 counts exactly (:mod:`cyclax._exact`), so totals beyond
  ``2**31`` are exact.

  Args:
    scores: floating-point arrays (any shapes and float dtypes, each below
      ``2**31`` entries).
    k_total: the number of entries to prune over all leaves: a Python int, an
      int32 scalar (may be traced) or a :class:`cyclax._exact.Wide` (for
      example from :func:`cyclax._exact.num_to_prune_total`); clipped to the
      total size.
    axis_name: optional mapped axis name to sum counts over (see
      :func:`prune_masks`).
    sharded_dims: with ``axis_name``, per score the dimension split over the
      axis or None (replicated), as in :func:`prune_masks`.

  Returns:
    Boolean arrays shaped like ``scores``: True where an entry is kept.

  Raises:
    TypeError: if a score is not floating point.
    ValueError: for ``sharded_dims`` that do not fit the scores.

  Example:
    >>> import jax.numpy as jnp
    >>> from cyclax import _select
    >>> a = jnp.array([0.5, -0.1, 2.0])
    >>> b = jnp.array([[0.1, 3.0], [0.2, -0.05]], jnp.bfloat16)
    >>> [m.astype(int).tolist() for m in _select.global_prune_masks([a, b], 3)]
    [[1, 0, 1], [[0, 1], [1, 0]]]
  """
  scores = list(scores)
  if not scores:
    return []
  keys = _keys.common_keys(scores)
  layouts = _layout.layouts(scores, axis_name, sharded_dims)
  k = _exact.minimum(_exact.as_wide(k_total), _exact.constant(sum(lay.size for lay in layouts)))

  def below_k(_, t, loop_token):
    per_leaf = [count_true([key.le(tj, loop_token) for tj in t], lay.axis) for key, lay in zip(keys, layouts)]
    return _exact.less(_exact.sum_int32(jnp.asarray(per_leaf)), k)

  [found] = _search(below_k, [keys[0].bounds()])
  threshold = found.astype(keys[0].key_dtype)
  counts = [count_true([key.lt(threshold), key.eq(threshold)], lay.axis) for key, lay in zip(keys, layouts)]
  num_tied = [tied for _, tied in counts]
  # The k - sum(below) ties pruned go to the leaves in order, each up to its own number of ties.
  ties_to_prune = _exact.fill_in_order(k, num_tied, used=[below for below, _ in counts])
  thresholds = [threshold] * len(scores)
  cuts = _tie_cuts(keys, layouts, thresholds, ties_to_prune, num_tied)
  return _keep_masks(keys, layouts, thresholds, cuts)
