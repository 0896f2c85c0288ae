"""Sparsity schedules against their closed forms (NumPy / Python floats)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference

import cyclax

ATOL = 2e-6  # the schedules compute in float32


def _eval(schedule, steps, jit):
  """Values at ``steps``: jitted on a traced int32 step, or called with Python ints."""
  if jit:
    fn = jax.jit(jax.vmap(schedule))
    out = np.asarray(fn(jnp.asarray(steps, jnp.int32)))
    assert fn._cache_size() == 1
    return out
  return np.array([float(schedule(int(t))) for t in steps])


def _cyclical(target, cycles, steps, initial, fraction, **ramp):
  """The cyclical schedule of a case row: target, num_cycles, cycle_steps, initial, ramp_fraction."""
  return cyclax.cyclical_sparsity_schedule(
    target, num_cycles=cycles, cycle_steps=steps, initial_sparsity=initial, ramp_fraction=fraction, **ramp
  )


CYCLICAL_CASES = [
  # target, num_cycles, cycle_steps, initial_sparsity, ramp_fraction
  (0.9, 3, 20, None, 0.8),
  (0.5, 2, 7, 0.1, 1.0),
  (0.75, 4, 10, 0.75, 0.5),
  (0.98, 1, 13, None, 0.3),
  (0.6, 3, 1, 0.2, 0.8),
  (0.0, 2, 5, None, 0.8),
]


@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("case", CYCLICAL_CASES)
def test_cyclical_schedule_equals_closed_form(case, jit):
  target, num_cycles, cycle_steps, initial, ramp = case
  schedule = _cyclical(target, num_cycles, cycle_steps, initial, ramp)
  steps = np.arange(num_cycles * cycle_steps + 4)
  if not jit:
    steps = steps[:: max(1, len(steps) // 12)]
  init_value = 0.5 * target if initial is None else initial
  expected = [
    reference.cyclical_sparsity(int(t), target, num_cycles, cycle_steps, init_value, ramp) for t in steps
  ]
  np.testing.assert_allclose(_eval(schedule, steps, jit), expected, rtol=0, atol=ATOL)


def test_cyclical_schedule_cycle_structure():
  schedule = cyclax.cyclical_sparsity_schedule(0.8, num_cycles=3, cycle_steps=10, ramp_fraction=0.5)
  values = _eval(schedule, np.arange(40), jit=True)
  assert values[0] == 0.0  # the first cycle starts dense
  np.testing.assert_allclose(values[[10, 20]], 0.4, atol=ATOL)  # later cycles start at 0.5 * target
  np.testing.assert_allclose(values[[5, 9, 15, 19, 25, 29, 30, 39]], 0.8, atol=ATOL)  # hold after the ramp
  for c in range(3):
    assert np.all(np.diff(values[10 * c : 10 * c + 10]) >= 0)  # non-decreasing within a cycle


def test_cyclical_schedule_accepts_traced_arguments():
  # optax.inject_hyperparams traces every numeric argument of cyclical_prune.
  @jax.jit
  def fn(step, target, num_cycles, cycle_steps, ramp_fraction):
    schedule = cyclax.cyclical_sparsity_schedule(
      target, num_cycles=num_cycles, cycle_steps=cycle_steps, ramp_fraction=ramp_fraction
    )
    return schedule(step)

  for target, num_cycles, cycle_steps, ramp in [(0.5, 2, 10, 0.8), (0.9, 3, 7, 0.5)]:
    for step in (0, 3, 8, 10, 14, 25):
      got = float(fn(step, jnp.float32(target), num_cycles, cycle_steps, jnp.float32(ramp)))
      expected = reference.cyclical_sparsity(step, target, num_cycles, cycle_steps, 0.5 * target, ramp)
      np.testing.assert_allclose(got, expected, atol=ATOL)
  assert fn._cache_size() == 1


@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("case", [(0.8, 0, 100, 0.0), (0.95, 10, 17, 0.3), (0.5, 5, 6, 0.5)])
def test_gradual_schedule_equals_closed_form(case, jit):
  target, begin, end, initial = case
  schedule = cyclax.gradual_sparsity_schedule(target, begin, end, initial_sparsity=initial)
  steps = np.arange(0, end + 10, 1 if jit else 9)
  expected = [reference.gradual_sparsity(int(t), target, begin, end, initial) for t in steps]
  np.testing.assert_allclose(_eval(schedule, steps, jit), expected, rtol=0, atol=ATOL)


RAMP_CASES = [
  # target, num_cycles, cycle_steps, initial_sparsity, ramp_fraction
  (0.9, 3, 20, 0.45, 0.8),
  (0.99, 2, 7, 0.3, 1.0),
  (0.75, 3, 9, 0.75, 0.5),
  (0.6, 2, 1, 0.2, 0.8),
]


@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("ramp", ["cubic", "linear", "step"])
@pytest.mark.parametrize("case", RAMP_CASES)
def test_cyclical_schedule_ramps_equal_closed_form(case, ramp, jit):
  target, num_cycles, cycle_steps, initial, fraction = case
  schedule = _cyclical(target, num_cycles, cycle_steps, initial, fraction, ramp=ramp)
  steps = np.arange(num_cycles * cycle_steps + 3)
  expected = [
    reference.cyclical_sparsity_with_ramp(int(t), target, num_cycles, cycle_steps, initial, fraction, ramp)
    for t in steps
  ]
  np.testing.assert_allclose(_eval(schedule, steps, jit), expected, rtol=0, atol=ATOL)


def test_cyclical_cubic_ramp_is_the_default_bit_for_bit():
  kwargs = dict(num_cycles=3, cycle_steps=37, ramp_fraction=0.7)
  steps = np.arange(120)
  default = _eval(cyclax.cyclical_sparsity_schedule(0.95, **kwargs), steps, jit=True)
  cubic = _eval(cyclax.cyclical_sparsity_schedule(0.95, ramp="cubic", **kwargs), steps, jit=True)
  np.testing.assert_array_equal(default.view(np.uint32), cubic.view(np.uint32))


def test_step_ramp_jumps_once_at_half_of_each_cycle():
  schedule = cyclax.cyclical_sparsity_schedule(0.8, num_cycles=3, cycle_steps=7, ramp="step")
  values = _eval(schedule, np.arange(21), jit=True)
  # 2 * tau >= 7 first at tau = 4.
  np.testing.assert_allclose(values[0:4], 0.0, atol=ATOL)
  np.testing.assert_allclose(values[[7, 8, 9, 10, 14, 15, 16, 17]], 0.4, atol=ATOL)
  np.testing.assert_allclose(values[[4, 5, 6, 11, 12, 13, 18, 19, 20]], 0.8, atol=ATOL)


def test_linear_ramp_rises_by_equal_steps():
  schedule = cyclax.cyclical_sparsity_schedule(
    0.9, num_cycles=2, cycle_steps=10, ramp_fraction=0.5, ramp="linear"
  )
  values = _eval(schedule, np.arange(20), jit=True)
  np.testing.assert_allclose(np.diff(values[0:6]), 0.9 / 5, atol=ATOL)
  np.testing.assert_allclose(np.diff(values[10:16]), 0.45 / 5, atol=ATOL)
  np.testing.assert_allclose(values[[5, 9, 15, 19]], 0.9, atol=ATOL)


@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("ramp", ["cubic", "linear", "step"])
@pytest.mark.parametrize(
  "case", [(0.8, 0, 100, 0.0), (0.95, 10, 17, 0.3), (0.5, 5, 6, 0.5), (0.9, 3, 8, 0.1)]
)
def test_gradual_schedule_ramps_equal_closed_form(case, ramp, jit):
  target, begin, end, initial = case
  schedule = cyclax.gradual_sparsity_schedule(target, begin, end, initial_sparsity=initial, ramp=ramp)
  steps = np.arange(0, end + 10, 1 if jit else 3)
  expected = [reference.gradual_sparsity_with_ramp(int(t), target, begin, end, initial, ramp) for t in steps]
  np.testing.assert_allclose(_eval(schedule, steps, jit), expected, rtol=0, atol=ATOL)


def test_gradual_cubic_ramp_is_the_default_bit_for_bit():
  steps = np.arange(0, 130)
  default = _eval(cyclax.gradual_sparsity_schedule(0.97, 7, 111, 0.2), steps, jit=True)
  cubic = _eval(cyclax.gradual_sparsity_schedule(0.97, 7, 111, 0.2, ramp="cubic"), steps, jit=True)
  np.testing.assert_array_equal(default.view(np.uint32), cubic.view(np.uint32))


@pytest.mark.parametrize("ramp", ["cubic", "linear", "step"])
@pytest.mark.parametrize(
  "given, clipped",
  [
    # (target, num_cycles, cycle_steps, initial, ramp_fraction) as traced, then as the schedule reads them
    ((0.9, 2, 0, 0.45, 0.8), (0.9, 2, 1, 0.45, 0.8)),
    ((0.9, 2, -5, 0.45, 0.8), (0.9, 2, 1, 0.45, 0.8)),
    ((0.9, 2, 10, 0.45, 0.0), (0.9, 2, 10, 0.45, 0.0)),
    ((0.9, 2, 10, 0.45, -0.5), (0.9, 2, 10, 0.45, 0.0)),
    ((0.9, 2, 10, 0.45, 1.7), (0.9, 2, 10, 0.45, 1.0)),
    ((0.9, 0, 10, 0.45, 0.8), (0.9, 1, 10, 0.45, 0.8)),
    ((0.9, -3, 10, 0.45, 0.8), (0.9, 1, 10, 0.45, 0.8)),
    ((0.6, 2, 10, 0.8, 0.8), (0.6, 2, 10, 0.6, 0.8)),
    ((1.4, 2, 10, -0.2, 0.8), (1.0, 2, 10, 0.0, 0.8)),
  ],
)
def test_cyclical_schedule_clips_traced_arguments_into_range(given, clipped, ramp):
  @jax.jit
  def values(target, num_cycles, cycle_steps, initial, fraction):
    schedule = _cyclical(target, num_cycles, cycle_steps, initial, fraction, ramp=ramp)
    return jax.vmap(schedule)(jnp.arange(-2, 30))

  got = np.asarray(values(*(jnp.asarray(v) for v in given)))
  assert np.all(np.isfinite(got))
  expected = [
    reference.cyclical_sparsity_with_ramp(max(int(t), 0), *clipped, ramp) for t in np.arange(-2, 30)
  ]
  np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


def test_cyclical_schedule_traced_zero_ramp_fraction_is_the_target_at_once():
  fn = jax.jit(
    lambda f: jax.vmap(cyclax.cyclical_sparsity_schedule(0.7, num_cycles=3, cycle_steps=5, ramp_fraction=f))(
      jnp.arange(20)
    )
  )
  np.testing.assert_allclose(np.asarray(fn(jnp.float32(0.0))), 0.7, atol=ATOL)


@pytest.mark.parametrize("ramp", ["cubic", "linear", "step"])
@pytest.mark.parametrize(
  "given, clipped",
  [
    # (target, begin, end, initial) as traced, then as the schedule reads them
    ((0.8, 5, 5, 0.1), (0.8, 5, 5, 0.1)),
    ((0.8, 9, 3, 0.1), (0.8, 9, 3, 0.1)),
    ((0.8, -4, 6, 0.1), (0.8, 0, 6, 0.1)),
    ((1.3, 2, 12, -0.4), (1.0, 2, 12, 0.0)),
  ],
)
def test_gradual_schedule_clips_traced_arguments_into_range(given, clipped, ramp):
  @jax.jit
  def values(target, begin, end, initial):
    schedule = cyclax.gradual_sparsity_schedule(target, begin, end, initial_sparsity=initial, ramp=ramp)
    return jax.vmap(schedule)(jnp.arange(20))

  got = np.asarray(values(*(jnp.asarray(v) for v in given)))
  assert np.all(np.isfinite(got))
  expected = [reference.gradual_sparsity_with_ramp(int(t), *clipped, ramp) for t in range(20)]
  np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize(
  "make",
  [
    lambda r: cyclax.cyclical_sparsity_schedule(0.9, num_cycles=2, cycle_steps=10, ramp=r),
    lambda r: cyclax.gradual_sparsity_schedule(0.9, 0, 10, ramp=r),
  ],
)
@pytest.mark.parametrize("ramp", ["exponential", "Cubic", "", None, 3])
def test_unknown_ramp_raises_value_error_naming_ramp_and_choices(make, ramp):
  with pytest.raises(ValueError, match="`ramp` must be one of 'cubic', 'linear', 'step'"):
    make(ramp)


@pytest.mark.parametrize("jit", [True, False])
def test_one_shot_schedule(jit):
  schedule = cyclax.one_shot_sparsity_schedule(0.7, prune_step=5)
  steps = np.arange(12)
  expected = np.where(steps >= 5, np.float32(0.7), 0.0)
  np.testing.assert_array_equal(_eval(schedule, steps, jit), expected)
  np.testing.assert_array_equal(_eval(cyclax.one_shot_sparsity_schedule(0.3), steps, jit), np.float32(0.3))


@pytest.mark.parametrize("jit", [True, False])
def test_constant_schedule(jit):
  steps = np.array([0, 1, 17, 10**6])
  np.testing.assert_array_equal(_eval(cyclax.constant_sparsity_schedule(0.6), steps, jit), np.float32(0.6))


@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("num_periods", [None, 1, 3])
def test_periodic_restarts_any_schedule(num_periods, jit):
  inner = optax.cosine_decay_schedule(1.0, decay_steps=7, alpha=0.1)
  period = 7
  schedule = cyclax.periodic(inner, period, num_periods=num_periods)
  steps = np.arange(0, 40, 1 if jit else 5)

  def local(t):
    if num_periods is not None and t >= (num_periods - 1) * period:
      return t - (num_periods - 1) * period
    return t % period

  # The cosine schedule in float64: 0.1 + 0.9 * (1 + cos(pi * min(t, 7) / 7)) / 2.
  expected = [0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(local(int(t)), 7) / 7)) for t in steps]
  np.testing.assert_allclose(_eval(schedule, steps, jit), expected, rtol=0, atol=ATOL)


def test_periodic_clips_a_traced_period_to_at_least_one():
  inner = lambda t: jnp.asarray(t, jnp.float32)
  fn = jax.jit(lambda period: jax.vmap(cyclax.periodic(inner, period))(jnp.arange(12)))
  np.testing.assert_array_equal(np.asarray(fn(jnp.int32(5))), np.arange(12) % 5)
  for bad in (0, -3):
    np.testing.assert_array_equal(np.asarray(fn(jnp.int32(bad))), np.zeros(12))


def test_periodic_learning_rate_drives_sgd_with_restarts():
  lr = cyclax.periodic(optax.linear_schedule(1.0, 0.0, transition_steps=4), period=4)
  tx = optax.sgd(lr)
  params = jnp.zeros(())
  state = tx.init(params)
  seen = []
  for _ in range(9):
    updates, state = tx.update(jnp.ones(()), state, params)
    seen.append(-float(updates))
  np.testing.assert_allclose(seen, [1.0, 0.75, 0.5, 0.25] * 2 + [1.0], atol=ATOL)


@pytest.mark.parametrize(
  "make, name",
  [
    (lambda: cyclax.cyclical_sparsity_schedule(0.9, num_cycles=0, cycle_steps=10), "num_cycles"),
    (lambda: cyclax.cyclical_sparsity_schedule(0.9, num_cycles=2, cycle_steps=-3), "cycle_steps"),
    (
      lambda: cyclax.cyclical_sparsity_schedule(0.9, num_cycles=2, cycle_steps=10, ramp_fraction=0.0),
      "ramp_fraction",
    ),
    (
      lambda: cyclax.cyclical_sparsity_schedule(0.9, num_cycles=2, cycle_steps=10, ramp_fraction=1.5),
      "ramp_fraction",
    ),
    (lambda: cyclax.cyclical_sparsity_schedule(1.5, num_cycles=2, cycle_steps=10), "target_sparsity"),
    (
      lambda: cyclax.cyclical_sparsity_schedule(0.5, num_cycles=2, cycle_steps=10, initial_sparsity=0.6),
      "initial_sparsity",
    ),
    (lambda: cyclax.gradual_sparsity_schedule(0.5, begin_step=10, end_step=10), "end_step"),
    (lambda: cyclax.gradual_sparsity_schedule(0.5, begin_step=-1, end_step=10), "begin_step"),
    (lambda: cyclax.gradual_sparsity_schedule(-0.1, begin_step=0, end_step=10), "target_sparsity"),
    (lambda: cyclax.one_shot_sparsity_schedule(0.5, prune_step=-2), "prune_step"),
    (lambda: cyclax.constant_sparsity_schedule(1.2), "sparsity"),
    (lambda: cyclax.periodic(optax.constant_schedule(1.0), 0), "period"),
    (lambda: cyclax.periodic(optax.constant_schedule(1.0), 5, num_periods=0), "num_periods"),
  ],
)
def test_schedule_bad_input_raises_value_error_naming_argument(make, name):
  with pytest.raises(ValueError, match=f"`{name}`"):
    make()


@pytest.mark.parametrize(
  "make, name",
  [
    (lambda: cyclax.periodic(0.1, 5), "schedule"),
    (lambda: cyclax.cyclical_sparsity_schedule(0.9, num_cycles=2.5, cycle_steps=10), "num_cycles"),
    (lambda: cyclax.cyclical_sparsity_schedule(0.9, num_cycles=True, cycle_steps=10), "num_cycles"),
    (
      lambda: cyclax.cyclical_sparsity_schedule(0.9, num_cycles=2, cycle_steps=10, ramp_fraction=None),
      "ramp_fraction",
    ),
    (
      lambda: cyclax.cyclical_sparsity_schedule(0.9, num_cycles=2, cycle_steps=10, ramp_fraction="0.8"),
      "ramp_fraction",
    ),
    (
      lambda: cyclax.cyclical_sparsity_schedule(0.9, num_cycles=2, cycle_steps=10, ramp_fraction=[0.5]),
      "ramp_fraction",
    ),
    (lambda: cyclax.cyclical_sparsity_schedule(None, num_cycles=2, cycle_steps=10), "target_sparsity"),
  ],
)
def test_schedule_bad_type_raises_type_error_naming_argument(make, name):
  with pytest.raises(TypeError, match=f"`{name}`"):
    make()
