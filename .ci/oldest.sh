#!/usr/bin/env bash
# The core tests (those that need neither flax nor the other test-only packages) in a fresh virtual
# environment holding the oldest jax, jaxlib and optax that pyproject.toml declares. pip installs
# cyclax with those exact versions, so the declared lower bounds must also resolve together.
set -euo pipefail
cd "$(dirname "$0")/.."

# The step and its schedules, reading the state, and the two sharded runs that older jax releases
# broke (explicit sharding mode, shard_map with a named axis).
CORE_TESTS=(
  tests/test_pruning.py
  tests/test_schedules.py
  tests/test_inspect.py
  tests/test_distributed.py::test_sharded_jit_explicit_mode_matches_unsharded_bit_for_bit
  tests/test_distributed.py::test_shard_map_with_axis_name_matches_unsharded_including_ties
)

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
oldest="$(python3 - <<'PY'
import re, tomllib

with open("pyproject.toml", "rb") as f:
  deps = tomllib.load(f)["project"]["dependencies"]
pins = []
for dep in deps:
  name, low = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*", dep).groups()
  pins.append(f"{name}=={low}")
print(" ".join(pins))
PY
)"
start=$SECONDS
python3 -m venv "$scratch/venv"
"$scratch/venv/bin/python" -m pip install -q $oldest -e . pytest pytest-xdist hypothesis
echo "oldest versions: $("$scratch/venv/bin/python" -c 'import jax, jaxlib, optax; print("jax", jax.__version__, "jaxlib", jaxlib.__version__, "optax", optax.__version__)') (installed in $((SECONDS - start)) s)"
"$scratch/venv/bin/python" -m pytest -q -n 4 -p no:cacheprovider "${CORE_TESTS[@]}"
echo "oldest-versions job: $((SECONDS - start)) s"
