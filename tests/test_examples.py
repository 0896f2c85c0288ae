"""Smoke tests: every example's ``--quick`` mode runs and writes finite outputs."""

import json
import math
import os
import re
import socket
import subprocess
import sys
import time

import reference

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


def _run_for_json(script: str, out, files: tuple[str, ...]) -> dict:
  """Runs ``script --quick`` into the folder ``out``; checks it wrote ``files``, returns the JSON it wrote."""
  _run(script, str(out))
  for name in files:
    assert (out / name).stat().st_size > 0, name
  with open(out / script.replace(".py", ".json")) as f:
    return json.load(f)


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
  data = _run_for_json(
    "digits.py", tmp_path, ("digits.md", "accuracy_vs_sparsity.png", "regrowth.png", "schedule.png")
  )
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
    for key in ("survival", "regrown_share", "dist_cycle1", "dist_prev_end", "regrown_at_refresh"):
      values = _flatten(res["methods"]["cyclical"][key])
      assert values and all(0.0 <= v <= 1.0 for v in values), key
  assert "cycle by cycle" in (tmp_path / "digits.md").read_text()


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


def test_quickstart_shows_the_drop_at_each_cycle_start_and_prunes_kernels_to_the_target():
  out = _run_plain(os.path.join(EXAMPLES, "quickstart.py"))
  rows = [
    (int(step), int(cycle), float(sparsity), float(acc), "cycle start" in rest)
    for step, cycle, sparsity, acc, rest in re.findall(
      r"^\s*(\d+)\s+(\d+)\s+(\d\.\d+)\s+(\d\.\d+)(.*)$", out, re.M
    )
  ]
  # The first and the last step of each of the 3 cycles of 200 steps.
  assert [(step, cycle, start) for step, cycle, _, _, start in rows] == [
    (1, 1, True),
    (200, 1, False),
    (201, 2, True),
    (400, 2, False),
    (401, 3, True),
    (600, 3, False),
  ]
  sparsity = [s for _, _, s, _, _ in rows]
  # Kernels of 32x256, 256x256 and 256x10 entries: the exact counts at 0, 0.45 (cycle starts) and 0.9.
  sizes = [32 * 256, 256 * 256, 256 * 10]
  at = lambda s: sum(reference.num_to_prune(s, n) for n in sizes) / sum(sizes)
  expected = [at(0.0), at(0.9), at(0.45), at(0.9), at(0.45), at(0.9)]
  assert all(abs(got - want) < 1e-3 for got, want in zip(sparsity, expected)), sparsity
  accuracy = [a for _, _, _, a, _ in rows]
  assert all(0.0 <= a <= 1.0 for a in accuracy) and accuracy[-1] > 0.5  # 10 classes: chance is about 0.1
  kernels = re.findall(r"dense\d/kernel\s+(\d\.\d+)", out)
  biases = re.findall(r"dense\d/bias\s+(\d\.\d+)", out)
  assert len(kernels) == 3 and all(abs(float(k) - 0.9) < 1e-3 for k in kernels)
  assert len(biases) == 3 and all(float(b) < 0.5 for b in biases)


def test_distributed_train_quick_runs_on_eight_host_devices():
  out = _run_plain(os.path.join(EXAMPLES, "distributed_train.py"), "--host-devices", "8", "--quick")
  assert "8 devices" in out and "done in" in out
  steps = re.findall(r"loss (\S+)\s+accuracy (\S+)\s+sparsity w1 (\S+), w2 (\S+)", out)
  assert steps and all(math.isfinite(float(v)) for row in steps for v in row)
  assert "weight and mask sharded as" in out


