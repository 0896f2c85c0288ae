"""Small helpers shared by the examples: command line, confidence intervals, tables, reports, figures."""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Optional

REPO_DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def parse_args(
  description: str,
  replot: bool = False,
  add_options: Optional[Callable[[argparse.ArgumentParser], None]] = None,
) -> argparse.Namespace:
  """The two options every example takes: ``--quick`` and ``--out``.

  Args:
    description: the example's one-line description, shown by ``--help``.
    replot: also offer ``--replot`` (redraw figures and tables from saved results).
    add_options: called with the parser to add an example's own options.

  Returns:
    The parsed namespace with ``quick`` (bool) and ``out`` (a directory that exists).
  """
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument(
    "--quick", action="store_true", help="a small run (under a minute) that checks the pipeline end to end"
  )
  parser.add_argument(
    "--out",
    default=None,
    help="directory for the PNGs and tables (default: docs/, or a temp dir with --quick)",
  )
  if replot:
    parser.add_argument(
      "--replot", action="store_true", help="redraw the figures and tables from the results saved in --out"
    )
  if add_options is not None:
    add_options(parser)
  args = parser.parse_args()
  if args.out is None:
    args.out = tempfile.mkdtemp(prefix="cyclax-quick-") if args.quick else REPO_DOCS
  os.makedirs(args.out, exist_ok=True)
  return args


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
  """Wilson score interval for a binomial proportion (95% by default).

  Args:
    successes: number of successes.
    trials: number of trials (> 0).
    z: the normal quantile of the interval.

  Returns:
    ``(low, high)``.

  Example:
    >>> [round(v, 3) for v in wilson_interval(50, 100)]
    [0.404, 0.596]
  """
  p = successes / trials
  denom = 1.0 + z * z / trials
  centre = (p + z * z / (2 * trials)) / denom
  half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
  return max(0.0, centre - half), min(1.0, centre + half)


def two_proportion_p_value(k1: int, n1: int, k2: int, n2: int) -> float:
  """Two-sided p-value of the pooled two-proportion z-test that both rates are equal.

  Args:
    k1: successes in the first sample.
    n1: size of the first sample.
    k2: successes in the second sample.
    n2: size of the second sample.

  Returns:
    The p-value (1.0 when both samples are all successes or all failures).

  Example:
    >>> round(two_proportion_p_value(30, 100, 300, 1000), 3)
    1.0
  """
  pooled = (k1 + k2) / (n1 + n2)
  var = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
  if var == 0:
    return 1.0
  z = abs(k1 / n1 - k2 / n2) / math.sqrt(var)
  return math.erfc(z / math.sqrt(2))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """A GitHub markdown table.

  Example:
    >>> print(markdown_table(["a", "b"], [["1", "2"]]))
    | a | b |
    |---|---|
    | 1 | 2 |
  """
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def save_markdown(folder: str, name: str, text: str) -> None:
  """Writes the markdown report ``text`` to ``folder/name`` and prints it."""
  with open(os.path.join(folder, name), "w") as f:
    f.write(text)
  print(text)


def accuracy_panel(ax, sparsities: Sequence[float], accs: dict, dense: float) -> None:
  """Test accuracy (%) against sparsity on a matplotlib ``ax`` with a logit x axis ticked at ``sparsities``.

  ``accs`` maps a method to its accuracies (%), shape ``(seeds, len(sparsities))``: one line each, mean
  +- std over seeds; ``dense`` is the dense model's accuracy (%), a dotted line.
  """
  for method, acc in accs.items():
    ax.errorbar(list(sparsities), acc.mean(0), yerr=acc.std(0), marker="o", capsize=3, label=method)
  ax.axhline(dense, color="gray", ls=":", label="dense")
  ax.set_xscale("logit")
  ax.set_xticks(list(sparsities), minor=False)
  ax.minorticks_off()
  ax.set_xticklabels([f"{s:.0%}" for s in sparsities])
  ax.set_xlabel("sparsity of every kernel")
  ax.set_ylabel("test accuracy (%)")
