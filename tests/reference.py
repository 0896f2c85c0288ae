"""Independent NumPy / Python-int references for the cyclax tests, and their shared helpers.

Nothing here imports cyclax: every reference restates the documented contract
in the most direct way (sorting, Python integers, a plain loop), so that the
tests compare the library against a second implementation. The helpers at the
end (random trees, a regression loss, an optax step loop) import jax and optax
only when called, and never flax: the core-tests job runs without it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from fractions import Fraction

import numpy as np


def sparsity_to_fixed(sparsity: float) -> int:
  """The sparsity as a multiple of 2**-24: float32, clipped to [0, 1], rounded half to even."""
  s = float(np.clip(np.float32(sparsity), np.float32(0.0), np.float32(1.0)))
  return round(s * 2**24)  # Python's round() is half-to-even, like jnp.round.


def num_to_prune(sparsity: float, size: int) -> int:
  """The rounding rule ``k = (round(s * 2**24) * n + 2**23) >> 24`` with Python ints."""
  return (sparsity_to_fixed(sparsity) * int(size) + 2**23) >> 24


def _as_float64(x: np.ndarray) -> np.ndarray:
  # float16/bfloat16/float32 convert exactly to float64, so the order of |x| is preserved.
  return np.asarray(x).astype(np.float64)


def keep_mask(x: np.ndarray, k: int) -> np.ndarray:
  """Keep-mask pruning the first ``k`` entries of ``argsort(|x|.ravel(), kind="stable")``.

  NaN sorts after +inf in NumPy, and NaNs keep their index order among themselves,
  which is the documented rule "NaN ranks above +inf, ties pruned lowest index first".
  """
  x = np.asarray(x)
  order = np.argsort(np.abs(_as_float64(x)).ravel(), kind="stable")
  keep = np.ones(x.size, dtype=bool)
  keep[order[:k]] = False
  return keep.reshape(x.shape)


def global_keep_masks(leaves: Sequence[np.ndarray], k: int) -> list[np.ndarray]:
  """Keep-masks pruning the first ``k`` of one stable argsort of all ``|x|``, leaves concatenated.

  Ties go to the earlier leaf, then the lower row-major index; NaN ranks above +inf.
  """
  flat = np.concatenate([_as_float64(x).ravel() for x in leaves])
  keep = keep_mask(flat, k)
  out, start = [], 0
  for x in leaves:
    out.append(keep[start : start + np.size(x)].reshape(np.shape(x)))
    start += np.size(x)
  return out


def nm_keep_mask(x: np.ndarray, sparsity: float, n: int, m: int, axis: int) -> np.ndarray:
  """Per group of ``m`` along ``axis``: keep ``max(n, m - num_to_prune(s, m))``, pruning by stable argsort."""
  x = np.moveaxis(_as_float64(x), axis, -1)
  keep_count = max(n, m - num_to_prune(sparsity, m))
  groups = x.reshape(-1, m)
  mask = np.stack([keep_mask(g, m - keep_count) for g in groups]) if groups.size else groups.astype(bool)
  return np.moveaxis(mask.reshape(x.shape), -1, axis)


def erk_num_to_prune(sparsity: float, shapes: Sequence[tuple[int, ...]]) -> list[int]:
  """Evci et al.'s ERK loop in exact fractions, then largest remainders for an exact total.

  Densities are ``eps * sum(shape) / prod(shape)``; leaves whose density would
  exceed 1 are made dense until none is left, and the kept entries number
  exactly ``total - num_to_prune(s, total)``. Leftover entries go one each to
  the largest fractional parts, the earlier leaf first among equal ones.
  """
  sizes = [int(np.prod(s, dtype=object)) if len(s) else 1 for s in shapes]
  sums = [sum(s) if len(s) else 1 for s in shapes]
  total = sum(sizes)
  kept = total - num_to_prune(sparsity, total)
  dense: set[int] = set()
  while True:
    rest = [i for i in range(len(shapes)) if i not in dense]
    eps = Fraction(kept - sum(sizes[i] for i in dense), sum(sums[i] for i in rest))
    grow = {i for i in rest if eps * Fraction(sums[i], sizes[i]) > 1}
    if not grow:
      break
    dense |= grow
  ones = [sizes[i] if i in dense else int(eps * sums[i]) for i in range(len(shapes))]
  fractions = [(eps * sums[i] - ones[i], -i) for i in rest]
  for _, neg_i in sorted(fractions, reverse=True)[: kept - sum(ones)]:
    ones[-neg_i] += 1
  return [n - o for n, o in zip(sizes, ones)]


def cyclical_sparsity(
  step: int, target: float, num_cycles: int, cycle_steps: int, initial: float, ramp_fraction: float
) -> float:
  """The cyclical schedule's closed form with the cubic ramp, cycle by cycle."""
  return cyclical_sparsity_with_ramp(step, target, num_cycles, cycle_steps, initial, ramp_fraction, "cubic")


