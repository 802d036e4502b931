"""DeLong's test: the fast midrank form against a pairwise loop (plain and patient-clustered),
replicate averaging, and the paired test against the patient bootstrap on the same predictions."""

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from ssldml_jax.eval import bootstrap, delong, metrics as M, significance


def _clustered(seed, patients=120, effect=(1.0, 0.7), ties=False, mixed=0.0):
  """Patients with 1-3 ECGs, a patient-level label (each ECG's flipped with probability
  ``mixed``, so some patients hold both classes), a patient effect shared by the methods and
  one of each method's own (so a patient's ECGs are correlated within and across methods)."""
  rng = np.random.default_rng(seed)
  counts = rng.integers(1, 4, patients)
  pid = np.repeat(np.arange(patients), counts)
  y = np.repeat(rng.random(patients) < 0.35, counts) ^ (rng.random(pid.size) < mixed)
  shared = rng.normal(0.0, 0.5, patients)
  scores = np.stack([mu * y + np.repeat(shared + rng.normal(0.0, 0.7, patients), counts)
                     + rng.normal(0.0, 0.4, pid.size) for mu in effect])
  if ties:
    scores = np.round(scores, 1)
  return y, scores, pid


def _slow_placements(y, scores):
  """Placements by the definition: every positive against every negative, ties one half."""
  pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
  v10 = np.zeros((len(scores), pos.size))
  v01 = np.zeros((len(scores), neg.size))
  for k, s in enumerate(scores):
    for i, p in enumerate(pos):
      for j, q in enumerate(neg):
        psi = 1.0 if s[p] > s[q] else 0.5 if s[p] == s[q] else 0.0
        v10[k, i] += psi / neg.size
        v01[k, j] += psi / pos.size
  return v10, v01


def _slow_covariance(y, v10, v01, clusters=None):
  """DeLong (1988) and Obuchowski (1997) written out term by term."""
  auc = v10.mean(axis=1)
  m, n, k = v10.shape[1], v01.shape[1], len(v10)
  cov = np.zeros((k, k))
  if clusters is None:
    for r in range(k):
      for s in range(k):
        s10 = sum((v10[r, i] - auc[r]) * (v10[s, i] - auc[s]) for i in range(m)) / (m - 1)
        s01 = sum((v01[r, j] - auc[r]) * (v01[s, j] - auc[s]) for j in range(n)) / (n - 1)
        cov[r, s] = s10 / m + s01 / n
    return cov
  pos_c, neg_c = np.asarray(clusters)[y], np.asarray(clusters)[~y]
  ids = np.unique(clusters)
  big_i = ids.size
  for r in range(k):
    for s in range(k):
      total = 0.0
      for c in ids:
        mi, ni = np.sum(pos_c == c), np.sum(neg_c == c)
        xr, xs = v10[r, pos_c == c].sum() - mi * auc[r], v10[s, pos_c == c].sum() - mi * auc[s]
        yr, ys = v01[r, neg_c == c].sum() - ni * auc[r], v01[s, neg_c == c].sum() - ni * auc[s]
        total += xr * xs / m**2 + yr * ys / n**2 + (xr * ys + xs * yr) / (m * n)
      cov[r, s] = big_i / (big_i - 1) * total
  return cov


@pytest.mark.parametrize("ties", [False, True])
def test_fast_placements_match_the_pairwise_loop(ties):
  y, scores, _ = _clustered(0, patients=60, ties=ties)
  auc, v10, v01 = delong.placements(y, scores)
  slow10, slow01 = _slow_placements(y, scores)
  np.testing.assert_allclose(v10, slow10, atol=1e-12)
  np.testing.assert_allclose(v01, slow01, atol=1e-12)
  np.testing.assert_allclose(auc, [skm.roc_auc_score(y, s) for s in scores], atol=1e-12)
  np.testing.assert_allclose(v01.mean(axis=1), auc, atol=1e-12)


@pytest.mark.parametrize("clustered", [False, True])
def test_covariance_matches_the_slow_reference(clustered):
  y, scores, pid = _clustered(1, patients=50, effect=(1.0, 0.7, 0.2), ties=True, mixed=0.3)
  assert any(len(set(y[pid == p])) == 2 for p in pid)  # the cross terms S11 are exercised
  _, v10, v01 = delong.placements(y, scores)
  clusters = pid if clustered else None
  np.testing.assert_allclose(delong.covariance(y, v10, v01, clusters),
                             _slow_covariance(y, v10, v01, clusters), rtol=1e-10, atol=1e-14)


