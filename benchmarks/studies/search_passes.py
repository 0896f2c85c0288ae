"""How many passes over a leaf would other exact search strategies need?

Usage:
  python benchmarks/studies/search_passes.py

A NumPy model of the selection search (no JAX, no timing): a pass counts the
entries at or below three thresholds, as one variadic reduce does in
``cyclax/_select.py``. Counts come from a sorted copy, so every strategy is
checked against the exact k-th smallest key. Strategies:

* ``radix4``: the kernel's search (three evenly spaced thresholds per pass until
  the key interval is one key), then one pass counting below/at the threshold.
* ``radix4 + endgame``: the same, but once at most three entries remain in the
  interval, one pass reads their keys (the three smallest keys in the interval),
  which gives the threshold and the below/at counts together.
* ``+ interpolation``: additionally, once the key interval is within two binades,
  thresholds go to the ranks ``k - r, k, k + r`` (``r`` = 1/16 of the entries
  left) by linear interpolation of the counts at the interval's ends; a miss
  falls back to radix4 for the rest of the search.

The mask pass, common to all, is not counted.
"""

from __future__ import annotations

import numpy as np

N = 1 << 20
SPARSITIES = (0.5, 0.9, 0.99)


def radix_thresholds(lo: int, hi: int) -> list[int]:
  size = hi - lo + 1
  q, r = size // 4, size % 4
  return [lo + max(j * q + (j * r) // 4, 1) - 1 for j in (1, 2, 3)]


def passes(keys: np.ndarray, k: int, endgame: bool, interpolate: bool) -> int:
  """Passes to find the k-th smallest key and its below/at counts."""
  ordered = np.sort(keys)
  count_le = lambda t: int(np.searchsorted(ordered, t, side="right"))
  lo, hi, below_lo, upto_hi = 0, 2**31 - 1, 0, keys.size  # count(< lo), count(<= hi)
  used, missed = 0, False
  while lo < hi:
    left = upto_hi - below_lo
    if endgame and left <= 3:
      return used + 1
    width = hi - lo
    interp = interpolate and not missed and width <= 2**24
    if interp:
      at = lambda rank: lo - 1 + (rank - below_lo) / left * (width + 1)
      r = max(left / 16, 1)
      t = sorted(int(np.clip(np.floor(at(q)), lo, hi - 1)) for q in (k - r, k, k + r))
    else:
      t = radix_thresholds(lo, hi)
    used += 1
    counts = [count_le(x) for x in t]
    m = sum(c < k for c in counts)
    missed = missed or (interp and m in (0, 3))
    lo, hi = max(([lo] + [x + 1 for x in t])[m], lo), (t + [hi])[m]
    below_lo = below_lo if m == 0 else counts[m - 1]
    upto_hi = upto_hi if m == 3 else counts[m]
  assert lo == ordered[k - 1]
  return used + 1  # the counting pass below/at the threshold


def main():
  rng = np.random.default_rng(0)
  bf16 = rng.standard_normal(N).astype(np.float32).view(np.uint32) & 0xFFFF0000
  data = {
    "normal": rng.standard_normal(N) * 0.02,
    "uniform": rng.uniform(-1, 1, N),
    "laplace": rng.laplace(size=N),
    "student-t(2)": rng.standard_t(2, N),
    "90% tiny + normal": np.where(rng.random(N) < 0.9, rng.standard_normal(N) * 1e-4, rng.standard_normal(N)),
    "50% zeros + normal": np.where(rng.random(N) < 0.5, 0.0, rng.standard_normal(N)),
    "float32 at bfloat16 precision": bf16.view(np.float32),
    "integers -5..5": rng.integers(-5, 6, N).astype(np.float32),
  }
  strategies = {"radix4": (False, False), "radix4 + endgame": (True, False), "+ interpolation": (True, True)}
  print(f"passes before the mask pass, one leaf of {N} float32 entries, at sparsities {SPARSITIES}")
  print("| data | " + " | ".join(strategies) + " |")
  print("|---" * (len(strategies) + 1) + "|")
  totals = dict.fromkeys(strategies, 0)
  for name, x in data.items():
    keys = np.abs(np.asarray(x, np.float32)).view(np.int32).astype(np.int64)
    cells = []
    for s, (endgame, interpolate) in strategies.items():
      found = [passes(keys, int(sp * N), endgame, interpolate) for sp in SPARSITIES]
      totals[s] += sum(found)
      cells.append("/".join(map(str, found)))
    print(f"| {name} | " + " | ".join(cells) + " |")
  runs = len(data) * len(SPARSITIES)
  print("| mean | " + " | ".join(f"{v / runs:.1f}" for v in totals.values()) + " |")


if __name__ == "__main__":
  main()
