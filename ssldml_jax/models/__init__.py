"""ECG encoders and heads, built from ``config.model`` (see ``ssldml_jax/config_defaults.py``)."""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
import ml_collections

from ssldml_jax.cli import ConfigError
from ssldml_jax.models.heads import ProbeHead, ProjectionHead
from ssldml_jax.models.resnet1d import STAGE_SIZES, BasicBlock1D, ResNet1D
from ssldml_jax.models.summary import ModelSummary, print_summary, summarize

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

__all__ = ["BasicBlock1D", "ModelSummary", "ProbeHead", "ProjectionHead", "ResNet1D",
           "STAGE_SIZES", "build_encoder", "print_summary", "summarize"]


def _positive_int(model_config: ml_collections.ConfigDict, key: str) -> int:
  value = model_config[key]
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ConfigError(f"config.model.{key}={value!r} must be a positive integer")
  return value


def build_encoder(model_config: ml_collections.ConfigDict,
                  bn_axis_name: Optional[str] = None) -> ResNet1D:
  """The encoder described by ``config.model``; ``bn_axis_name`` averages BatchNorm over devices.

  ``stage_sizes`` (blocks per stage) overrides the depth of the named model when set.
  """
  for key in ("name", "width", "stage_sizes", "stem_kernel", "kernel_size", "dropout",
              "embedding_dim", "dtype"):
    if key not in model_config:
      raise ConfigError(f"config.model.{key} is missing")
  name = model_config.name
  if name not in STAGE_SIZES:
    raise ConfigError(f"config.model.name={name!r} is not allowed; choose one of "
                      + ", ".join(repr(n) for n in STAGE_SIZES))
  if model_config.dtype not in DTYPES:
    raise ConfigError(f"config.model.dtype={model_config.dtype!r} is not allowed; choose one of "
                      + ", ".join(repr(d) for d in DTYPES))
  stages = model_config.stage_sizes
  if stages is None:
    stages = STAGE_SIZES[name]
  elif not stages or not all(isinstance(s, int) and s >= 1 for s in stages):
    raise ConfigError(f"config.model.stage_sizes={stages!r} must be a tuple of positive integers "
                      "(blocks per stage) or None")
  dropout = model_config.dropout
  if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
    raise ConfigError(f"config.model.dropout={dropout!r} must be a number in [0, 1)")
  return ResNet1D(
      stage_sizes=tuple(stages),
      width=_positive_int(model_config, "width"),
      stem_kernel=_positive_int(model_config, "stem_kernel"),
      kernel_size=_positive_int(model_config, "kernel_size"),
      dropout=float(dropout),
      embedding_dim=_positive_int(model_config, "embedding_dim"),
      dtype=DTYPES[model_config.dtype],
      bn_axis_name=bn_axis_name,
  )