def test_paired_test_of_replicates_uses_their_mean_placements():
  y, scores, pid = _clustered(2, patients=50, effect=(1.0, 0.9, 0.5, 0.4))
  res = delong.paired(y, scores[:2], scores[2:], pid)
  slow10, slow01 = _slow_placements(y, scores)
  mean10 = np.stack([slow10[:2].mean(0), slow10[2:].mean(0)])
  mean01 = np.stack([slow01[:2].mean(0), slow01[2:].mean(0)])
  cov = _slow_covariance(y, mean10, mean01, pid)
  se = math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
  aucs = [skm.roc_auc_score(y, s) for s in scores]
  assert res.auc_a == pytest.approx(np.mean(aucs[:2]), abs=1e-12)
  assert res.difference == pytest.approx(np.mean(aucs[:2]) - np.mean(aucs[2:]), abs=1e-12)
  assert res.se == pytest.approx(se, rel=1e-10)
  assert res.p_value == pytest.approx(math.erfc(abs(res.difference / se) / math.sqrt(2)))
  assert (res.low, res.high) == pytest.approx((res.difference - 1.959964 * se,
                                               res.difference + 1.959964 * se), abs=1e-6)


def test_independent_groups_add_their_variances():
  y, scores, pid = _clustered(3, patients=80)
  a = pid < 40
  res = delong.independent(y[a], scores[0, a], pid[a], y[~a], scores[1, ~a], pid[~a])
  var = []
  for m, s in ((a, scores[0]), (~a, scores[1])):
    v10, v01 = _slow_placements(y[m], s[m][None])
    var.append(_slow_covariance(y[m], v10, v01, pid[m])[0, 0])
  assert res.se == pytest.approx(math.sqrt(sum(var)), rel=1e-10)
  assert res.auc_b == pytest.approx(skm.roc_auc_score(y[~a], scores[1, ~a]), abs=1e-12)


def test_one_example_per_cluster_is_delong_up_to_small_factors():
  y, scores, _ = _clustered(4, patients=400)
  plain = delong.paired(y, scores[0], scores[1])
  single = delong.paired(y, scores[0], scores[1], np.arange(y.size))
  assert single.se == pytest.approx(plain.se, rel=0.02)


def test_paired_test_agrees_with_the_patient_bootstrap():
  """Same predictions: the clustered DeLong SE of an AUROC difference is the SD of the paired
  patient-bootstrap differences, and its interval sits on the bootstrap's; the unclustered
  DeLong, which treats a patient's correlated ECGs as independent, is too narrow."""
  y, scores, pid = _clustered(5, patients=300)
  fns = {"a": lambda yy, idx, w: M.auroc_batch(yy, scores[0][idx.astype(int)], w),
         "b": lambda yy, idx, w: M.auroc_batch(yy, scores[1][idx.astype(int)], w)}
  index = np.arange(y.size, dtype=np.float64)
  values = bootstrap.resample_values(fns, y, index, pid, n_resamples=2000, seed=0)
  boot = significance.difference(skm.roc_auc_score(y, scores[0]), values["a"],
                                 skm.roc_auc_score(y, scores[1]), values["b"])
  res = delong.paired(y, scores[0], scores[1], pid)
  assert res.difference == pytest.approx(boot.difference, abs=1e-12)
  assert res.se == pytest.approx(np.std(values["a"] - values["b"], ddof=1), rel=0.1)
  assert (res.low, res.high) == pytest.approx((boot.low, boot.high), abs=0.015)
  assert (res.p_value < 0.05) == (boot.p_value < 0.05)
  assert delong.paired(y, scores[0], scores[1]).se < 0.9 * res.se


def test_bad_inputs_are_named():
  with pytest.raises(ValueError, match="an AUROC needs both classes"):
    delong.placements(np.zeros(5, bool), np.arange(5.0))
  with pytest.raises(ValueError, match=r"scores: expected scores of shape \(K, 4\)"):
    delong.placements(np.array([0, 1, 0, 1]), np.arange(5.0))
  same = delong.paired(np.array([0, 1, 0, 1, 1]), np.arange(5.0), np.arange(5.0))
  assert (same.difference, same.p_value) == (0.0, 1.0)
