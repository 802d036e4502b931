"""The probe targets: a split's labels for each target, and the metrics that score them.

- ``binary``: mPCWP > ``threshold`` mmHg (``config.task.pcwp_threshold``), a bool per ECG, scored
  by ``metrics.CLASSIFICATION_METRICS`` (the thresholded ones at a head's validation threshold);
- ``regression``: mPCWP in mmHg (float64), scored by ``metrics.REGRESSION_METRICS``.

Every user of a target's labels (the heads, the statistics, ``predictions.csv``, the cohort
table) takes them from ``values``; a target is defined here and nowhere else. A split is a dict
of arrays with one row per ECG (``pipeline.read_split``, ``embed`` arrays, ``reader.read_labels``).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from ssldml_jax.eval import metrics as metrics_lib
from ssldml_jax.eval.probe_config import TARGETS


def _check(target: str) -> None:
  if target not in TARGETS:
    raise ValueError(f"target={target!r} is not a probe target; choose from "
                     + ", ".join(repr(t) for t in TARGETS))


def values(split: Mapping[str, np.ndarray], target: str, threshold: float) -> np.ndarray:
  """The labels of ``target`` for every row of ``split``: bool (binary) or mmHg (regression).

  The comparison runs in the precision of the stored mPCWP (float32: NumPy rounds ``threshold``
  to it), so a label recorded as the threshold itself is not above it, whatever the caller.
  """
  _check(target)
  pcwp = np.asarray(split["pcwp"])
  if target == "binary":
    return pcwp > threshold
  return pcwp.astype(np.float64)


def known(split: Mapping[str, np.ndarray]) -> np.ndarray:
  """Rows whose labels are known for every target (a finite mPCWP)."""
  return np.isfinite(split["pcwp"])


def metric_names(target: str) -> tuple[str, ...]:
  _check(target)
  if target == "binary":
    return metrics_lib.CLASSIFICATION_METRICS
  return metrics_lib.REGRESSION_METRICS


def metric_fns(target: str, threshold: Optional[float],
               names: Optional[Sequence[str]] = None) -> dict[str, metrics_lib.MetricFn]:
  """``metrics`` functions of ``target`` by name (all of ``metric_names`` unless ``names``);
  ``threshold`` is the decision threshold on a binary head's scores (None for regression)."""
  names = metric_names(target) if names is None else tuple(names)
  if target == "binary":
    return metrics_lib.classification_metrics(threshold, names)
  return metrics_lib.regression_metrics(names)