def gradual_sparsity(step: int, target: float, begin: int, end: int, initial: float) -> float:
  """Zhu & Gupta's cubic ramp between ``begin`` and ``end``."""
  return gradual_sparsity_with_ramp(step, target, begin, end, initial, "cubic")


def refresh_due(
  sparsity: Callable[[int], float], update_every: int, t: int, settles: Sequence[int] = ()
) -> bool:
  """The documented cadence: every ``update_every`` steps, where the schedule drops, and where it settles.

  ``settles`` are the steps where the schedule reaches a level that it then holds (see the
  ``*_settle_steps`` functions below).
  """
  if t % update_every == 0 or t in settles:
    return True
  return sparsity(t) < sparsity(t - 1)


def cyclical_settle_steps(
  num_cycles: int, cycle_steps: int, ramp_fraction: float, ramp: str = "cubic"
) -> set[int]:
  """Where the cyclical schedule settles: each ramp's end (a step ramp's jump), inside its cycle.

  The ramp ends at the first ``tau`` with ``tau >= ramp_fraction * cycle_steps`` (for "step": with
  ``2 * tau >= cycle_steps``); a ramp that fills the whole cycle settles when the schedule starts to
  hold the target after the last cycle.
  """
  end = (cycle_steps + 1) // 2 if ramp == "step" else int(np.ceil(np.float32(ramp_fraction * cycle_steps)))
  if end >= cycle_steps:
    return {num_cycles * cycle_steps}
  return {c * cycle_steps + end for c in range(num_cycles)}


