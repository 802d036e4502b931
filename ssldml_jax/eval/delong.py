"""DeLong's test for areas under ROC curves: the fast O(n log n) form, with patient clusters.

DeLong, DeLong & Clarke-Pearson (1988) estimate the covariance of correlated AUROCs from the
*placements* of the examples: a positive's placement ``v10`` is the share of negatives it
outscores, a negative's ``v01`` the share of positives that outscore it (a tie counts one half
in both); an AUROC is the mean of either. Sun & Xu (2014) get every placement from three
midrankings (of the positives, of the negatives, of all), so a score vector costs O(n log n)
instead of the O(P N) pairs.

Covariance of the AUROCs of several score vectors on the same examples:

- ``clusters=None`` (every example independent): DeLong's ``S10 / P + S01 / N``, ``S10`` and
  ``S01`` the sample covariances (ddof 1) of the placements of the P positives and N negatives.
- ``clusters`` (e.g. patient ids): Obuchowski's (1997) estimator for clustered data. Placements
  are summed per cluster (``X_i`` over the positives of cluster i, ``Y_i`` over its negatives;
  ``m_i``, ``n_i`` its counts; I clusters)::

      S10 = I / (I - 1) / P^2 sum_i (X_i - m_i A)(X_i - m_i A)'
      S01 = I / (I - 1) / N^2 sum_i (Y_i - n_i A)(Y_i - n_i A)'
      S11 = I / (I - 1) / (P N) sum_i (X_i - m_i A)(Y_i - n_i A)'
      cov = S10 + S01 + S11 + S11'

  so the ECGs of one patient, whose scores are correlated, count as one unit, as in the patient
  bootstrap. With one example per cluster it equals DeLong's up to factors (I-1)/I vs (P-1)/P.

Replicates. A table cell averages the fits of several seeds of one method; its AUROC is the mean
of theirs, so its placements are the mean of theirs and the formulas above apply to them as
they stand. Every function takes a method's scores as ``(K, n)`` (K fits) or ``(n,)``.

Tests (z-tests on the normal approximation; two-sided p-values; 95% Wald intervals):
``paired`` compares two methods scored on the same examples (their AUROCs are correlated),
``independent`` two disjoint groups of patients (the variances add).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats

from ssldml_jax.eval import bootstrap, metrics as metrics_lib, significance


@dataclasses.dataclass(frozen=True)
class DeLongResult:
  auc_a: float
  auc_b: float
  difference: float        # auc_a - auc_b
  se: float                # standard error of the difference
  z: float
  p_value: float           # two-sided; 1 when both AUROCs are equal and se is 0
  low: float               # Wald interval of the difference at ``level``
  high: float
  level: float = 0.95


def _scores(name: str, scores, n: int) -> np.ndarray:
  s = np.atleast_2d(np.asarray(scores, np.float64))
  if s.ndim != 2 or s.shape[1] != n:
    raise ValueError(f"{name}: expected scores of shape (K, {n}) or ({n},), got "
                     f"{np.shape(scores)}")
  for row in s:
    metrics_lib.check_scores(name, row)
  return s


def placements(y, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(auc (K,), v10 (K, P), v01 (K, N))`` of each row of ``scores`` (Sun & Xu midranks)."""
  y = metrics_lib.check_binary("y", y)
  s = _scores("scores", scores, y.size)
  pos, neg = s[:, y], s[:, ~y]
  m, n = pos.shape[1], neg.shape[1]
  if m == 0 or n == 0:
    raise ValueError(f"y: {m} positive(s) and {n} negative(s); an AUROC needs both classes")
  rank_pos = stats.rankdata(pos, method="average", axis=1)
  rank_neg = stats.rankdata(neg, method="average", axis=1)
  rank_all = stats.rankdata(np.concatenate([pos, neg], axis=1), method="average", axis=1)
  # A positive's rank among all minus its rank among the positives counts the negatives below
  # it (ties one half); likewise for a negative.
  v10 = (rank_all[:, :m] - rank_pos) / n
  v01 = 1.0 - (rank_all[:, m:] - rank_neg) / m
  return v10.mean(axis=1), v10, v01


