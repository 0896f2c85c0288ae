"""Cyclical pruning of a model whose weights are sharded over many devices (and hosts).

One machine, 8 CPU devices forced by XLA (add ``--quick`` for a run of a few seconds,
or ``--steps N`` to stop the full-size run after N steps):

  python examples/distributed_train.py --host-devices 8

Two processes on one machine (what two hosts do), 4 devices each:

  python examples/distributed_train.py --host-devices 4 --coordinator 127.0.0.1:12355 \\
      --num-processes 2 --process-id 0 &
  python examples/distributed_train.py --host-devices 4 --coordinator 127.0.0.1:12355 \\
      --num-processes 2 --process-id 1

A real cluster: the same file, unchanged, on every host; ``--distributed`` calls
``jax.distributed.initialize()``, which finds the coordinator itself on Cloud TPU,
SLURM and Open MPI (or pass ``--coordinator``/``--num-processes``/``--process-id``).

The MLP is tensor-parallel over a ("data", "model") mesh: the first kernel is
split by columns and the second by rows over "model" (Megatron style), the batch
over "data". The training step is plain ``jax.jit``; cyclax needs no argument for
sharded params: XLA partitions its counting passes, the masks live next to their
weights, and no weight is gathered to compute them.
"""

from __future__ import annotations

import argparse
import os
import time


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="a small run that finishes in seconds")
  parser.add_argument(
    "--steps", type=int, default=None, help="stop after this many steps (default: the whole schedule)"
  )
  parser.add_argument(
    "--host-devices", type=int, default=None, help="force this many CPU devices per process"
  )
  parser.add_argument("--model-parallel", type=int, default=None, help="size of the 'model' mesh axis")
  parser.add_argument("--distributed", action="store_true", help="jax.distributed.initialize() (auto-detect)")
  parser.add_argument("--coordinator", default=None, help="host:port of process 0, e.g. 10.0.0.1:12355")
  parser.add_argument("--num-processes", type=int, default=None)
  parser.add_argument("--process-id", type=int, default=None)
  args = parser.parse_args()
  if args.steps is not None and args.steps < 1:
    parser.error(f"--steps must be a positive number of steps, got {args.steps}")
  return args


args = parse_args()
if args.host_devices:
  # Must be set before jax is imported; on GPUs/TPUs leave it out.
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.host_devices}"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import cyclax  # noqa: E402

if args.distributed or args.coordinator:
  jax.distributed.initialize(
    coordinator_address=args.coordinator, num_processes=args.num_processes, process_id=args.process_id
  )

WIDTH, IN, OUT, TARGET = 512, 64, 10, 0.9
NUM_CYCLES, CYCLE_STEPS, UPDATE_EVERY, BATCH = (3, 20, 5, 256) if args.quick else (3, 300, 25, 1024)


def log(*items) -> None:
  if jax.process_index() == 0:
    print(*items, flush=True)


