"""Smoke tests: every example's ``--quick`` mode runs and writes finite outputs."""

import json
import math
import os
import re
import subprocess
import sys

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _run(script: str, out: str) -> str:
  result = subprocess.run(
    [sys.executable, os.path.join(EXAMPLES, script), "--quick", "--out", out],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-4000:]
  return result.stdout


def _numbers(text: str) -> list[float]:
  return [float(x) for x in re.findall(r"-?\d+\.\d+|nan|inf", text)]


def test_linear_recovery_quick_writes_a_finite_table(tmp_path):
  _run("linear_recovery.py", str(tmp_path))
  table = (tmp_path / "linear_recovery.md").read_text()
  rows = [line for line in table.splitlines() if re.match(r"\| (2|4|10) \|", line)]
  assert len(rows) == 6  # three sample sizes x two kinds of alpha
  values = _numbers("\n".join(rows))
  assert values and all(math.isfinite(v) for v in values)
  rates = [float(x) for row in rows for x in re.findall(r"(\d\.\d\d) \[", row)]
  assert len(rates) == 12 and all(0.0 <= r <= 1.0 for r in rates)


def test_digits_quick_writes_finite_results_and_plots(tmp_path):
  _run("digits.py", str(tmp_path))
  for name in ("digits.md", "accuracy_vs_sparsity.png", "regrowth.png", "schedule.png"):
    assert (tmp_path / name).stat().st_size > 0, name
  with open(tmp_path / "digits.json") as f:
    data = json.load(f)
  results = data["results"]
  assert results
  for res in results.values():
    for method in ("one-shot", "gradual", "cyclical"):
      entry = res["methods"][method]
      for key in ("final_acc", "acc_curve", "regrown", "measured_sparsity"):
        flat = _flatten(entry[key])
        assert flat and all(math.isfinite(v) for v in flat), (method, key)
      accs = _flatten(entry["final_acc"])
      assert all(0.0 <= a <= 1.0 for a in accs)


def _flatten(x) -> list[float]:
  if isinstance(x, list):
    return [v for item in x for v in _flatten(item)]
  return [float(x)]


def _run_plain(*args: str, env: dict | None = None) -> str:
  result = subprocess.run(
    [sys.executable, *args], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
  )
  assert result.returncode == 0, result.stderr[-4000:]
  return result.stdout


def test_quickstart_prunes_every_kernel_to_the_target():
  out = _run_plain(os.path.join(EXAMPLES, "quickstart.py"))
  kernels = re.findall(r"dense\d/kernel\s+(\d\.\d+)", out)
  biases = re.findall(r"dense\d/bias\s+(\d\.\d+)", out)
  assert len(kernels) == 3 and all(abs(float(k) - 0.9) < 1e-3 for k in kernels)
  assert len(biases) == 3 and all(float(b) < 0.5 for b in biases)
  assert all(math.isfinite(v) for v in _numbers(out))


def test_distributed_train_quick_runs_on_eight_host_devices():
  out = _run_plain(os.path.join(EXAMPLES, "distributed_train.py"), "--host-devices", "8", "--quick")
  assert "8 devices" in out and "done in" in out
  steps = re.findall(r"loss (\S+)\s+accuracy (\S+)\s+sparsity w1 (\S+), w2 (\S+)", out)
  assert steps and all(math.isfinite(float(v)) for row in steps for v in row)
  assert "weight and mask sharded as" in out


def test_moment_reset_quick_prints_a_finite_comparison():
  out = _run_plain(os.path.join(EXAMPLES, "moment_reset.py"), "--quick")
  rows = [line for line in out.splitlines() if line.startswith("| kept") or line.startswith("| zeroed")]
  assert len(rows) == 2
  values = _numbers("\n".join(rows))
  assert values and all(math.isfinite(v) for v in values)
  assert "paired test-accuracy difference" in out
