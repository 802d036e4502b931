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
