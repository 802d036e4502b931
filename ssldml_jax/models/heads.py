"""Heads on top of the encoder: the contrastive projection head and the paper's MLP probe."""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssldml_jax.models.resnet1d import BN_EPSILON, BN_MOMENTUM


class ProjectionHead(nn.Module):
  """SimCLR / CLOCS projection: Dense -> ReLU -> Dense, applied to the embedding.

  The contrastive loss sees the projection; the embedding before it is what gets probed (SimCLR
  found it the better representation).
  """
  hidden_dim: int = 128
  out_dim: int = 128
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # Every head takes it; the projection has neither dropout nor BatchNorm.
    x = nn.Dense(self.hidden_dim, dtype=self.dtype, param_dtype=jnp.float32, name="hidden")(x)
    x = nn.Dense(self.out_dim, dtype=self.dtype, param_dtype=jnp.float32, name="out")(nn.relu(x))
    return x.astype(jnp.float32)


class ProbeHead(nn.Module):
  """The paper's probe: emb -> Dense(128) -> BatchNorm -> ReLU -> Dropout(0.3) -> Dense(out).

  ``out_dim=1`` gives a logit (binary mPCWP > 18) or a value (regression).
  """
  out_dim: int = 1
  hidden_dim: int = 128
  dropout: float = 0.3
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = nn.Dense(self.hidden_dim, dtype=self.dtype, param_dtype=jnp.float32, name="hidden")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                     dtype=self.dtype, param_dtype=jnp.float32, axis_name=self.bn_axis_name,
                     name="bn")(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(x))
    x = nn.Dense(self.out_dim, dtype=self.dtype, param_dtype=jnp.float32, name="out")(x)
    return x.astype(jnp.float32)
