"""Metrics of multi-label and multi-class scores, batched over weight rows like ``metrics``.

Every function takes ``y``, ``score`` (n, K) and ``weights`` (R, n) and returns R values (see
``metrics``: a weight row is a bootstrap resample, a subgroup or all ones).

- Multi-label: ``y`` (n, K) bool, ``score`` (n, K) probabilities. ``macro_auroc`` /
  ``macro_auprc``: the unweighted mean over labels of each label's AUROC / average precision
  (scikit-learn's ``average='macro'``). It is NaN on a row where any label's value is undefined
  (a label with one class only), so a bootstrap resample that lacks a label's positives is
  skipped and counted rather than scored on fewer labels. ``auroc_<label>``: one label's AUROC.
- Multi-class: ``y`` (n,) class index in 0..K-1, ``score`` (n, K) probabilities. ``macro_auroc``:
  the one-vs-rest AUROC averaged over classes (scikit-learn's ``multi_class='ovr',
  average='macro'``); ``accuracy``: of the class with the highest score (ties: the first);
  ``auroc_<class>``: one class against the rest.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ssldml_jax.eval import metrics as metrics_lib


def multilabel_names(labels: Sequence[str]) -> tuple[str, ...]:
  return ("macro_auroc", "macro_auprc") + tuple(f"auroc_{c}" for c in labels)


def multiclass_names(classes: Sequence[str]) -> tuple[str, ...]:
  return ("macro_auroc", "accuracy") + tuple(f"auroc_{c}" for c in classes)


def _check(y, score, width: int, multiclass: bool) -> tuple[np.ndarray, np.ndarray]:
  score = np.asarray(score, np.float64)
  if score.ndim != 2 or score.shape[1] != width:
    raise ValueError(f"score: expected shape (n, {width}), got {score.shape}")
  y = np.asarray(y)
  want = (score.shape[0],) if multiclass else score.shape
  if y.shape != want:
    raise ValueError(f"y: expected shape {want}, got {y.shape}")
  if multiclass:
    bad = np.flatnonzero((y < 0) | (y >= width))
    if bad.size:
      raise ValueError(f"y: class index {int(y[bad[0]])} at row {bad[0]} is outside 0..{width - 1}")
    y = y[:, None] == np.arange(width)[None]
  return metrics_lib.check_binary("y", y.reshape(-1)).reshape(y.shape), score


def _per_column(fn: Callable, y: np.ndarray, score: np.ndarray, weights) -> np.ndarray:
  """(R, K): ``fn`` of each column."""
  return np.stack([fn(y[:, k], score[:, k], weights) for k in range(y.shape[1])], axis=1)


def _macro(values: np.ndarray) -> np.ndarray:
  """Mean over columns, NaN where any column is NaN (module docstring)."""
  return np.mean(values, axis=1)


def multilabel_metric_fns(labels: Sequence[str],
                          names: Sequence[str] | None = None) -> dict[str, metrics_lib.MetricFn]:
  """Multi-label metrics by name (all of ``multilabel_names`` unless ``names``)."""
  labels = tuple(labels)

  def macro_auprc(y, score, weights):
    return _macro(_per_column(metrics_lib.average_precision_batch, y, score, weights))

  return _metric_fns(labels, multilabel_names(labels) if names is None else names,
                     multiclass=False, own={"macro_auprc": macro_auprc})


def multiclass_metric_fns(classes: Sequence[str],
                          names: Sequence[str] | None = None) -> dict[str, metrics_lib.MetricFn]:
  """Multi-class metrics by name (all of ``multiclass_names`` unless ``names``)."""
  classes = tuple(classes)

  def accuracy(onehot, score, weights):
    n = score.shape[0]
    w = metrics_lib.weight_rows(weights, n)
    right = onehot[np.arange(n), np.argmax(score, axis=1)]
    return metrics_lib.nan_divide(w @ right, w.sum(axis=1))

  return _metric_fns(classes, multiclass_names(classes) if names is None else names,
                     multiclass=True, own={"accuracy": accuracy})


def _metric_fns(columns: tuple, names: Sequence[str], *, multiclass: bool,
                own: dict[str, Callable]) -> dict[str, metrics_lib.MetricFn]:
  """``macro_auroc``, the kind's ``own`` metrics and ``auroc_<column>``, selected by ``names``.

  Each checks its inputs first; the metrics then see (n, K) bool labels (one-hot for classes).
  """
  width = len(columns)
  every = {"macro_auroc": lambda y, s, w: _macro(_per_column(metrics_lib.auroc_batch, y, s, w)),
           **own}
  for k, column in enumerate(columns):
    every[f"auroc_{column}"] = lambda y, s, w, k=k: metrics_lib.auroc_batch(y[:, k], s[:, k], w)

  def checked(fn: Callable) -> metrics_lib.MetricFn:
    def metric(y, score, weights):
      return fn(*_check(y, score, width, multiclass), weights)
    return metric

  return {name: checked(fn) for name, fn in metrics_lib.select(every, names).items()}
