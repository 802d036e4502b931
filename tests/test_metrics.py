"""Metrics against scikit-learn / scipy / brute force, on random data with ties."""

import numpy as np
import pytest
import scipy.stats
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve as sk_calibration_curve

from ssldml_jax.eval import metrics as M


def _data(seed, n=300, decimals=1):
  rng = np.random.default_rng(seed)
  y = rng.random(n) < 0.3
  score = np.round(rng.normal(y * 0.8, 1.0), decimals)  # rounding makes many ties
  return y, score, rng


@pytest.mark.parametrize("seed", range(4))
def test_ranking_metrics_match_sklearn(seed):
  y, score, rng = _data(seed)
  assert M.auroc(y, score) == pytest.approx(skm.roc_auc_score(y, score), abs=1e-12)
  assert M.average_precision(y, score) == pytest.approx(
      skm.average_precision_score(y, score), abs=1e-12)
  # Integer weights are repeated rows; several weight rows are several data sets at once.
  w = rng.integers(0, 4, size=(3, y.size))
  got_auc, got_ap = M.auroc_batch(y, score, w), M.average_precision_batch(y, score, w)
  for r in range(3):
    yy, ss = np.repeat(y, w[r]), np.repeat(score, w[r])
    assert got_auc[r] == pytest.approx(skm.roc_auc_score(yy, ss), abs=1e-12)
    assert got_ap[r] == pytest.approx(skm.average_precision_score(yy, ss), abs=1e-12)


def test_undefined_is_nan_not_a_number():
  y = np.array([1, 1, 0, 0])
  s = np.array([0.1, 0.4, 0.3, 0.2])
  w = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0]])
  auc = M.auroc_batch(y, s, w)
  assert np.isnan(auc[:2]).all() and auc[2] == 0.0
  assert np.isnan(M.average_precision_batch(y, s, w)[1])
  assert np.isnan(M.pearson_r(np.arange(4.0), np.ones(4)))


@pytest.mark.parametrize("seed", range(3))
def test_thresholded_metrics_match_sklearn(seed):
  y, score, rng = _data(seed)
  t = float(np.median(score))  # a tied value: '>=' must include it
  pred = score >= t
  fns = M.classification_metrics(t)
  ones = np.ones((1, y.size))
  assert fns["f1"](y, score, ones)[0] == pytest.approx(skm.f1_score(y, pred))
  assert fns["accuracy"](y, score, ones)[0] == pytest.approx(skm.accuracy_score(y, pred))
  assert fns["sensitivity"](y, score, ones)[0] == pytest.approx(skm.recall_score(y, pred))
  assert fns["specificity"](y, score, ones)[0] == pytest.approx(skm.recall_score(~y, ~pred))
  assert fns["ppv"](y, score, ones)[0] == pytest.approx(skm.precision_score(y, pred))
  assert fns["npv"](y, score, ones)[0] == pytest.approx(skm.precision_score(~y, ~pred))
  w = rng.integers(0, 3, size=y.size)
  assert fns["f1"](y, score, w[None])[0] == pytest.approx(skm.f1_score(y, pred, sample_weight=w))
  assert fns["npv"](y, score, w[None])[0] == pytest.approx(
      skm.precision_score(~y, ~pred, sample_weight=w))
  # Always answering the majority class: its accuracy, per weight row.
  rows = np.stack([np.ones(y.size), w])
  want = [max(np.average(y, weights=r), 1 - np.average(y, weights=r)) for r in rows]
  np.testing.assert_allclose(M.majority_accuracy_batch(y, score, rows), want)


@pytest.mark.parametrize("criterion", ["f1", "youden"])
def test_threshold_is_best_on_validation(criterion):
  y, score, _ = _data(7, n=200)
  t = M.choose_threshold(y, score, criterion)
  candidates = np.unique(score)

  def value(th):
    pred = score >= th
    if criterion == "f1":
      return skm.f1_score(y, pred)
    return skm.recall_score(y, pred) - (1 - skm.recall_score(~y, ~pred))
  best = max(value(c) for c in candidates)
  assert value(t) == pytest.approx(best)
  assert t not in candidates or t == candidates.min()  # midpoint between validation scores


def test_threshold_rejects_one_class():
  with pytest.raises(ValueError, match="y_val: .*one class"):
    M.choose_threshold(np.ones(5), np.arange(5.0))