def gradual_settle_steps(begin: int, end: int, ramp: str = "cubic") -> set[int]:
  """Where the gradual schedule settles: ``end`` (a step ramp: its jump half way)."""
  return {begin + (end - begin + 1) // 2} if ramp == "step" else {end}


def tv_pgd(
  params: dict[str, np.ndarray],
  grad_fn: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
  learning_rate: float,
  sparsity: Callable[[int], float],
  update_every: int,
  num_steps: int,
  pruned: Sequence[str],
  settles: Sequence[int] = (),
) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
  """The paper's Algorithm 1 with plain SGD, step by step, in NumPy.

  Masks are refreshed on the documented cadence (:func:`refresh_due`, with the
  schedule's ``settles`` steps).

  Returns the params after every step and the masks used at every step. Arrays
  keep their dtype; the SGD step and the candidate ``p + u`` are computed in
  that dtype, like ``optax.sgd`` followed by ``optax.apply_updates``.
  """
  params = {name: np.array(v) for name, v in params.items()}
  masks = {name: np.ones(params[name].shape, dtype=bool) for name in pruned}
  history, mask_history = [], []
  for t in range(num_steps):
    grads = grad_fn(params)
    new = {}
    for name, p in params.items():
      u = (-np.asarray(learning_rate, p.dtype) * grads[name]).astype(p.dtype)
      candidate = (p + u).astype(p.dtype)
      if name in pruned:
        if refresh_due(sparsity, update_every, t, settles):
          masks[name] = keep_mask(candidate, num_to_prune(sparsity(t), candidate.size))
        candidate = np.where(masks[name], candidate, np.zeros_like(candidate))
      new[name] = candidate
    params = new
    history.append({name: v.copy() for name, v in params.items()})
    mask_history.append({name: m.copy() for name, m in masks.items()})
  return history, mask_history


def ramp_sparsity(shape: str, start: float, end: float, progress: float) -> float:
  """A ramp from ``start`` to ``end`` at ``progress`` (clipped to [0, 1]): cubic or linear, in float64."""
  progress = min(max(progress, 0.0), 1.0)
  remaining = (1.0 - progress) ** 3 if shape == "cubic" else 1.0 - progress
  return end + (start - end) * remaining


def cyclical_sparsity_with_ramp(
  step: int,
  target: float,
  num_cycles: int,
  cycle_steps: int,
  initial: float,
  ramp_fraction: float,
  ramp: str,
) -> float:
  """The cyclical schedule with a cubic, linear or step ramp, cycle by cycle.

  "step" holds the cycle's start value and jumps to the target at the first
  step ``tau`` of the cycle with ``2 * tau >= cycle_steps``. A ramp of length 0
  (``ramp_fraction == 0``) is the target from the cycle's first step.
  """
  if step >= num_cycles * cycle_steps:
    return target
  cycle, tau = divmod(step, cycle_steps)
  start = 0.0 if cycle == 0 else initial
  if ramp == "step":
    return target if 2 * tau >= cycle_steps else start
  ramp_steps = ramp_fraction * cycle_steps
  progress = 1.0 if ramp_steps == 0 else tau / ramp_steps
  return ramp_sparsity(ramp, start, target, progress)


def gradual_sparsity_with_ramp(
  step: int, target: float, begin: int, end: int, initial: float, ramp: str
) -> float:
  """Gradual pruning with a cubic, linear or step ramp between ``begin`` and ``end``.

  "step" jumps at the first step ``t >= begin`` with ``2 * (t - begin) >= end - begin``.
  An empty ramp (``end <= begin``) is the target from ``begin`` on.
  """
  if ramp == "step":
    return target if step >= begin and 2 * (step - begin) >= end - begin else initial
  if end <= begin:
    return target if step >= begin else initial
  return ramp_sparsity(ramp, initial, target, (step - begin) / (end - begin))


def block_scores(x: np.ndarray, block: Sequence[int]) -> np.ndarray:
  """Per block of ``block`` tiling the trailing dimensions (size 1 in front), the float64 sum of ``|x|``.

  A plain loop over the blocks. The sum ranks blocks like their mean (all blocks
  have the same number of entries); NaN anywhere in a block makes its score NaN.
  """
  x = _as_float64(x)
  full = (1,) * (x.ndim - len(block)) + tuple(block)
  grid = tuple(d // b for d, b in zip(x.shape, full))
  out = np.zeros(grid)
  for unit in np.ndindex(*grid):
    region = tuple(slice(u * b, (u + 1) * b) for u, b in zip(unit, full))
    out[unit] = np.sum(np.abs(x[region]))
  return out


def channel_scores(x: np.ndarray, axis: int) -> np.ndarray:
  """Per index along ``axis``, the float64 sum of squares of its slice (ranks like the L2 norm)."""
  x = _as_float64(x)
  return np.array([np.sum(np.take(x, c, axis=axis) ** 2) for c in range(x.shape[axis])])


def expand_units(
  unit_keep: np.ndarray, shape: Sequence[int], *, block: Sequence[int] = None, axis: int = None
):
  """A leaf keep-mask from a unit keep-mask: every entry of a unit (block or channel) copies it."""
  keep = np.zeros(tuple(shape), dtype=bool)
  if axis is not None:
    for c in range(shape[axis]):
      index = [slice(None)] * len(shape)
      index[axis] = c
      keep[tuple(index)] = unit_keep[c]
    return keep
  full = (1,) * (len(shape) - len(block)) + tuple(block)
  for unit in np.ndindex(*unit_keep.shape):
    keep[tuple(slice(u * b, (u + 1) * b) for u, b in zip(unit, full))] = unit_keep[unit]
  return keep


def structured_keep_mask(
  x: np.ndarray, sparsity: float, *, block: Sequence[int] = None, axis: int = None
) -> np.ndarray:
  """Keep-mask pruning ``num_to_prune(s, units)`` whole units with the smallest scores.

  Units are blocks (``block``) or channels (``axis``); ties go to the lower unit
  index in row-major order and NaN ranks above +inf (NumPy's stable argsort).
  """
  scores = channel_scores(x, axis) if axis is not None else block_scores(x, block)
  unit_keep = keep_mask(scores, num_to_prune(sparsity, scores.size))
  return expand_units(unit_keep, np.shape(x), block=block, axis=axis)


def global_block_keep_masks(
  xs: Sequence[np.ndarray], sparsity: float, block: Sequence[int]
) -> list[np.ndarray]:
  """One ranking of the blocks of all leaves (leaf order, then row-major): prune ``round(s * blocks)``."""
  scores = [block_scores(x, block) for x in xs]
  flat = np.concatenate([s.ravel() for s in scores])
  keep = keep_mask(flat, num_to_prune(sparsity, flat.size))
  out, start = [], 0
  for x, s in zip(xs, scores):
    out.append(expand_units(keep[start : start + s.size].reshape(s.shape), np.shape(x), block=block))
    start += s.size
  return out


def bits(x: np.ndarray) -> np.ndarray:
  """The raw bit pattern of an array, so that +0.0 and -0.0 (and NaNs) compare exactly."""
  x = np.asarray(x)
  return x.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize])