def test_distributed_train_full_size_as_two_processes_finishes_and_prunes_on_schedule(tmp_path):
  # The full-size model and batch (no --quick) as two processes of 4 devices, for 100 steps: far
  # more than the few dozen steps XLA:CPU can queue before a collective stalls, so a training
  # loop that runs ahead of the devices hangs here (and is killed at the deadline).
  steps, deadline = 100, time.monotonic() + 240
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  logs = [tmp_path / f"process{i}.log" for i in range(2)]
  procs = []
  try:
    for i, log in enumerate(logs):
      with open(log, "w") as f:
        procs.append(
          subprocess.Popen(
            [sys.executable, os.path.join(EXAMPLES, "distributed_train.py"), "--host-devices", "4"]
            + ["--steps", str(steps), "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
            + ["--process-id", str(i)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
          )
        )
    for p in procs:
      try:
        p.wait(timeout=max(deadline - time.monotonic(), 1.0))
      except subprocess.TimeoutExpired:
        pass
  finally:
    # Whatever happened (a hang, a failed process), no process outlives the test.
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  outs = [log.read_text() for log in logs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, f"exit code {p.returncode} (-9: killed at the deadline):\n{out[-4000:]}"
  out = outs[0]
  assert "2 process(es), 8 devices" in out and "done in" in out
  config = re.search(
    r"(\d+) cycles of (\d+) steps to sparsity (\S+), update_every (\d+), "
    r"batch (\d+), width (\d+): (\d+) steps",
    out,
  )
  assert config, out
  cycles, cycle_steps, update_every, batch, width, ran = (int(config.group(i)) for i in (1, 2, 4, 5, 6, 7))
  target = float(config.group(3))
  assert (batch, width, ran) == (1024, 512, steps) and steps < cycle_steps  # full size, inside cycle 1
  rows = re.findall(r"step\s+(\d+)\s+loss (\S+)\s+accuracy (\S+)\s+sparsity w1 (\S+), w2 (\S+)", out)
  assert [int(row[0]) for row in rows] == [steps]
  loss, accuracy, zeros_w1, zeros_w2 = (float(v) for v in rows[0][1:])
  assert math.isfinite(loss) and 0.0 <= accuracy <= 1.0
  # The masks come from the last refresh of the documented cadence (counts 0..steps-1), which
  # prunes each kernel (64 x width and width x 10 entries) to the schedule's exact count.
  schedule = lambda t: reference.cyclical_sparsity(t, target, cycles, cycle_steps, target / 2, 0.8)
  settles = reference.cyclical_settle_steps(cycles, cycle_steps, 0.8)
  last = max(t for t in range(steps) if reference.refresh_due(schedule, update_every, t, settles))
  for got, size in ((zeros_w1, 64 * width), (zeros_w2, width * 10)):
    want = reference.num_to_prune(schedule(last), size) / size
    assert want > 0.5 and abs(got - want) < 1e-3, (got, want, last)
  assert out.count("weight and mask sharded as") == 2


def test_moment_reset_quick_prints_a_finite_comparison():
  out = _run_plain(os.path.join(EXAMPLES, "moment_reset.py"), "--quick")
  rows = [line for line in out.splitlines() if line.startswith("| kept") or line.startswith("| zeroed")]
  assert len(rows) == 2
  values = _numbers("\n".join(rows))
  assert values and all(math.isfinite(v) for v in values)
  assert "paired test-accuracy difference" in out


def test_channels_quick_shrinks_the_channel_pruned_mlp_without_changing_it(tmp_path):
  _run("channels.py", str(tmp_path))
  table = (tmp_path / "channels.md").read_text()
  rows = {
    line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
    for line in table.splitlines()
    if re.match(r"\| (dense|masked|shrunk) \|", line)
  }
  assert set(rows) == {"dense", "masked", "shrunk"}
  # the masked and the shrunk model are the same network: same accuracy, fewer stored params
  assert rows["masked"][0] == rows["shrunk"][0] and 0.0 <= float(rows["shrunk"][0]) <= 100.0
  stored = {name: int(row[2].replace(",", "")) for name, row in rows.items()}
  assert stored["shrunk"] < stored["masked"] == stored["dense"]
  widths = [int(w) for w in rows["shrunk"][1].split(" / ")]
  assert all(0 < w < int(rows["dense"][1].split(" / ")[0]) for w in widths)
  times = [float(row[4]) for row in rows.values()]
  assert all(math.isfinite(t) and t > 0 for t in times)
  gap = float(re.search(r"masked and the shrunk model on the test set: (\S+)\.\n", table).group(1))
  assert gap < 1e-4


def test_mnist1d_quick_writes_finite_results_tables_and_plots(tmp_path):
  data = _run_for_json(
    "mnist1d.py",
    tmp_path,
    ("mnist1d.md", "mnist1d_accuracy.png", "mnist1d_regrowth.png", "mnist1d_schedules.png"),
  )
  results = data["results"]
  methods = {label.split("/")[0] for label in results if label != "dense"}
  assert {"one-shot", "gradual", "cyclical", "no-drop"} <= methods
  targets = data["config"]["sparsities"]
  seeds = data["config"]["seeds"]
  for label, entry in results.items():
    if label == "dense":
      assert len(entry["acc"]) == seeds and all(0.0 <= a <= 1.0 for a in entry["acc"])
      continue
    assert len(entry["final_acc"]) == seeds
    assert all(0.0 <= a <= 1.0 for a in _flatten(entry["final_acc"])), label
    for row in entry["measured_sparsity"]:
      assert all(abs(got - want) < 0.01 for got, want in zip(row, targets)), (label, row)
    curves = entry["mean"]
    for key in ("acc", "regrown", "survival", "regrown_share", "dist_cycle1", "dist_prev_end"):
      values = _flatten(curves[key])
      assert values and all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values), (label, key)
  table = (tmp_path / "mnist1d.md").read_text()
  assert "cyclical - gradual" in table and "Table 5" in table and "survival" in table
  rows = "\n".join(line for line in table.splitlines() if line.startswith("| "))
  assert all(math.isfinite(v) for v in _numbers(rows))
