"""The miners' building blocks against jax.random and brute-force NumPy, bit for bit.

The mining step replaces generic formulations (vmapped jax.random, row-long cumulative sums,
integer arg-reductions) with cheaper ones on XLA:CPU; these tests pin that the replacements pick
exactly the same numbers and columns.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssldml_jax import miners

ANCHORS = jnp.arange(0, 700, 7, dtype=jnp.int32)  # 100 global anchor indices, not contiguous.


def _reference_uniforms(key, stream):
  return jax.vmap(jax.random.uniform)(miners._anchor_keys(key, ANCHORS, stream))


@pytest.mark.parametrize("make_key", [lambda s: jax.random.key(s), jax.random.PRNGKey,
                                      lambda s: jax.random.key(s, impl="rbg")],
                         ids=["typed", "raw_uint32", "rbg"])
def test_anchor_uniforms_equal_jax_random(make_key):
  uniforms = jax.jit(miners._anchor_uniforms, static_argnums=2)
  for seed in (0, 2**31 - 1):
    for stream in (miners._POSITIVE_STREAM, miners._NEGATIVE_STREAM):
      key = make_key(seed)
      got = np.asarray(uniforms(key, ANCHORS, stream))
      want = np.asarray(_reference_uniforms(key, stream))
      assert got.dtype == np.float32
      np.testing.assert_array_equal(got, want)


def test_kth_set_bit_matches_flatnonzero():
  rng = np.random.default_rng(0)
  kth = jax.jit(lambda m, k: miners._kth_set_bit(
      miners._pack_rows(m), jax.lax.population_count(miners._pack_rows(m)).astype(jnp.int32), k))
  for num, density in [(70, 0.5), (70, 0.03), (64, 1.0), (5, 0.6)]:
    mask = rng.random((40, num)) < density
    mask[0] = False
    count = mask.sum(1)
    k = (rng.random(40) * np.maximum(count, 1)).astype(np.int32)
    k[1] = count[1]  # One past the last set bit: "none".
    got = np.asarray(kth(jnp.asarray(mask), jnp.asarray(k)))
    for i in range(40):
      cols = np.flatnonzero(mask[i])
      if k[i] < len(cols):
        assert got[i] == cols[k[i]], (num, i)
      else:
        assert got[i] >= num, (num, i)


def test_argbest_matches_numpy_with_ties():
  rng = np.random.default_rng(1)
  argbest = jax.jit(miners._argbest, static_argnums=2)
  scores = rng.integers(0, 4, size=(30, 70)).astype(np.float32)  # Many ties.
  allowed = rng.random((30, 70)) < 0.6
  allowed[0] = False
  for largest in (False, True):
    idx, has = (np.asarray(x) for x in argbest(scores, allowed, largest))
    fill = -np.inf if largest else np.inf
    masked = np.where(allowed, scores, fill)
    want = np.argmax(masked, 1) if largest else np.argmin(masked, 1)  # First of the ties.
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_array_equal(has, allowed.any(1))
