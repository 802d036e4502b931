"""Linear probes recover planted signals and reject bad input."""

import numpy as np
import pytest

from ssldml_jax.eval import linear_probe as L
from ssldml_jax.eval import metrics as M


def _embeddings(rng, n, dim=12):
  # Unequal scales and offsets: the probe must standardise, and with training statistics only.
  scale = np.geomspace(0.1, 10.0, dim)
  return rng.normal(size=(n, dim)) * scale + 3.0, scale


@pytest.fixture(scope="module")
def planted_binary():
  rng = np.random.default_rng(0)
  w = np.zeros(12)
  w[:3] = [1.5, -1.0, 0.8]
  splits = []
  for n in (400, 200, 400):
    x, scale = _embeddings(rng, n)
    logit = ((x - 3.0) / scale) @ w
    splits.append((x, (logit + rng.logistic(size=n) * 0.5) > 0))
  return splits


def test_logistic_probe_recovers_planted_signal(planted_binary):
  (xt, yt), (xv, yv), (xs, ys) = planted_binary
  res = L.logistic_probe(xt, yt, xv, yv, xs)
  assert M.auroc(ys, res.test_scores) > 0.9
  assert res.hyper_name == "C" and res.hyper >= 1e-2  # not the most regularised end of the grid
  assert res.val_criterion[res.grid.index(res.hyper)] == max(res.val_criterion)
  assert ((res.test_scores > 0) & (res.test_scores < 1)).all()
  np.testing.assert_allclose(res.predict(xs), res.test_scores)
  np.testing.assert_allclose(res.standardizer.mean, xt.mean(axis=0))  # training split only
  assert res.threshold == M.choose_threshold(yv, res.val_scores)
  # The direction of the planted weights is recovered on the standardised scale.
  cos = res.coef[:3] @ np.array([1.5, -1.0, 0.8]) / np.linalg.norm(res.coef) / np.linalg.norm(
      [1.5, -1.0, 0.8])
  assert cos > 0.95
  assert res.notes == ()


def test_ridge_probe_recovers_coefficients():
  rng = np.random.default_rng(1)
  w = rng.normal(size=12)
  splits = []
  for n in (500, 200, 200):
    x, scale = _embeddings(rng, n)
    splits.append((x, x @ w + 16.0 + rng.normal(0, 0.1, n)))
  (xt, yt), (xv, yv), (xs, ys) = splits
  res = L.ridge_probe(xt, yt, xv, yv, xs)
  # Per unit of standard deviation the noise allows about 0.1 / sqrt(500) = 0.005 of error.
  np.testing.assert_allclose(res.raw_coef * scale, w * scale, atol=0.02)
  np.testing.assert_allclose(res.raw_coef[-6:], w[-6:], atol=0.01)  # the large-scale dimensions
  assert res.hyper <= 1.0
  assert M.rmse(ys, res.test_scores) < 0.2
  # Pure noise: validation prefers strong shrinkage.
  noise = L.ridge_probe(xt, rng.normal(size=500), xv, rng.normal(size=200))
  assert noise.hyper >= 100.0


def test_probe_rejects_bad_input(planted_binary):
  (xt, yt), (xv, yv), _ = planted_binary
  with pytest.raises(ValueError, match="y_train: only one class"):
    L.logistic_probe(xt, np.zeros(len(xt)), xv, yv)
  bad = xv.copy()
  bad[5, 2] = np.nan
  with pytest.raises(ValueError, match="x_val: 1 embedding.* first at row 5"):
    L.logistic_probe(xt, yt, bad, yv)


def _planted_classes(rng, n, k=3):
  x, scale = _embeddings(rng, n)
  z = (x - 3.0) / scale
  logits = z[:, :k] * 1.5
  return x, np.argmax(logits + rng.gumbel(size=(n, k)), axis=1)


def test_multilabel_probe_is_one_logistic_probe_per_label(planted_binary):
  (xt, yt), (xv, yv), (xs, ys) = planted_binary
  # Two labels: the planted one and its complement shifted by noise.
  rng = np.random.default_rng(5)
  flip = lambda y: ~y ^ (rng.random(y.size) < 0.1)  # noqa: E731
  y2 = [np.stack([y, flip(y)], axis=1) for y in (yt, yv, ys)]
  res = L.multilabel_probe(xt, y2[0], xv, y2[1], xs, labels=("A", "B"))
  assert res.task == "multilabel" and res.coef.shape == (12, 2)
  for k in range(2):
    alone = L.logistic_probe(xt, y2[0][:, k], xv, y2[1][:, k], xs)
    assert res.hyper[k] == alone.hyper and res.threshold[k] == alone.threshold
    np.testing.assert_allclose(res.test_scores[:, k], alone.test_scores, rtol=1e-12)
  np.testing.assert_allclose(res.predict(xs), res.test_scores, rtol=1e-12)
  y_one = y2[0].copy()
  y_one[:, 1] = True
  with pytest.raises(ValueError, match="label B: y_train: only one class"):
    L.multilabel_probe(xt, y_one, xv, y2[1], labels=("A", "B"))


def test_multiclass_probe_picks_c_by_validation_macro_auroc_like_sklearn():
  from sklearn.linear_model import LogisticRegression
  from sklearn.metrics import roc_auc_score

  rng = np.random.default_rng(7)
  (xt, yt), (xv, yv), (xs, ys) = (_planted_classes(rng, n) for n in (300, 150, 200))
  grid = (1e-3, 1e-1, 10.0)
  res = L.multiclass_probe(xt, yt, xv, yv, xs, classes=("a", "b", "c"), grid=grid)
  std = L.fit_standardizer(xt)
  # By brute force: a fresh scikit-learn fit for every C, scored on validation.
  found = []
  for c in grid:
    model = LogisticRegression(C=c, max_iter=2000).fit(std(xt), yt)
    found.append(roc_auc_score(yv, model.predict_proba(std(xv)), multi_class="ovr"))
  assert res.val_criterion == pytest.approx(tuple(found), abs=1e-4)
  # The chosen C is a best one (grid values may tie to rounding), and its fit is scikit-learn's.
  assert found[grid.index(res.hyper)] == pytest.approx(max(found), abs=1e-4)
  assert res.val_criterion[grid.index(res.hyper)] == max(res.val_criterion)
  best = LogisticRegression(C=res.hyper, max_iter=2000).fit(std(xt), yt)
  # Warm-started along the grid vs. a cold start: equal up to lbfgs's tolerance.
  np.testing.assert_allclose(res.test_scores, best.predict_proba(std(xs)), atol=2e-3)
  np.testing.assert_allclose(res.test_scores.sum(axis=1), 1.0)
  assert roc_auc_score(ys, res.test_scores, multi_class="ovr") > 0.8
  # Two classes: scikit-learn fits one logit; the softmax of the two columns equals it.
  two = L.multiclass_probe(xt, yt > 0, xv, yv > 0, xs, classes=("no", "yes"), grid=(1.0,))
  model = LogisticRegression(C=1.0, max_iter=2000).fit(std(xt), yt > 0)
  np.testing.assert_allclose(two.test_scores, model.predict_proba(std(xs)), atol=2e-3)
  with pytest.raises(ValueError, match="no example of class\\(es\\) c"):
    L.multiclass_probe(xt, np.minimum(yt, 1), xv, yv, classes=("a", "b", "c"))
