"""Patient-level (cluster) bootstrap confidence intervals.

A patient contributes several ECGs whose errors are correlated, so resampling ECGs would treat
them as independent and give intervals that are too narrow. Each resample here draws as many
patients as the test set has, with replacement, and takes all ECGs of every drawn patient (a
patient drawn twice counts twice). All metrics are computed on the same resamples, as weight
rows for the batched metrics of ``metrics.py``.

- The point estimate is the metric on the full test set, not the mean of the resamples.
- The interval is the percentile interval: the (1 - level)/2 and (1 + level)/2 quantiles of the
  resampled values (linear interpolation between order statistics).
- A resample on which a metric is undefined (for AUROC: no positive or no negative ECG) is
  skipped for that metric and counted in ``Estimate.n_undefined``; the quantiles use the others.
  If every resample is undefined the interval is NaN.
- Resamples are a function of ``seed`` only (and the patient order of ``np.unique``), not of
  the chunk size used to bound memory.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from ssldml_jax.eval import metrics as metrics_lib

# Weight-matrix entries evaluated at once; bounds memory at about 8 bytes x this x a few.
_CHUNK_ELEMENTS = 1 << 22


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A metric on the test set with its bootstrap interval."""
  point: float
  low: float
  high: float
  n_ecgs: int
  n_patients: int
  n_resamples: int       # resamples drawn
  n_undefined: int = 0   # resamples on which the metric was undefined (skipped)
  level: float = 0.95


def patient_index(patient_ids) -> tuple[np.ndarray, int]:
  """(index of each ECG's patient in 0..P-1, P). Missing ids (NaN, '') are an error."""
  ids = np.asarray(patient_ids)
  if ids.ndim != 1:
    raise ValueError(f"patient_ids: expected a 1-D array, got shape {ids.shape}")
  if ids.size == 0:
    raise ValueError("patient_ids: empty")
  if ids.dtype.kind == "f" and np.isnan(ids).any():
    raise ValueError(f"patient_ids: {int(np.isnan(ids).sum())} missing (NaN) id(s), first at "
                     f"index {int(np.flatnonzero(np.isnan(ids))[0])}")
  missing = np.zeros(ids.shape, bool)
  if ids.dtype.kind in "OUS":
    missing = np.array([i is None or i in ("", b"") for i in ids.tolist()])
  if missing.any():
    raise ValueError(f"patient_ids: {int(missing.sum())} missing (None or empty) id(s), first at "
                     f"index {int(np.flatnonzero(missing)[0])}")
  _, inverse = np.unique(ids, return_inverse=True)
  return inverse.reshape(-1), int(inverse.max()) + 1


def patient_counts(num_patients: int, n_resamples: int, seed: int) -> np.ndarray:
  """(R, P) int32: how often each patient is drawn in each resample of P draws with replacement."""
  rng = np.random.default_rng(seed)
  draws = rng.integers(0, num_patients, size=(n_resamples, num_patients))
  flat = (draws + num_patients * np.arange(n_resamples)[:, None]).reshape(-1)
  counts = np.bincount(flat, minlength=n_resamples * num_patients)
  return counts.reshape(n_resamples, num_patients).astype(np.int32)


def resample_values(metrics: Mapping[str, metrics_lib.MetricFn], y, score, patient_ids, *,
                    n_resamples: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
  """Each metric on each patient resample: name -> (R,) values, NaN where undefined."""
  inverse, num_patients = patient_index(patient_ids)
  if np.shape(y) != inverse.shape or np.shape(score) != inverse.shape:
    raise ValueError(f"y {np.shape(y)}, score {np.shape(score)} and patient_ids "
                     f"{inverse.shape} must have the same length")
  counts = patient_counts(num_patients, n_resamples, seed)
  chunk = max(1, _CHUNK_ELEMENTS // max(inverse.size, 1))
  out = {name: np.empty(n_resamples) for name in metrics}
  for lo in range(0, n_resamples, chunk):
    weights = counts[lo:lo + chunk][:, inverse].astype(np.float64)
    for name, fn in metrics.items():
      out[name][lo:lo + chunk] = fn(y, score, weights)
  return out


def percentile_interval(values: np.ndarray,
                        level: float = 0.95) -> tuple[float, float, np.ndarray]:
  """(low, high, the finite values) of replicates ``values``: the (1 - level)/2 and
  (1 + level)/2 quantiles of the finite ones (NaN marks an undefined resample), NaN if none."""
  if not 0.0 < level < 1.0:
    raise ValueError(f"level={level} must lie in (0, 1)")
  v = np.asarray(values, np.float64)
  defined = v[np.isfinite(v)]
  if not defined.size:
    return np.nan, np.nan, defined
  low, high = np.quantile(defined, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
  return float(low), float(high), defined


def estimate(point: float, values: np.ndarray, *, n_ecgs: int, n_patients: int,
             level: float = 0.95) -> Estimate:
  """The ``Estimate`` of a metric from its full-set value and its resampled ``values``."""
  v = np.asarray(values, np.float64)
  low, high, defined = percentile_interval(v, level)
  return Estimate(point=float(point), low=float(low), high=float(high), n_ecgs=int(n_ecgs),
                  n_patients=int(n_patients), n_resamples=int(v.size),
                  n_undefined=int(v.size - defined.size), level=level)


def bootstrap_ci(metrics: Mapping[str, metrics_lib.MetricFn], y, score, patient_ids, *,
                 n_resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, Estimate]:
  """Point estimate and percentile CI of every metric, from ``n_resamples`` patient resamples."""
  return bootstrap_values(metrics, y, score, patient_ids, n_resamples=n_resamples, seed=seed,
                          level=level)[0]


def bootstrap_values(metrics: Mapping[str, metrics_lib.MetricFn], y, score, patient_ids, *,
                     n_resamples: int = 1000, seed: int = 0,
                     level: float = 0.95) -> tuple[dict[str, Estimate], dict[str, np.ndarray]]:
  """(``bootstrap_ci``, each metric's resampled values as ``resample_values`` gives them)."""
  if not 0.0 < level < 1.0:
    raise ValueError(f"level={level} must lie in (0, 1)")
  if n_resamples < 1:
    raise ValueError(f"n_resamples={n_resamples} must be at least 1")
  inverse, num_patients = patient_index(patient_ids)
  values = resample_values(metrics, y, score, patient_ids, n_resamples=n_resamples, seed=seed)
  ones = np.ones((1, inverse.size))
  return {name: estimate(float(fn(y, score, ones)[0]), values[name], n_ecgs=inverse.size,
                         n_patients=num_patients, level=level)
          for name, fn in metrics.items()}, values