@pytest.mark.parametrize("seed", range(3))
def test_regression_metrics_match_sklearn_scipy(seed):
  rng = np.random.default_rng(seed)
  y = rng.normal(16, 8, 250)
  pred = np.round(0.6 * y + rng.normal(1000, 5, 250), 0)  # large offset: centring matters
  assert M.rmse(y, pred) == pytest.approx(np.sqrt(skm.mean_squared_error(y, pred)))
  assert M.mae(y, pred) == pytest.approx(skm.mean_absolute_error(y, pred))
  assert M.pearson_r(y, pred) == pytest.approx(scipy.stats.pearsonr(y, pred)[0], abs=1e-10)
  w = rng.integers(0, 3, size=(2, y.size))
  got = M.regression_metrics()
  for r in range(2):
    yy, pp = np.repeat(y, w[r]), np.repeat(pred, w[r])
    assert got["rmse"](y, pred, w)[r] == pytest.approx(np.sqrt(skm.mean_squared_error(yy, pp)))
    assert got["mae"](y, pred, w)[r] == pytest.approx(skm.mean_absolute_error(yy, pp))
    assert got["pearson_r"](y, pred, w)[r] == pytest.approx(
        scipy.stats.pearsonr(yy, pp)[0], abs=1e-10)


def test_curves_match_sklearn():
  y, score, _ = _data(3)
  fpr, tpr, thr = M.roc_curve(y, score)
  sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, score, drop_intermediate=False)
  np.testing.assert_allclose(fpr, sk_fpr)
  np.testing.assert_allclose(tpr, sk_tpr)
  np.testing.assert_allclose(thr[1:], sk_thr[1:])
  precision, recall, pthr = M.pr_curve(y, score)
  sk_p, sk_r, sk_t = skm.precision_recall_curve(y, score, drop_intermediate=False)
  np.testing.assert_allclose(precision, sk_p)
  np.testing.assert_allclose(recall, sk_r)
  np.testing.assert_allclose(pthr, sk_t)


def test_calibration_matches_sklearn():
  rng = np.random.default_rng(0)
  prob = np.round(rng.random(400), 1)  # values exactly on bin edges
  y = rng.random(400) < prob
  observed, predicted, count = M.calibration_curve(y, prob, n_bins=5)
  sk_obs, sk_pred = sk_calibration_curve(y, prob, n_bins=5)
  np.testing.assert_allclose(observed, sk_obs)
  np.testing.assert_allclose(predicted, sk_pred)
  assert count.sum() == 400
  with pytest.raises(ValueError, match="prob: .*logits"):
    M.calibration_curve(y, prob * 3 - 1)


def _brute_recall(x, labels, k, tolerance=None, groups=None):
  hits = valid = 0
  for i in range(len(x)):
    cand = [j for j in range(len(x)) if j != i and (groups is None or groups[j] != groups[i])]
    rel = [(labels[j] == labels[i]) if tolerance is None else
           abs(labels[j] - labels[i]) <= tolerance for j in cand]
    if not any(rel):
      continue
    valid += 1
    d = [float(np.linalg.norm(x[i] - x[j])) for j in cand]
    nearest = np.argsort(d, kind="stable")[:k]
    hits += any(rel[m] for m in nearest)
  return hits / valid


def test_recall_at_k_matches_brute_force():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 60)
  x = rng.normal(size=(60, 4)) + labels[:, None]
  pcwp = rng.normal(16, 8, 60)
  groups = rng.integers(0, 20, 60)
  got = M.recall_at_k(x, labels, (1, 5), chunk=16)
  assert got == {k: pytest.approx(_brute_recall(x, labels, k)) for k in (1, 5)}
  got = M.recall_at_k(x, pcwp, (1, 5), tolerance=3.0, exclude_groups=groups)
  assert got == {k: pytest.approx(_brute_recall(x, pcwp, k, 3.0, groups)) for k in (1, 5)}


def test_nmi_separates_clusters_from_noise():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(3), 40)
  x = rng.normal(size=(120, 5)) * 0.1 + 5.0 * np.eye(5)[labels]
  assert M.nmi(x, labels) > 0.95
  assert M.nmi(x, rng.permutation(labels)) < 0.1


def test_bad_input_names_the_argument():
  with pytest.raises(ValueError, match=r"score: 1 non-finite value\(s\) .*index 2"):
    M.auroc([0, 1, 1], [0.1, 0.2, np.nan])
  with pytest.raises(ValueError, match="y: labels must be 0/1; found 2"):
    M.auroc([0, 2, 1], [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match="y: has 2 entries, expected 3"):
    M.rmse([0.0, 1.0], [0.1, 0.2, 0.3])