def covariance(y, v10: np.ndarray, v01: np.ndarray, clusters=None) -> np.ndarray:
  """``(K, K)`` covariance of the AUROCs whose placements are ``v10``, ``v01`` (module doc)."""
  y = metrics_lib.check_binary("y", y)
  v10, v01 = np.atleast_2d(v10), np.atleast_2d(v01)
  m, n = v10.shape[1], v01.shape[1]
  if clusters is None:
    if m < 2 or n < 2:
      raise ValueError(f"DeLong's variance needs 2 positives and 2 negatives (got {m} and {n})")
    return np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
  inverse, num = bootstrap.patient_index(clusters)
  if inverse.size != y.size:
    raise ValueError(f"clusters: {inverse.size} entries for {y.size} examples")
  if num < 2:
    raise ValueError("clusters: the clustered variance needs at least 2 clusters")
  auc = v10.mean(axis=1)[:, None]
  in_pos, in_neg = inverse[y], inverse[~y]
  x = np.stack([np.bincount(in_pos, weights=row, minlength=num) for row in v10])
  yy = np.stack([np.bincount(in_neg, weights=row, minlength=num) for row in v01])
  dx = x - np.bincount(in_pos, minlength=num)[None] * auc
  dy = yy - np.bincount(in_neg, minlength=num)[None] * auc
  factor = num / (num - 1.0)
  s10 = factor * (dx @ dx.T) / m**2
  s01 = factor * (dy @ dy.T) / n**2
  s11 = factor * (dx @ dy.T) / (m * n)
  return s10 + s01 + s11 + s11.T


def _mean_placements(y, scores) -> tuple[float, np.ndarray, np.ndarray]:
  auc, v10, v01 = placements(y, scores)
  return float(auc.mean()), v10.mean(axis=0), v01.mean(axis=0)


def _result(auc_a: float, auc_b: float, variance: float, level: float) -> DeLongResult:
  diff = auc_a - auc_b
  se = math.sqrt(max(variance, 0.0))
  if se > 0:
    z = diff / se
  else:  # identical placements: no evidence of a difference unless the AUROCs differ
    z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
  p = significance.wald_p(diff, se)
  half = float(stats.norm.ppf(0.5 + level / 2.0)) * se
  return DeLongResult(auc_a=auc_a, auc_b=auc_b, difference=diff, se=se, z=z, p_value=p,
                      low=diff - half, high=diff + half, level=level)


def paired(y, scores_a, scores_b, clusters=None, *, level: float = 0.95) -> DeLongResult:
  """Two methods' (seed-mean) AUROCs on the same examples, and the test of their difference."""
  auc_a, v10_a, v01_a = _mean_placements(y, scores_a)
  auc_b, v10_b, v01_b = _mean_placements(y, scores_b)
  cov = covariance(y, np.stack([v10_a, v10_b]), np.stack([v01_a, v01_b]), clusters)
  return _result(auc_a, auc_b, cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1], level)


def independent(y_a, scores_a, clusters_a, y_b, scores_b, clusters_b, *,
                level: float = 0.95) -> DeLongResult:
  """AUROCs of two disjoint groups (e.g. women and men) and the test of their difference.

  ``clusters_*`` may be None (examples independent) or the patient ids of each group.
  """
  variances, aucs = [], []
  for y, scores, clusters in ((y_a, scores_a, clusters_a), (y_b, scores_b, clusters_b)):
    auc, v10, v01 = _mean_placements(y, scores)
    aucs.append(auc)
    variances.append(float(covariance(y, v10[None], v01[None], clusters)[0, 0]))
  return _result(aucs[0], aucs[1], variances[0] + variances[1], level)