def make_mesh() -> jax.sharding.Mesh:
  n = jax.device_count()
  model = args.model_parallel or min(n, 4)
  if n % model:
    raise SystemExit(f"--model-parallel {model} must divide the {n} devices")
  return jax.make_mesh((n // model, model), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto))


def init_params(key: jax.Array) -> dict[str, np.ndarray]:
  k1, k2 = jax.random.split(key)
  return {
    "w1": np.asarray(jax.random.normal(k1, (IN, WIDTH)) * np.sqrt(2.0 / IN)),
    "b1": np.zeros(WIDTH, np.float32),
    "w2": np.asarray(jax.random.normal(k2, (WIDTH, OUT)) * np.sqrt(1.0 / WIDTH)),
    "b2": np.zeros(OUT, np.float32),
  }


# Column-parallel then row-parallel: one all-reduce of activations per forward pass.
SPECS = {"w1": P(None, "model"), "b1": P("model"), "w2": P("model", None), "b2": P()}


def forward(params, x):
  h = jax.nn.relu(x @ params["w1"] + params["b1"])
  return h @ params["w2"] + params["b2"]


def batch_of(step: int, teacher: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The global batch of a step; every process computes the same one from the seed."""
  rng = np.random.default_rng(step)
  x = rng.normal(size=(BATCH, IN)).astype(np.float32)
  return x, np.argmax(np.tanh(x @ teacher), axis=-1).astype(np.int32)


def to_global(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from host data: each process places only its own shards."""
  return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])


def main() -> None:
  mesh = make_mesh()
  log(f"{jax.process_count()} process(es), {jax.device_count()} devices, mesh {dict(mesh.shape)}")
  shardings = {k: NamedSharding(mesh, s) for k, s in SPECS.items()}
  replicated = NamedSharding(mesh, P())
  params = {k: to_global(v, shardings[k]) for k, v in init_params(jax.random.key(0)).items()}
  teacher = np.random.default_rng(1234).normal(size=(IN, OUT)).astype(np.float32)

  lr = cyclax.periodic(optax.cosine_decay_schedule(1e-2, CYCLE_STEPS), CYCLE_STEPS)
  tx = optax.chain(
    optax.adamw(lr),
    cyclax.cyclical_prune(TARGET, num_cycles=NUM_CYCLES, cycle_steps=CYCLE_STEPS, update_every=UPDATE_EVERY),
  )
  # Per-weight state (Adam moments, masks) is created like its weight, so it is
  # sharded the same way; scalars (step counters) go on every device.
  opt_state = tx.init(params)
  opt_state = jax.tree.map(
    lambda a: a if isinstance(a.sharding, NamedSharding) else jax.device_put(a, replicated), opt_state
  )

  @jax.jit
  def train_step(params, opt_state, x, y):
    loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(forward(p, x), y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def evaluate(params, x, y):
    accuracy = jnp.mean(jnp.argmax(forward(params, x), -1) == y)
    sparsity = {k: jnp.mean(params[k] == 0) for k in ("w1", "w2")}
    return accuracy, sparsity

  data_sharding = NamedSharding(mesh, P("data"))
  num_steps = args.steps or NUM_CYCLES * CYCLE_STEPS
  log(
    f"{NUM_CYCLES} cycles of {CYCLE_STEPS} steps to sparsity {TARGET}, update_every {UPDATE_EVERY}, "
    f"batch {BATCH}, width {WIDTH}: {num_steps} steps"
  )
  start = time.perf_counter()
  previous_loss = None
  for step in range(num_steps):
    x, y = batch_of(step, teacher)
    params, opt_state, loss = train_step(
      params, opt_state, to_global(x, data_sharding), to_global(y, data_sharding)
    )
    # At most two steps in flight: wait for the one before. XLA:CPU runs each local
    # device's part of a collective on its own thread, from a pool of about
    # max(cores, local devices) threads; with dozens of steps queued, their launches
    # take those threads and the step in flight never completes (the processes hang).
    if previous_loss is not None:
      previous_loss.block_until_ready()
    previous_loss = loss
    if (step + 1) % CYCLE_STEPS == 0 or step + 1 == num_steps:
      x, y = batch_of(10**6, teacher)
      accuracy, sparsity = evaluate(params, to_global(x, data_sharding), to_global(y, data_sharding))
      zeros = ", ".join(f"{k} {float(v):.3f}" for k, v in sparsity.items())
      log(f"step {step + 1:4d}  loss {float(loss):.4f}  accuracy {float(accuracy):.3f}  sparsity {zeros}")

  masks = cyclax.get_masks(opt_state)
  for k in ("w1", "w2"):
    assert masks[k].sharding.is_equivalent_to(params[k].sharding, 2), (
      f"mask {k} is not placed like its weight"
    )
    local = masks[k].addressable_shards[0].data.shape
    log(f"{k}: weight and mask sharded as {params[k].sharding.spec}; local block {local}")
  log(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
  main()