def assert_trees_bitwise_equal(a, b) -> None:
  """Two pytrees have the same structure and bit-identical leaves."""
  import jax

  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b, (tree_a, tree_b)
  for x, y in zip(leaves_a, leaves_b):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype, (x.dtype, y.dtype)
    np.testing.assert_array_equal(bits(x), bits(y))


def random_tree(seed: int, shapes_and_dtypes: dict) -> dict:
  """``{name: (shape, dtype)}`` to standard normal jax arrays from ``default_rng(seed)``, in dict order."""
  import jax.numpy as jnp

  rng = np.random.default_rng(seed)
  return {
    name: jnp.asarray(rng.standard_normal(shape), dtype) for name, (shape, dtype) in shapes_and_dtypes.items()
  }


def random_like(tree, seed: int):
  """Standard normal jax arrays shaped and typed like the leaves of ``tree``, in ``jax.tree`` leaf order."""
  import jax
  import jax.numpy as jnp

  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), tree)


def tanh_regression_loss(
  layers: tuple[str, str], x_key: int, y_key: int, num_examples: int, sizes: tuple[int, int]
):
  """The loss ``params -> mean((layers[1](tanh(layers[0](x))) - y) ** 2)`` of a two-layer regression.

  ``params[name]`` holds a ``kernel`` and a ``bias``; ``x`` and ``y`` are standard normal draws from
  ``jax.random.key(x_key)`` and ``jax.random.key(y_key)``, ``sizes`` their widths.
  """
  import jax
  import jax.numpy as jnp

  x = jax.random.normal(jax.random.key(x_key), (num_examples, sizes[0]))
  y = jax.random.normal(jax.random.key(y_key), (num_examples, sizes[1]))
  first, second = layers

  def loss(p):
    h = jnp.tanh(x @ p[first]["kernel"] + p[first]["bias"])
    return jnp.mean((h @ p[second]["kernel"] + p[second]["bias"] - y) ** 2)

  return loss


def run_history(
  tx, params, num_steps: int, grads_fn: Callable, *, jit: bool = True, donate: bool = False
) -> list:
  """Runs the optax transformation ``tx`` from ``params``; returns ``(params, state)`` after every step.

  Step ``t`` applies the updates of ``grads_fn(params, t)``. With ``donate``, the jitted step donates a
  copy of ``params`` and its state, and the history holds NumPy copies taken before their buffers go.
  """
  import jax
  import jax.numpy as jnp
  import optax

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  if jit:
    step = jax.jit(step, donate_argnums=(0, 1) if donate else ())
  if donate:
    params = jax.tree.map(jnp.copy, params)
  state = tx.init(params)
  history = []
  for t in range(num_steps):
    params, state = step(params, state, grads_fn(params, t))
    history.append(jax.tree.map(np.asarray, (params, state)) if donate else (params, state))
  return history


def subprocess_env(num_devices: int | None = None) -> dict[str, str]:
  """The environment for a child Python process on the CPU backend.

  The test session's XLA flags are kept (``conftest.py`` sets the compiler's
  optimisation level), with ``num_devices`` forced host devices if given.
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  flags = env.get("XLA_FLAGS", "").split()
  flags = [f for f in flags if not f.startswith("--xla_force_host_platform_device_count")]
  if num_devices:
    flags.append(f"--xla_force_host_platform_device_count={num_devices}")
  env["XLA_FLAGS"] = " ".join(flags)
  return env
