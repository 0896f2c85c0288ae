"""Independent NumPy / Python-int references for the cyclax tests.

Nothing here imports cyclax: every function restates the documented contract
in the most direct way (sorting, Python integers, a plain loop), so that the
tests compare the library against a second implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


def cubic_ramp(start: float, end: float, progress: float) -> float:
  """``end + (start - end) * (1 - clip(progress, 0, 1))**3`` in float64."""
  progress = min(max(progress, 0.0), 1.0)
  return end + (start - end) * (1.0 - progress) ** 3


def cyclical_sparsity(
  step: int, target: float, num_cycles: int, cycle_steps: int, initial: float, ramp_fraction: float
) -> float:
  """The cyclical schedule's closed form, cycle by cycle."""
  if step >= num_cycles * cycle_steps:
    return target
  cycle, tau = divmod(step, cycle_steps)
  start = 0.0 if cycle == 0 else initial
  return cubic_ramp(start, target, tau / (ramp_fraction * cycle_steps))


def gradual_sparsity(step: int, target: float, begin: int, end: int, initial: float) -> float:
  """Zhu & Gupta's cubic ramp between ``begin`` and ``end``."""
  return cubic_ramp(initial, target, (step - begin) / (end - begin))


def tv_pgd(
  params: dict[str, np.ndarray],
  grad_fn: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
  learning_rate: float,
  sparsity: Callable[[int], float],
  update_every: int,
  num_steps: int,
  pruned: Sequence[str],
) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
  """The paper's Algorithm 1 with plain SGD, step by step, in NumPy.

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
        if t % update_every == 0:
          masks[name] = keep_mask(candidate, num_to_prune(sparsity(t), candidate.size))
        candidate = np.where(masks[name], candidate, np.zeros_like(candidate))
      new[name] = candidate
    params = new
    history.append({name: v.copy() for name, v in params.items()})
    mask_history.append({name: m.copy() for name, m in masks.items()})
  return history, mask_history
