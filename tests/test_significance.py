"""Differences and Holm: the paired patient bootstrap of two cells against a brute-force loop,
Holm by hand, and the coverage of the paired interval on simulated scores with a known AUROC
difference."""

import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from ssldml_jax.eval import (bootstrap, delong, estimates, fitting, metrics as M, significance,
                             targets)


def _patients(rng, patients):
  counts = rng.integers(1, 4, patients)
  return np.repeat(np.arange(patients), counts), counts


def _fit(scores, pretrain_seed, seed=0):
  return fitting.Fit(head="linear", target="binary", fraction="100%", seed=seed, n_train=10,
                     test_scores=scores, val_scores=scores[:3], threshold=0.5, info={},
                     pretrain_seed=pretrain_seed)


def test_paired_bootstrap_matches_a_brute_force_loop():
  """Two methods of two replicates each, through the cells the comparisons use, against a loop
  that rebuilds every resample ECG by ECG and scores it with scikit-learn."""
  rng = np.random.default_rng(0)
  pid, _ = _patients(rng, 40)
  pid = np.array([f"p{p:02d}" for p in pid])[::-1]          # patient ids out of order
  y = rng.random(pid.size) < 0.4
  a = [_fit(np.clip(0.5 + 0.3 * y + rng.normal(0, 0.3, y.size), 0, 1), s) for s in (0, 1)]
  b = [_fit(np.clip(0.5 + 0.1 * y + rng.normal(0, 0.3, y.size), 0, 1), s) for s in (0, 1)]
  index = np.arange(y.size, dtype=np.float64)
  binary = targets.parse("binary", 18.0)
  cells = [estimates.cell_metrics(f, binary, y, index, pid, n_bootstrap=60,
                                  names=("auroc", "f1")) for f in (a, b)]
  for metric, score in (("auroc", lambda yy, s, f: skm.roc_auc_score(yy, s)),
                        ("f1", lambda yy, s, f: skm.f1_score(yy, s >= f.threshold))):
    d = significance.difference(cells[0][metric].estimate.point, cells[0][metric].replicates,
                                cells[1][metric].estimate.point, cells[1][metric].replicates)
    patients = np.unique(pid)
    draws = np.random.default_rng(estimates.BOOTSTRAP_SEED).integers(0, patients.size,
                                                                     (60, patients.size))
    loop = []
    for draw in draws:
      rows = np.concatenate([np.flatnonzero(pid == patients[p]) for p in draw])
      yy = y[rows]
      if metric == "auroc" and (yy.all() or not yy.any()):
        continue
      loop.append(np.mean([score(yy, f.test_scores[rows], f) for f in a])
                  - np.mean([score(yy, f.test_scores[rows], f) for f in b]))
    loop = np.array(loop)
    full = (np.mean([score(y, f.test_scores, f) for f in a])
            - np.mean([score(y, f.test_scores, f) for f in b]))
    assert d.difference == pytest.approx(full, abs=1e-12)
    assert (d.low, d.high) == pytest.approx(tuple(np.quantile(loop, [0.025, 0.975])), abs=1e-12)
    z = full / np.std(loop, ddof=1)
    assert d.p_value == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9)
    assert d.n_resamples - d.n_undefined == loop.size


def test_holm_by_hand():
  p = [0.01, 0.04, 0.03, 0.005, math.nan, 0.5]
  # Sorted: 0.005 x5 = 0.025, 0.01 x4 = 0.04, 0.03 x3 = 0.09, 0.04 x2 = 0.08 -> 0.09 (monotone),
  # 0.5 x1 = 0.5; the NaN is not counted.
  want = [0.04, 0.09, 0.09, 0.025, math.nan, 0.5]
  np.testing.assert_allclose(significance.holm(p), want, equal_nan=True)
  assert significance.holm([0.3, 0.9])[1] == 0.9 and significance.holm([0.6, 0.7]).max() == 1.0
  assert np.isnan(significance.holm([math.nan])).all()
  with pytest.raises(ValueError, match=r"p-values must lie in \[0, 1\]"):
    significance.holm([0.1, 1.5])


def test_paired_interval_covers_a_known_difference():
  """100 simulated test sets (patients with 1-3 ECGs, patient effects) from a binormal model
  whose AUROCs are known: the paired bootstrap and DeLong 95% intervals of the difference each
  cover it about 95 times."""
  mu_a, mu_b, var = 1.0, 0.6, 0.5**2 + 0.4**2 + 0.4**2
  truth = stats.norm.cdf(mu_a / math.sqrt(2 * var)) - stats.norm.cdf(mu_b / math.sqrt(2 * var))
  covered = {"bootstrap": 0, "delong": 0}
  rng = np.random.default_rng(11)
  for _ in range(100):
    pid, counts = _patients(rng, 150)
    y = np.repeat(rng.random(150) < 0.35, counts)
    shared = rng.normal(0, 0.5, 150)
    s_a, s_b = (mu * y + np.repeat(shared + rng.normal(0, 0.4, 150), counts)
                + rng.normal(0, 0.4, pid.size) for mu in (mu_a, mu_b))
    fns = {"a": lambda yy, i, w, s=s_a: M.auroc_batch(yy, s[i.astype(int)], w),
           "b": lambda yy, i, w, s=s_b: M.auroc_batch(yy, s[i.astype(int)], w)}
    values = bootstrap.resample_values(fns, y, np.arange(y.size, dtype=float), pid,
                                       n_resamples=400, seed=int(rng.integers(1 << 30)))
    d = significance.difference(skm.roc_auc_score(y, s_a), values["a"],
                                skm.roc_auc_score(y, s_b), values["b"])
    covered["bootstrap"] += d.low <= truth <= d.high
    res = delong.paired(y, s_a, s_b, pid)
    covered["delong"] += res.low <= truth <= res.high
  assert 90 <= covered["bootstrap"] <= 99, covered
  assert 90 <= covered["delong"] <= 99, covered


def test_difference_edge_cases():
  d = significance.difference(0.7, np.array([0.7, np.nan, 0.8, 0.9]), 0.6,
                              np.array([0.6, 0.6, np.nan, 0.7]))
  assert d.n_undefined == 2 and (d.low, d.high) == pytest.approx((0.1, 0.2), abs=0.01)
  assert d.p_value == pytest.approx(2 * stats.norm.sf(0.1 / np.std([0.1, 0.2], ddof=1)))
  assert significance.difference(0.5, np.full(4, 0.5), 0.5, np.full(4, 0.5)).p_value == 1.0
  assert significance.difference(0.6, np.full(4, 0.6), 0.5, np.full(4, 0.5)).p_value == 0.0
  nan = significance.difference(math.nan, np.zeros(3), 0.5, np.zeros(3))
  assert math.isnan(nan.p_value) and math.isnan(nan.low)
  with pytest.raises(ValueError, match="replicates of shape"):
    significance.difference(0.1, np.zeros(3), 0.2, np.zeros(4))
