"""Cyclical channel pruning of an MLP on scikit-learn's digits, then a really smaller model.

An MLP 64 -> H -> H -> 10 (Flax NNX) is trained twice with the same optimizer,
steps and batches: dense, and with ``cyclax.cyclical_prune(...,
pattern=cyclax.Channel(-1))`` on the two hidden kernels, which removes whole
output units (kernel columns). ``cyclax.shrink_dense_stack`` then drops the
pruned units (and the next layer's matching input rows), folding the constant
output of each pruned unit into the next bias. Three models are compared side
by side in one run:

- dense: the dense-trained MLP;
- masked: the channel-pruned MLP at full size (zero columns stored);
- shrunk: the same network with the pruned units removed.

For each: held-out accuracy, stored and non-zero parameters, and the time of a
jitted batched forward pass (the test set tiled to ``BATCH`` rows), timed
interleaved (each round runs every model once, in rotating order) and reported
as the median over rounds and its ratio to the dense model.

Run ``python examples/channels.py`` (writes ``docs/channels.md``) or
``--quick`` for a smoke test.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import markdown_table, parse_args, save_markdown
from _training import MLP, load_digits_split, minibatch_step
from flax import nnx

import cyclax


class Config(NamedTuple):
  """Sizes of one run."""

  hidden: int = 512
  sparsity: float = 0.75  # fraction of the hidden units pruned
  num_cycles: int = 3
  cycle_steps: int = 600
  update_every: int = 10
  batch_size: int = 128
  learning_rate: float = 2e-3
  inference_batch: int = 4096
  timing_rounds: int = 41
  seed: int = 0


QUICK = Config(hidden=128, num_cycles=2, cycle_steps=100, inference_batch=2048, timing_rounds=9)


def hidden_kernels(path: tuple, leaf: jax.Array) -> bool:
  """Prune the kernels of the hidden layers (0 and 1); the output layer and the biases stay dense."""
  names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
  return "kernel" in names and names[1] in ("0", "1")


def train(model: MLP, data, cfg: Config, *, prune: bool):
  """Adam, cosine learning rate restarted every cycle; returns the trained model and the optimizer state."""
  x_train, y_train, _, _ = data
  graphdef, params = nnx.split(model, nnx.Param)
  lr = cyclax.periodic(optax.cosine_decay_schedule(cfg.learning_rate, cfg.cycle_steps), cfg.cycle_steps)
  tx = optax.adam(lr)
  if prune:
    tx = optax.chain(
      tx,
      cyclax.cyclical_prune(
        cfg.sparsity,
        num_cycles=cfg.num_cycles,
        cycle_steps=cfg.cycle_steps,
        update_every=cfg.update_every,
        filter=hidden_kernels,
        pattern=cyclax.Channel(-1),
      ),
    )

  step = minibatch_step(graphdef, tx, x_train, y_train, cfg.batch_size)

  @jax.jit
  def run(p, key):
    steps = cfg.num_cycles * cfg.cycle_steps
    (p, state), _ = jax.lax.scan(step, (p, tx.init(p)), jax.random.split(key, steps))
    return p, state

  params, state = run(params, jax.random.key(cfg.seed + 1))
  return nnx.merge(graphdef, params), state


def count(model: MLP) -> tuple[int, int]:
  """Stored and non-zero parameters."""
  leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
  return sum(int(x.size) for x in leaves), sum(int(jnp.count_nonzero(x)) for x in leaves)


def time_forward(models: dict, x: jax.Array, rounds: int) -> dict[str, list[float]]:
  """Seconds per jitted forward pass of every model, interleaved: each round runs them all, rotated."""
  fns = {}
  for name, model in models.items():
    graphdef, params = nnx.split(model, nnx.Param)
    fn = jax.jit(lambda p, v, g=graphdef: nnx.merge(g, p)(v))
    fn(params, x).block_until_ready()  # compile and warm up
    fns[name] = (fn, params)
  times = {name: [] for name in models}
  names = list(models)
  for r in range(rounds):
    for name in names[r % len(names) :] + names[: r % len(names)]:
      fn, params = fns[name]
      start = time.perf_counter()
      fn(params, x).block_until_ready()
      times[name].append(time.perf_counter() - start)
  return times


def main() -> None:
  args = parse_args(__doc__.splitlines()[0])
  cfg = QUICK if args.quick else Config()
  data = load_digits_split()
  _, _, x_test, y_test = data

  dense, _ = train(MLP((64, cfg.hidden, cfg.hidden, 10), nnx.Rngs(cfg.seed)), data, cfg, prune=False)
  masked, state = train(MLP((64, cfg.hidden, cfg.hidden, 10), nnx.Rngs(cfg.seed)), data, cfg, prune=True)
  masks = cyclax.get_masks(state)
  small = nnx.clone(masked)
  small.layers = nnx.List(cyclax.shrink_dense_stack(masked.layers, masks["layers"]))
  widths = [layer.out_features for layer in small.layers[:-1]]
  kept = [int(np.asarray(masks["layers"][i]["kernel"]).any(axis=0).sum()) for i in (0, 1)]
  assert widths == kept, (widths, kept)

  models = {"dense": dense, "masked": masked, "shrunk": small}
  logits = {name: model(x_test) for name, model in models.items()}
  gap = float(jnp.max(jnp.abs(logits["masked"] - logits["shrunk"])))
  batch = jnp.tile(x_test, (-(-cfg.inference_batch // x_test.shape[0]), 1))[: cfg.inference_batch]
  times = time_forward(models, batch, cfg.timing_rounds)
  base = float(np.median(times["dense"]))
  rows = []
  for name, model in models.items():
    acc = float(jnp.mean(jnp.argmax(logits[name], -1) == y_test))
    stored, nonzero = count(model)
    hidden = [layer.out_features for layer in model.layers[:-1]]
    med = float(np.median(times[name]))
    rows.append(
      [
        name,
        f"{100 * acc:.2f}",
        " / ".join(str(h) for h in hidden),
        f"{stored:,}",
        f"{nonzero:,}",
        f"{1e3 * med:.3f}",
        f"{base / med:.2f}x",
      ]
    )
  header = [
    "model",
    "test accuracy (%)",
    "hidden units",
    "stored params",
    "non-zero params",
    f"median forward, batch {cfg.inference_batch} (ms)",
    "speed-up vs dense",
  ]
  table = markdown_table(header, rows)
  command = "python examples/channels.py" + (" --quick" if args.quick else "")
  text = "\n".join(
    [
      "# Channel pruning that makes the model smaller",
      "",
      f"Command: `{command}` (JAX {jax.__version__}, backend {jax.default_backend()}, "
      f"{jax.device_count()} device(s)).",
      "",
      f"MLP 64 -> {cfg.hidden} -> {cfg.hidden} -> 10 on scikit-learn digits ({x_test.shape[0]} test images), "
      f"Adam ({cfg.learning_rate}, cosine restarted every cycle), {cfg.num_cycles} cycles of "
      f"{cfg.cycle_steps} steps, batch {cfg.batch_size}, seed {cfg.seed}. The masked model is trained with "
      f"`cyclax.cyclical_prune({cfg.sparsity}, num_cycles={cfg.num_cycles}, cycle_steps={cfg.cycle_steps}, "
      f"update_every={cfg.update_every}, pattern=cyclax.Channel(-1))` on the two hidden kernels; "
      "`cyclax.shrink_dense_stack` removes its pruned units. Forward time: the jitted forward pass on "
      f"{cfg.inference_batch} rows, median of {cfg.timing_rounds} interleaved rounds.",
      "",
      table,
      "",
      f"Largest |logit difference| between the masked and the shrunk model on the test set: {gap:.2e}.",
      "",
    ]
  )
  save_markdown(args.out, "channels.md", text)
  print(f"wrote {args.out}/channels.md")


if __name__ == "__main__":
  main()
