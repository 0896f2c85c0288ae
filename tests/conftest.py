"""Makes the NumPy reference implementation (`tests/reference.py`) importable from every test file."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Compile at LLVM's lowest optimisation level: about a quarter less CPU time for the suite. The
# tests check exact results (masks, counts, bit-for-bit equality of two runs in one process),
# which do not depend on it; child processes keep the flag (`reference.subprocess_env`).
os.environ["XLA_FLAGS"] = " ".join(
  [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]
).strip()
