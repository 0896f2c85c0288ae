"""Exact resume with orbax: a run restored in a fresh process continues bit for bit."""

import subprocess
import sys
import textwrap

import numpy as np
import reference

# One training script, run in two processes. `first` trains SAVE_AT steps, saves params and the
# full optimizer state, keeps going to the end and writes the uninterrupted result; `resume`
# starts from nothing but the checkpoint and finishes the run.
SCRIPT = textwrap.dedent(
  """
  import sys

  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  import orbax.checkpoint as ocp

  import cyclax

  mode, ckpt_dir, out_file = sys.argv[1:4]
  SAVE_AT, TOTAL = 7, 16  # mid-cycle; the rest crosses refreshes at 9, 12, 15 and a cycle start at 10

  kx, ky, kw = jax.random.split(jax.random.key(3), 3)
  x = jax.random.normal(kx, (32, 12))
  y = jax.random.normal(ky, (32, 4))
  params = {"dense": {"kernel": jax.random.normal(kw, (12, 4)), "bias": jnp.zeros(4)}}
  lr = cyclax.periodic(optax.cosine_decay_schedule(3e-2, 10), 10)
  tx = optax.chain(
    optax.adamw(lr),
    cyclax.cyclical_prune(0.75, num_cycles=2, cycle_steps=10, update_every=3, track_regrowth=True),
  )

  def loss(p):
    return jnp.mean((x @ p["dense"]["kernel"] + p["dense"]["bias"] - y) ** 2)

  @jax.jit
  def step(p, s):
    updates, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, updates), s

  def dump(p, s):
    leaves = jax.tree.leaves({"params": p, "opt_state": s})
    np.savez(out_file, *[np.asarray(leaf) for leaf in leaves], kernel=np.asarray(p["dense"]["kernel"]))

  checkpointer = ocp.StandardCheckpointer()
  if mode == "first":
    state = tx.init(params)
    for _ in range(SAVE_AT):
      params, state = step(params, state)
    checkpointer.save(ckpt_dir, {"params": params, "opt_state": state})
    checkpointer.wait_until_finished()
    start = SAVE_AT
  else:
    abstract = jax.eval_shape(lambda: {"params": params, "opt_state": tx.init(params)})
    restored = checkpointer.restore(ckpt_dir, abstract)
    params, state = restored["params"], restored["opt_state"]
    assert int(cyclax.find_prune_state(state).count) == SAVE_AT
    start = SAVE_AT
  for _ in range(start, TOTAL):
    params, state = step(params, state)
  dump(params, state)
  """
)


def _run(mode, ckpt_dir, out_file):
  env = reference.subprocess_env()  # one device
  result = subprocess.run(
    [sys.executable, "-c", SCRIPT, mode, str(ckpt_dir), str(out_file)],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-4000:]
  with np.load(out_file) as data:
    return {name: data[name] for name in data.files}


def test_orbax_resume_in_fresh_process_is_bitwise_identical(tmp_path):
  uninterrupted = _run("first", tmp_path / "ckpt", tmp_path / "first.npz")
  resumed = _run("resume", tmp_path / "ckpt", tmp_path / "resumed.npz")
  assert sorted(uninterrupted) == sorted(resumed)
  for name, a in uninterrupted.items():
    b = resumed[name]
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()
  # The comparison is not vacuous: the kernel carries the pruned count of the last refresh (step 15).
  kernel = uninterrupted["kernel"]
  assert kernel.shape == (12, 4)
  level = reference.cyclical_sparsity(15, 0.75, 2, 10, 0.375, 0.8)
  assert np.sum(kernel == 0) == reference.num_to_prune(level, kernel.size)
