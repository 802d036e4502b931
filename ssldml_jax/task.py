"""The labeled target of the paper: mPCWP in mmHg, "elevated" above ``config.task.pcwp_threshold``.

The supervised methods, the probes and the cohort table read the same ``config.task``, so an
override of the threshold reaches all of them. Functions take NumPy or JAX arrays.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from ssldml_jax import cli


def validate_threshold(config: ml_collections.ConfigDict) -> None:
  """Checks ``config.task.pcwp_threshold`` (all the probes and the cohort table read)."""
  cli.check_range(config, "task.pcwp_threshold", low=0.0, high=70.0)


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks ``config.task``; raises ``cli.ConfigError`` naming the first bad key."""
  from ssldml_jax.eval import subsets

  validate_threshold(config)
  cli.check_range(config, "task.pcwp_mean", low=0.0, high=70.0)
  cli.check_range(config, "task.pcwp_std", low=0.0, positive=True)
  row = cli.get_path(config, "task.train_labels")
  try:
    subsets.parse_row(row if isinstance(row, str) else "")
  except ValueError:
    raise cli.ConfigError(f"config.task.train_labels={row!r} must be a label row: '100%' (all), "
                          "a percentage of training patients ('10%') or a number of labeled "
                          "ECGs ('n=1000')") from None
  cli.check_int(config, "task.train_labels_seed", 0)


def elevated(pcwp: Any, threshold: float) -> Any:
  """``pcwp > threshold`` (NaN, an unknown mPCWP, gives False: mask it separately)."""
  return pcwp > threshold


def standardise(pcwp: Any, task_config: ml_collections.ConfigDict) -> Any:
  """``(mPCWP - pcwp_mean) / pcwp_std``: the regression target the models fit."""
  return (pcwp - float(task_config.pcwp_mean)) / float(task_config.pcwp_std)
