"""What does cyclax add to a whole training step (forward, backward and optimizer)?

Usage (from the ``benchmarks/`` directory):
  python train_step.py --repeats 7
  python train_step.py --models transformer --batch 4 --seq 64

Two models, plain JAX, gradients computed inside the jitted step, params and
optimizer state donated:

- ``cnn``: the CNN of ``examples/digits.py`` (3x3 convolutions with 16 and 32
  channels, 2x2 average pooling, a linear head; 6.1K params) on batches of 64
  random 8x8 images. One timed call runs ``--cnn-steps`` steps, since one step
  takes well under a millisecond;
- ``transformer``: 12 pre-norm blocks, d 768, 12 heads, MLP 3072, vocabulary
  30522 with tied embeddings (108.5M params, 108.4M of them in pruned leaves),
  next-token loss on ``--batch`` sequences of ``--seq`` random tokens.

For each optimizer (``optax.sgd(1e-3)``, ``optax.adamw(1e-3)``): the optimizer
alone, ``optax.chain(opt, cyclax.magnitude_prune(0.9, update_every=10**6))``
on the default path (``refresh_masks=None``: the compiled step decides, and no
timed step refreshes), the same default path with the chain built by
``cyclax.chain`` instead, and the static path (``refresh_masks=False``: the
stored masks applied). All rows alternate call by call; ratios per repeat.
"""

from __future__ import annotations

import argparse
import functools
import resource
import time

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import cyclax

SPARSITY = 0.9
NEVER = 10**6
OPTIMIZERS = {"sgd": lambda: optax.sgd(1e-3), "adamw": lambda: optax.adamw(1e-3)}


# ---- the digits CNN (examples/digits.py), in plain JAX ------------------------------------------


def cnn_init(key):
  k1, k2, k3 = jax.random.split(key, 3)
  he = lambda k, shape, fan_in: jax.random.normal(k, shape) * jnp.sqrt(2.0 / fan_in)
  return {
    "conv1/kernel": he(k1, (3, 3, 1, 16), 9),
    "conv1/bias": jnp.zeros(16),
    "conv2/kernel": he(k2, (3, 3, 16, 32), 144),
    "conv2/bias": jnp.zeros(32),
    "head/kernel": he(k3, (2 * 2 * 32, 10), 128),
    "head/bias": jnp.zeros(10),
  }


def _conv(x, w, b):
  y = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y + b


