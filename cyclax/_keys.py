"""Integer keys of ``|x|``: magnitudes compared as the bit patterns of floats.

Non-negative IEEE floats order like their bit patterns read as integers, so the
``k``-th smallest ``|x|`` can be found by searching integer keys. A NaN ranks
above +inf (every NaN is the top key), so a NaN is always kept. Comparisons are
done on the integer keys, never on floats: XLA:CPU flushes subnormals to zero in
float compares.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_INT_FOR_FLOAT = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}
_UINT_FOR_FLOAT = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}


def check_floating(x: jax.Array) -> None:
  """Raises TypeError unless ``x`` is a floating-point array."""
  if not jnp.issubdtype(jnp.dtype(x.dtype), jnp.floating):
    raise TypeError(f"scores must be floating point, got {jnp.dtype(x.dtype)}.")


def score_bits(x: jax.Array) -> jax.Array:
  """Signed-integer keys that order like ``|x|`` (NaN above +inf).

  Raises:
    TypeError: if ``x`` is not floating point.
  """
  check_floating(x)
  dtype = jnp.dtype(x.dtype)
  int_dtype = _INT_FOR_FLOAT[dtype.itemsize]
  bits = lax.bitcast_convert_type(jnp.abs(x), int_dtype)
  top = jnp.array(np.iinfo(int_dtype).max, int_dtype)
  return jnp.where(jnp.isnan(x), top, bits)


def widen_bits(k: jax.Array, src: jnp.dtype, dst: jnp.dtype) -> jax.Array:
  """The bits of the non-negative float with bits ``k`` in ``src``, widened exactly to ``dst``."""
  src, dst = jnp.dtype(src), jnp.dtype(dst)
  if src == dst:
    return k
  if src == jnp.bfloat16:
    return widen_bits(k.astype(jnp.int32) << 16, jnp.float32, dst)
  if src == jnp.float16:
    k = k.astype(jnp.int32)
    exp, man = k >> 10, k & 0x3FF
    lead = 31 - lax.clz(jnp.maximum(man, 1))  # position of the top set bit of a subnormal's mantissa
    sub = ((lead + 103) << 23) | ((man << (23 - lead)) & 0x7FFFFF)
    norm = jnp.where(exp == 31, 0x7F800000 | (man << 13), ((exp + 112) << 23) | (man << 13))
    out = jnp.where(exp == 0, jnp.where(man == 0, 0, sub), norm)
    return widen_bits(out, jnp.float32, dst)
  # float32 -> float64
  k = k.astype(jnp.int64)
  exp, man = k >> 23, k & 0x7FFFFF
  lead = 63 - lax.clz(jnp.maximum(man, 1))
  sub = ((lead + 874) << 52) | ((man << (52 - lead)) & 0xFFFFFFFFFFFFF)
  norm = jnp.where(exp == 255, 0x7FF0000000000000 | (man << 29), ((exp + 896) << 52) | (man << 29))
  return jnp.where(exp == 0, jnp.where(man == 0, 0, sub), norm)


class Keys(NamedTuple):
  """Comparisons of a leaf's keys with scalar thresholds, evaluated on the leaf itself.

  A key is the bit pattern of ``|x|`` in the float type ``float_dtype`` (every
  NaN ranks as the top key). Keys are never materialised: inside a loop each
  comparison starts from ``x`` passed through an optimization barrier together
  with ``loop_token``, a scalar that changes with the loop state, so no
  leaf-sized intermediate is loop-invariant and XLA cannot hoist one (a
  leaf-sized key array) out of the loop. (A float ``where`` would do the same
  but lets XLA:CPU flush subnormals.)
  """

  x: jax.Array
  float_dtype: jnp.dtype
  key_dtype: jnp.dtype

  def key(self, loop_token: Optional[jax.Array]) -> jax.Array:
    """The keys of every entry (recomputed from ``x`` at every use)."""
    itemsize = jnp.dtype(self.x.dtype).itemsize
    x = self.x if loop_token is None else lax.optimization_barrier((self.x, loop_token))[0]
    # Clear the sign with shifts, not ``& 0x7f..``: XLA rewrites the latter into a float abs,
    # which flushes subnormals to zero on CPU.
    unsigned = _UINT_FOR_FLOAT[itemsize]
    bits = lax.shift_right_logical(lax.bitcast_convert_type(x, unsigned) << 1, jnp.array(1, unsigned))
    bits = lax.bitcast_convert_type(bits, _INT_FOR_FLOAT[itemsize])
    return widen_bits(bits, self.x.dtype, self.float_dtype).astype(self.key_dtype)

  def _inf(self) -> jax.Array:
    return lax.bitcast_convert_type(jnp.array(jnp.inf, self.float_dtype), self.key_dtype)

  def bounds(self) -> tuple[jax.Array, jax.Array]:
    """The smallest and largest key, as unsigned ints (so that searches cannot overflow)."""
    unsigned = jnp.uint64 if jnp.dtype(self.key_dtype).itemsize == 8 else jnp.uint32
    return jnp.zeros([], unsigned), jnp.array(np.iinfo(self.key_dtype).max, unsigned)

  def le(self, t: jax.Array, loop_token: Optional[jax.Array] = None) -> jax.Array:
    """``key <= t``."""
    t = t.astype(self.key_dtype)
    top = t == np.iinfo(self.key_dtype).max
    return jnp.logical_or(self.key(loop_token) <= jnp.minimum(t, self._inf()), top)

  def lt(self, t: jax.Array) -> jax.Array:
    """``key < t``."""
    t = t.astype(self.key_dtype)
    return jnp.logical_and(t > 0, self.key(None) <= jnp.minimum(t - 1, self._inf()))

  def eq(
    self, t: jax.Array, where: Optional[jax.Array] = None, loop_token: Optional[jax.Array] = None
  ) -> jax.Array:
    """``key == t``, and with ``where`` (a bool array) only where it holds."""
    t = t.astype(self.key_dtype)
    k = self.key(loop_token)
    out = jnp.where(t == np.iinfo(self.key_dtype).max, k > self._inf(), k == t)
    return out if where is None else jnp.logical_and(out, where)


def own_keys(x: jax.Array) -> Keys:
  """Keys of ``x`` in its own float type (per-leaf selection).

  Raises:
    TypeError: if ``x`` is not floating point.
  """
  check_floating(x)
  dtype = jnp.dtype(x.dtype)
  return Keys(x, dtype, jnp.dtype(_INT_FOR_FLOAT[dtype.itemsize]))


def common_keys(scores: Sequence[jax.Array]) -> list[Keys]:
  """Keys of every score in one float type for one ranking: float64 if any score is, else float32.

  Every float type casts exactly into the common one, so the order of ``|x|`` is kept.

  Raises:
    TypeError: if a score is not floating point.
  """
  for s in scores:
    check_floating(s)
  wide = any(jnp.dtype(s.dtype).itemsize == 8 for s in scores)
  float_dtype, key_dtype = (jnp.float64, jnp.int64) if wide else (jnp.float32, jnp.int32)
  return [Keys(s, jnp.dtype(float_dtype), jnp.dtype(key_dtype)) for s in scores]
