"""ECG encoders and heads, built from ``config.model`` (see ``ssldml_jax/config_defaults.py``)."""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
import ml_collections

from ssldml_jax import cli
from ssldml_jax.cli import ConfigError
from ssldml_jax.models.heads import ProbeHead, ProjectionHead
from ssldml_jax.models.resnet1d import STAGE_SIZES, BasicBlock1D, ResNet1D
from ssldml_jax.models.summary import ModelSummary, print_summary, summarize

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

__all__ = ["BasicBlock1D", "ModelSummary", "ProbeHead", "ProjectionHead", "ResNet1D",
           "STAGE_SIZES", "build_encoder", "print_summary", "summarize", "validate"]


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks ``config.model``; raises ``ConfigError`` naming the first bad key."""
  cli.check_choice(config, "model.name", tuple(STAGE_SIZES))
  cli.check_choice(config, "model.dtype", tuple(DTYPES))
  for key in ("width", "stem_kernel", "kernel_size", "embedding_dim"):
    cli.check_int(config, f"model.{key}", 1)
  stages = cli.get_path(config, "model.stage_sizes")
  if stages is not None and (not stages or not all(
      isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in stages)):
    raise ConfigError(f"config.model.stage_sizes={stages!r} must be a tuple of positive integers "
                      "(blocks per stage) or None")
  cli.check_range(config, "model.dropout", low=0.0, high=0.999)


def build_encoder(model_config: ml_collections.ConfigDict,
                  bn_axis_name: Optional[str] = None) -> ResNet1D:
  """The encoder described by ``config.model``; ``bn_axis_name`` averages BatchNorm over devices.

  ``stage_sizes`` (blocks per stage) overrides the depth of the named model when set.
  """
  validate(ml_collections.ConfigDict({"model": model_config}))
  stages = model_config.stage_sizes
  return ResNet1D(
      stage_sizes=tuple(STAGE_SIZES[model_config.name] if stages is None else stages),
      width=int(model_config.width),
      stem_kernel=int(model_config.stem_kernel),
      kernel_size=int(model_config.kernel_size),
      dropout=float(model_config.dropout),
      embedding_dim=int(model_config.embedding_dim),
      dtype=DTYPES[model_config.dtype],
      bn_axis_name=bn_axis_name,
  )