def _avg_pool(x):
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def cnn_loss(params, batch):
  x, labels = batch
  x = _avg_pool(jax.nn.relu(_conv(x, params["conv1/kernel"], params["conv1/bias"])))
  x = _avg_pool(jax.nn.relu(_conv(x, params["conv2/kernel"], params["conv2/bias"])))
  logits = x.reshape(x.shape[0], -1) @ params["head/kernel"] + params["head/bias"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def cnn_batch(key, batch):
  kx, ky = jax.random.split(key)
  return jax.random.uniform(kx, (batch, 8, 8, 1)), jax.random.randint(ky, (batch,), 0, 10)


# ---- a BERT-base-sized transformer block stack ---------------------------------------------------


def transformer_init(key, vocab=30522, d=768, layers=12, seq=32):
  shapes = {"embed": (vocab, d), "pos": (seq, d), "ln_f": (d,)}
  for i in range(layers):
    shapes |= {
      f"layer{i:02d}/ln1": (d,),
      f"layer{i:02d}/qkv": (d, 3 * d),
      f"layer{i:02d}/out": (d, d),
      f"layer{i:02d}/ln2": (d,),
      f"layer{i:02d}/mlp_in": (d, 4 * d),
      f"layer{i:02d}/mlp_in_bias": (4 * d,),
      f"layer{i:02d}/mlp_out": (4 * d, d),
    }
  keys = jax.random.split(key, len(shapes))
  make = jax.jit(lambda k, shape: jax.random.normal(k, shape) * 0.02, static_argnums=1)
  params = {}
  for k, (name, shape) in zip(keys, shapes.items()):
    if name.endswith(("ln1", "ln2", "ln_f")):
      params[name] = jnp.ones(shape)
    elif name.endswith("bias"):
      params[name] = jnp.zeros(shape)
    else:
      params[name] = jax.block_until_ready(make(k, shape))
  return params


def _norm(x, scale):
  x = x - x.mean(-1, keepdims=True)
  return x * lax.rsqrt((x * x).mean(-1, keepdims=True) + 1e-6) * scale


def transformer_loss(params, tokens, heads=12):
  b, s = tokens.shape
  layers = sum(1 for n in params if n.endswith("/qkv"))
  d = params["embed"].shape[1]
  x = params["embed"][tokens] + params["pos"][:s]
  causal = jnp.tril(jnp.ones((s, s), jnp.bool_))
  for i in range(layers):
    p = lambda n, i=i: params[f"layer{i:02d}/{n}"]
    q, k, v = jnp.split(_norm(x, p("ln1")) @ p("qkv"), 3, axis=-1)
    q, k, v = (t.reshape(b, s, heads, d // heads) for t in (q, k, v))
    att = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d // heads)
    att = jax.nn.softmax(jnp.where(causal, att, -1e9), axis=-1)
    x = x + jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, s, d) @ p("out")
    x = x + jax.nn.gelu(_norm(x, p("ln2")) @ p("mlp_in") + p("mlp_in_bias")) @ p("mlp_out")
  logits = _norm(x, params["ln_f"]) @ params["embed"].T
  return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()


# ---- timing -------------------------------------------------------------------------------------


def make_step(tx, loss, pruned):
  def step(params, state, batch, refresh_masks=None):
    grads = jax.grad(loss)(params, batch)
    if pruned:
      updates, state = tx.update(grads, state, params, refresh_masks=refresh_masks)
    else:
      updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, static_argnames="refresh_masks", donate_argnums=(0, 1))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="cnn,transformer", help="comma-separated: cnn, transformer")
  parser.add_argument("--optimizers", default="sgd,adamw", help="comma-separated: sgd, adamw")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--settle", type=int, default=1, help="untimed calls before each timed one")
  parser.add_argument("--batch", type=int, default=2, help="transformer: sequences per batch")
  parser.add_argument("--seq", type=int, default=32, help="transformer: tokens per sequence")
  parser.add_argument("--cnn-batch", type=int, default=64)
  parser.add_argument("--cnn-steps", type=int, default=50, help="CNN: training steps per timed call")
  args = parser.parse_args()
  models = [m.strip() for m in args.models.split(",")]
  opts = [o.strip() for o in args.optimizers.split(",")]
  for m in models:
    if m not in ("cnn", "transformer"):
      parser.error(f"--models: unknown {m!r}; choose from cnn, transformer")
  for o in opts:
    if o not in OPTIMIZERS:
      parser.error(f"--optimizers: unknown {o!r}; choose from {sorted(OPTIMIZERS)}")

  print(_common.machine())
  for model in models:
    if model == "cnn":
      init = lambda: cnn_init(jax.random.key(0))
      loss, batch, steps = cnn_loss, cnn_batch(jax.random.key(1), args.cnn_batch), args.cnn_steps
      what = f"digits CNN, batch {args.cnn_batch}, {steps} steps per call"
    else:
      init = lambda: transformer_init(jax.random.key(0), seq=args.seq)
      loss = transformer_loss
      batch = jax.random.randint(jax.random.key(1), (args.batch, args.seq), 0, 30522)
      steps = 1
      what = f"transformer, batch {args.batch} x {args.seq} tokens, 1 step per call"
    rows = {}
    for opt in opts:
      rows[opt] = (opt, OPTIMIZERS[opt](), False, {})
      prune = lambda opt=opt, chain=optax.chain: chain(
        OPTIMIZERS[opt](), cyclax.magnitude_prune(SPARSITY, update_every=NEVER)
      )
      rows[f"{opt} + cyclax default, optax.chain"] = (opt, prune(), True, {"refresh_masks": None})
      rows[f"{opt} + cyclax default, cyclax.chain"] = (
        opt,
        prune(chain=cyclax.chain),
        True,
        {"refresh_masks": None},
      )
      rows[f"{opt} + cyclax static step (refresh_masks=False)"] = (
        opt,
        prune(),
        True,
        {"refresh_masks": False},
      )
    runs, figures, faults = {}, {}, {}
    for name, (_, tx, pruned, static) in rows.items():
      params = init()
      state = tx.init(params)
      compiled = make_step(tx, loss, pruned).lower(params, state, batch, **static).compile()
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      figures[name] = (
        compiled.memory_analysis().temp_size_in_bytes,
        float((cost or {}).get("bytes accessed", np.nan)),
      )
      runs[name] = [params, state, compiled]
      faults[name] = []

    def call(name):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      run = runs[name]
      for _ in range(steps):
        run[0], run[1] = run[2](run[0], run[1], batch)
      jax.block_until_ready(run[0])
      faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
      return run[0]

    start = time.perf_counter()
    times = _common.time_interleaved(
      {n: functools.partial(call, n) for n in rows}, args.repeats, warmup=2, settle=args.settle
    )
    leaves = jax.tree.leaves(runs[opts[0]][0])
    n, pruned = _common.count_params(leaves), _common.count_params([x for x in leaves if x.ndim >= 2])
    print(
      f"\n{what}: {n / 1e6:.2f}M params, {pruned / 1e6:.2f}M pruned at {SPARSITY} "
      f"(median [min-max] of {args.repeats} calls, each after "
      f"{args.settle} untimed call(s); ratios per repeat, same run; {time.perf_counter() - start:.0f} s)"
    )
    table = []
    for name, t in times.items():
      opt = rows[name][0]
      mib = np.median(faults[name][-args.repeats :]) * resource.getpagesize() / 2**20 / steps
      temp, accessed = figures[name]
      table.append(
        [
          name,
          _common.fmt_time(t / steps),
          _common.fmt_ratio(t, times[opt]),
          f"{mib:.1f} MiB",
          f"{temp / 2**20:.1f} MiB",
          f"{accessed / 2**20:.1f} MiB",
        ]
      )
    header = [
      "training step",
      "time per step",
      "time / optimizer alone",
      "page faults per step",
      "temp",
      "bytes accessed",
    ]
    _common.print_table(header, table)


if __name__ == "__main__":
  main()
