"""Patient-level bootstrap: coverage, point estimate, determinism, undefined resamples."""

import numpy as np
import pytest
import scipy.stats

from ssldml_jax.eval import bootstrap as B
from ssldml_jax.eval import metrics as M


def _clustered(rng, patients=100, per_patient=3, effect=1.0, patient_sd=1.0, ecg_sd=0.5):
  """Labels per patient, scores = effect * y + patient effect + ECG noise.

  Positive and negative ECGs always come from different patients, so the true AUROC is
  P(N(effect, 2 (patient_sd^2 + ecg_sd^2)) > 0).
  """
  y_patient = rng.random(patients) < 0.4
  u = rng.normal(0.0, patient_sd, patients)
  pid = np.repeat(np.arange(patients), per_patient)
  score = effect * y_patient[pid] + u[pid] + rng.normal(0.0, ecg_sd, pid.size)
  true_auc = scipy.stats.norm.cdf(effect / np.sqrt(2 * (patient_sd ** 2 + ecg_sd ** 2)))
  return y_patient[pid], score, pid, true_auc


def test_patient_bootstrap_covers_the_true_auroc():
  rng = np.random.default_rng(0)
  metric = {"auroc": M.auroc_batch}
  covered = naive = 0
  repeats = 100
  for r in range(repeats):
    y, score, pid, true_auc = _clustered(rng)
    est = B.bootstrap_ci(metric, y, score, pid, n_resamples=200, seed=r)["auroc"]
    covered += est.low <= true_auc <= est.high
    # Treating each ECG as its own patient ignores the clustering.
    est = B.bootstrap_ci(metric, y, score, np.arange(y.size), n_resamples=200, seed=r)["auroc"]
    naive += est.low <= true_auc <= est.high
  assert covered / repeats >= 0.90
  assert naive < covered - 10  # ECG resampling is overconfident on clustered data


def test_point_is_full_set_and_interval_is_percentile():
  rng = np.random.default_rng(1)
  y, score, pid, _ = _clustered(rng, patients=40)
  metrics = M.classification_metrics(threshold=0.5)
  est = B.bootstrap_ci(metrics, y, score, pid, n_resamples=300, seed=3)
  values = B.resample_values(metrics, y, score, pid, n_resamples=300, seed=3)
  assert est["auroc"].point == pytest.approx(M.auroc(y, score))
  assert est["auroc"].point != pytest.approx(np.mean(values["auroc"]), abs=1e-9)
  for name, e in est.items():
    assert (e.low, e.high) == pytest.approx(tuple(np.quantile(values[name], [0.025, 0.975])))
    assert e.n_ecgs == y.size and e.n_patients == 40 and e.n_resamples == 300


def test_resamples_take_whole_patients_and_are_seeded(monkeypatch):
  rng = np.random.default_rng(2)
  y, score, pid, _ = _clustered(rng, patients=30, per_patient=4)
  seen = []

  def spy(y_, s_, w):
    seen.append(w)
    return w.sum(axis=1)
  B.resample_values({"w": spy}, y, score, pid, n_resamples=50, seed=5)
  w = np.concatenate(seen)
  assert w.shape == (50, y.size)
  per_patient = w.reshape(50, 30, 4)  # ECGs of a patient share one count
  assert (per_patient == per_patient[:, :, :1]).all()
  assert (per_patient[:, :, 0].sum(axis=1) == 30).all()  # 30 draws of patients per resample
  first = B.resample_values({"auroc": M.auroc_batch}, y, score, pid, n_resamples=50, seed=5)
  # A tiny chunk size must not change the resamples.
  monkeypatch.setattr(B, "_CHUNK_ELEMENTS", 7 * y.size)
  again = B.resample_values({"auroc": M.auroc_batch}, y, score, pid, n_resamples=50, seed=5)
  other = B.resample_values({"auroc": M.auroc_batch}, y, score, pid, n_resamples=50, seed=6)
  np.testing.assert_array_equal(first["auroc"], again["auroc"])
  assert not np.array_equal(first["auroc"], other["auroc"])


def test_undefined_resamples_are_counted_and_skipped():
  # One positive patient among 8: about (7/8)^8 = 34% of resamples have no positive ECG.
  pid = np.repeat(np.arange(8), 2)
  y = pid == 0
  score = np.linspace(0.0, 1.0, 16)
  est = B.bootstrap_ci({"auroc": M.auroc_batch}, y, score, pid, n_resamples=400, seed=0)["auroc"]
  counts = B.patient_counts(8, 400, seed=0)
  assert est.n_undefined == int(np.sum(counts[:, 0] == 0))
  assert 0 < est.n_undefined < 400
  assert np.isfinite(est.low) and np.isfinite(est.high)


def test_bad_patient_ids_are_named():
  with pytest.raises(ValueError, match=r"patient_ids: 1 missing \(NaN\) id\(s\), first at index 1"):
    B.bootstrap_ci({"auroc": M.auroc_batch}, [0, 1, 1], [0.1, 0.2, 0.3], [1.0, np.nan, 2.0])
  with pytest.raises(ValueError, match="patient_ids: 1 missing .* index 2"):
    B.patient_index(np.array(["a", "b", ""]))
