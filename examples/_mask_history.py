"""Cycle-by-cycle bookkeeping of keep-masks inside a training scan.

The examples train in a ``lax.scan`` over intervals of ``update_every`` steps,
each opened by a mask refresh, and call :func:`update` once per interval with
the masks at its end. From these snapshots alone (independently of cyclax's own
metrics) it measures, per interval:

- ``regrown``: the fraction of pruned-leaf weights kept by the interval's
  refresh and pruned by the masks just before it;
- ``survival``: of the weights regrown at the latest cycle start, the fraction
  still kept (read at a cycle's last interval: survival to the end of the cycle);
- ``regrown_share``: the fraction of the kept set that was regrown at the latest
  cycle start;
- ``dist_cycle1``, ``dist_prev_end``: ``cyclax.mask_distance`` to the masks at
  the end of cycle 1 and at the end of the previous cycle.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import cyclax


class History(NamedTuple):
  """Masks carried through the scan (lists of bool arrays, one per pruned leaf)."""

  prev: list  # the masks at the end of the previous interval
  regrown: list  # the weights regrown at the latest cycle start
  cycle1: list  # the masks at the end of cycle 1 (all True before)
  last_end: list  # the masks at the end of the previous cycle (all True before)


class Flags(NamedTuple):
  """Per interval: does its refresh open a cycle (2, 3, ...), does it close a cycle, is that cycle 1."""

  start: jax.Array
  end: jax.Array
  first_end: jax.Array


def flags(intervals: int, per_cycle: int) -> Flags:
  """The flags of ``intervals`` intervals, ``per_cycle`` of them to a cycle; scan them as ``xs``."""
  index = np.arange(intervals)
  per_cycle = max(per_cycle, 1)
  return Flags(
    jnp.asarray((index % per_cycle == 0) & (index > 0)),
    jnp.asarray((index + 1) % per_cycle == 0),
    jnp.asarray(index + 1 == per_cycle),
  )


def init(masks: list) -> History:
  ones = [jnp.ones_like(m) for m in masks]
  return History(ones, [jnp.zeros_like(m) for m in masks], ones, ones)


def _count(masks: list) -> jax.Array:
  return sum(jnp.sum(m, dtype=jnp.int32) for m in masks).astype(jnp.float32)


def update(history: History, masks: list, flag: Flags) -> tuple[History, dict]:
  """The statistics of one interval, and the history carried to the next."""
  total = sum(m.size for m in masks)
  new_here = [m & ~q for m, q in zip(masks, history.prev)]
  regrown = [jnp.where(flag.start, n, r) for n, r in zip(new_here, history.regrown)]
  alive = _count([r & m for r, m in zip(regrown, masks)])
  stats = {
    "regrown": _count(new_here) / total,
    "survival": alive / jnp.maximum(_count(regrown), 1.0),
    "regrown_share": alive / jnp.maximum(_count(masks), 1.0),
    "dist_cycle1": cyclax.mask_distance(history.cycle1, masks),
    "dist_prev_end": cyclax.mask_distance(history.last_end, masks),
  }
  history = History(
    masks,
    regrown,
    [jnp.where(flag.first_end, m, c) for m, c in zip(masks, history.cycle1)],
    [jnp.where(flag.end, m, e) for m, e in zip(masks, history.last_end)],
  )
  return history, stats


def at_cycle_ends(values: np.ndarray, per_cycle: int, num_cycles: int) -> np.ndarray:
  """``values`` (..., intervals) at the last interval of every cycle: (..., num_cycles)."""
  return np.asarray(values)[..., per_cycle - 1 :: per_cycle][..., :num_cycles]


def at_cycle_starts(values: np.ndarray, per_cycle: int, num_cycles: int) -> np.ndarray:
  """``values`` (..., intervals) at the first interval of cycles 2, 3, ...: (..., num_cycles - 1)."""
  return np.asarray(values)[..., per_cycle::per_cycle][..., : num_cycles - 1]
