"""Distances between embeddings: a matrix form for mining and a paired form for losses.

Matrix functions take ``x`` ``(N, D)`` and optionally ``y`` ``(M, D)`` and return ``(N, M)``
(``(N, N)`` when ``y`` is omitted). Paired functions take two ``(B, D)`` arrays whose rows are
aligned and return ``(B,)``; losses use them on the rows a miner picked, which is exact where the
matrix form (computed through ``|x|^2 + |y|^2 - 2 x.y`` to use one matrix product) carries a
rounding error of about ``1e-7 |x|^2``.

Every function has finite gradients everywhere, including at zero distance and at a zero
embedding, so a masked-out tuple that points an anchor at itself never turns a loss's gradient
into NaN.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from ssldml_jax.cli import ConfigError

NAMES = ("euclidean", "squared_euclidean", "cosine")
_NORM_EPS = 1e-12


def safe_sqrt(x: jax.Array) -> jax.Array:
  """sqrt with gradient 0 at 0 (instead of inf) and 0 for negative rounding noise."""
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """Unit-norm rows; a zero row stays zero (with finite gradient)."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, _NORM_EPS))


def _as_float(x: jax.Array) -> jax.Array:
  # bf16 embeddings would lose the small differences that distances are made of.
  return jnp.asarray(x).astype(jnp.promote_types(jnp.asarray(x).dtype, jnp.float32))


def _check_matrix_args(x: jax.Array, y: Optional[jax.Array]) -> tuple[jax.Array, jax.Array]:
  x = _as_float(x)
  y = x if y is None else _as_float(y)
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
    raise ValueError(f"distances expect (N, D) and (M, D) arrays, got {x.shape} and {y.shape}")
  return x, y


def squared_euclidean(x: jax.Array, y: Optional[jax.Array] = None) -> jax.Array:
  """``|x_i - y_j|^2`` as an ``(N, M)`` matrix, clamped at 0 against rounding."""
  x, y = _check_matrix_args(x, y)
  xx = jnp.sum(jnp.square(x), axis=1)
  yy = jnp.sum(jnp.square(y), axis=1)
  xy = jnp.matmul(x, y.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(xx[:, None] + yy[None, :] - 2.0 * xy, 0.0)


def euclidean(x: jax.Array, y: Optional[jax.Array] = None) -> jax.Array:
  """``|x_i - y_j|`` as an ``(N, M)`` matrix."""
  return safe_sqrt(squared_euclidean(x, y))


def cosine(x: jax.Array, y: Optional[jax.Array] = None) -> jax.Array:
  """``1 - cos(x_i, y_j)`` in ``[0, 2]``; a zero vector is at distance 1 from everything."""
  x, y = _check_matrix_args(x, y)
  sim = jnp.matmul(l2_normalize(x), l2_normalize(y).T, precision=jax.lax.Precision.HIGHEST)
  return 1.0 - sim


def paired_squared_euclidean(x: jax.Array, y: jax.Array) -> jax.Array:
  """``|x_b - y_b|^2`` for aligned rows, ``(B,)``."""
  return jnp.sum(jnp.square(_as_float(x) - _as_float(y)), axis=-1)


def paired_euclidean(x: jax.Array, y: jax.Array) -> jax.Array:
  return safe_sqrt(paired_squared_euclidean(x, y))


def paired_cosine(x: jax.Array, y: jax.Array) -> jax.Array:
  return 1.0 - jnp.sum(l2_normalize(_as_float(x)) * l2_normalize(_as_float(y)), axis=-1)


_MATRIX = {"euclidean": euclidean, "squared_euclidean": squared_euclidean, "cosine": cosine}
_PAIRED = {"euclidean": paired_euclidean, "squared_euclidean": paired_squared_euclidean,
           "cosine": paired_cosine}


def _lookup(table: dict, name: str) -> Callable:
  if name not in table:
    raise ConfigError(f"config.mining.embedding_distance={name!r} is not allowed; choose one of "
                      + ", ".join(repr(n) for n in NAMES))
  return table[name]


def get(name: str) -> Callable[..., jax.Array]:
  """The matrix distance called ``name`` (the values of ``config.mining.embedding_distance``)."""
  return _lookup(_MATRIX, name)


def get_paired(name: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """The paired (row-aligned) form of the distance called ``name``."""
  return _lookup(_PAIRED, name)
