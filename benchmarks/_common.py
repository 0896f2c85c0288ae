"""Shared pieces of the benchmarks: parameter trees, their command-line options, timing and tables.

Every figure is a median over repeats with its spread (min-max); every ratio is
taken between timings of the same run, with the methods interleaved repeat by
repeat so that a change of machine load hits all of them alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# name -> list of (shape) of the prunable (ndim >= 2) leaves, plus 1-D leaves left dense.
TREES = ("10x1m", "100m", "1b")


def _transformer(vocab: int, d: int, layers: int) -> dict[str, tuple[int, ...]]:
  shapes = {"embed": (vocab, d)}
  for i in range(layers):
    shapes |= {
      f"layer{i:02d}/qkv": (d, 3 * d),
      f"layer{i:02d}/out": (d, d),
      f"layer{i:02d}/mlp_in": (d, 4 * d),
      f"layer{i:02d}/mlp_out": (4 * d, d),
      f"layer{i:02d}/ln": (d,),
      f"layer{i:02d}/mlp_in_bias": (4 * d,),
    }
  return shapes


def tree_shapes(name: str) -> dict[str, tuple[int, ...]]:
  """Leaf shapes of a named tree: ``10x1m``, ``100m`` (BERT-base-like), ``1b``."""
  if name == "10x1m":
    return {f"w{i}": (1024, 1024) for i in range(10)}
  if name == "100m":
    return _transformer(30522, 768, 12)
  if name == "1b":
    return _transformer(32000, 2048, 19)
  raise ValueError(f"unknown tree {name!r}; choose from {TREES}.")


def make_tree(name: str, seed: int = 0, dtype=jnp.float32) -> dict[str, jax.Array]:
  """Random normal params (scaled like a trained net's spread of magnitudes)."""
  shapes = tree_shapes(name)
  keys = jax.random.split(jax.random.key(seed), len(shapes))
  make = jax.jit(lambda k, shape: jax.random.normal(k, shape, dtype) * 0.02, static_argnums=1)
  return {n: jax.block_until_ready(make(k, s)) for k, (n, s) in zip(keys, shapes.items())}


def is_prunable(shape: Sequence[int]) -> bool:
  """The benchmarks prune kernels (two or more dims); biases and norm scales stay dense."""
  return len(shape) >= 2


def prunable(tree: dict[str, jax.Array]) -> list[jax.Array]:
  return [v for v in tree.values() if is_prunable(v.shape)]


def count_params(leaves: Sequence[jax.Array]) -> int:
  return int(sum(x.size for x in leaves))


def time_interleaved(
  fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1, settle: int = 0
) -> dict[str, np.ndarray]:
  """Seconds per call of every function, interleaved repeat by repeat.

  With ``settle`` > 0 each timed call follows that many untimed calls of the same
  function, so it is not timed right after a different function (whose large
  temporaries the allocator may just have handed back to the OS).
  """
  for _ in range(warmup):
    for f in fns.values():
      jax.block_until_ready(f())
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, f in fns.items():
      for _ in range(settle):
        jax.block_until_ready(f())
      start = time.perf_counter()
      jax.block_until_ready(f())
      times[name].append(time.perf_counter() - start)
  return {name: np.asarray(t) for name, t in times.items()}


def tree_timing_parser(doc: str, repeats: int, skip_help: str) -> argparse.ArgumentParser:
  """A benchmark's parser with the options of timing one of ``TREES``: tree, repeats, settle and skip."""
  parser = argparse.ArgumentParser(description=doc.splitlines()[0])
  parser.add_argument("--tree", choices=TREES, default="10x1m")
  parser.add_argument("--repeats", type=int, default=repeats)
  parser.add_argument(
    "--settle",
    type=int,
    default=1,
    help="untimed calls of the same function right before each timed one (0: plain interleaving)",
  )
  parser.add_argument("--skip", default="", help=skip_help)
  return parser


def fmt_time(t: np.ndarray) -> str:
  """Median and min-max in ms or s."""
  med, lo, hi = np.median(t), np.min(t), np.max(t)
  if med >= 1.0:
    return f"{med:.2f} s [{lo:.2f}-{hi:.2f}]"
  return f"{med * 1e3:.1f} ms [{lo * 1e3:.1f}-{hi * 1e3:.1f}]"


def fmt_ratio(a: np.ndarray, b: np.ndarray) -> str:
  """Median of per-repeat ratios a/b with its min-max (same repeat = same load)."""
  r = np.asarray(a) / np.asarray(b)
  return f"{np.median(r):.2f}x [{np.min(r):.2f}-{np.max(r):.2f}]"


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
  widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
  line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
  print(line(header))
  print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
  for r in rows:
    print(line(r))


def machine() -> str:
  """One line: cores, CPU model, load, jax version."""
  model = "unknown CPU"
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  return (
    f"nproc={os.cpu_count()}, {model}, load average {load:.1f}, python {platform.python_version()}, "
    f"jax {jax.__version__}, backend {jax.default_backend()}"
  )
