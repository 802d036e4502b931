"""Subgroups: band boundaries, per-group estimates, tests whose null is an equal metric."""

import numpy as np
import pytest
import scipy.stats

from ssldml_jax.eval import estimates, fitting, targets
from ssldml_jax.eval import metrics as M
from ssldml_jax.eval import subgroups as S


def test_age_band_boundaries_are_half_open():
  age = [17.9, 18, 34.99, 35, 49.9, 50, 74.99, 75, 101, np.nan]
  assert S.age_bands(age).tolist() == [
      "<18", "18-35", "18-35", "35-50", "35-50", "50-75", "50-75", ">=75", ">=75", "unknown"]


def test_sex_groups_and_bad_code():
  assert S.sex_groups([0, 1, -1, 1]).tolist() == ["female", "male", "unknown", "male"]
  with pytest.raises(ValueError, match=r"sex: code 2 at index 1 \(1 such value"):
    S.sex_groups([0, 2, 1])


def _cohort(rng, patients=40, per_patient=3, informative_a=0.0, informative_b=0.0):
  """Two patient-level groups; scores carry signal of the given strength in each group."""
  pid = np.repeat(np.arange(patients), per_patient)
  group_patient = np.where(rng.random(patients) < 0.5, "a", "b")
  y_patient = rng.random(patients) < 0.5
  u = rng.normal(0, 1, patients)  # shared within patient: clustered scores
  group = group_patient[pid]
  effect = np.where(group == "a", informative_a, informative_b)
  score = effect * y_patient[pid] + u[pid] + rng.normal(0, 0.5, pid.size)
  return y_patient[pid], score, pid, group


def test_subgroup_cells_equal_metric_on_subset():
  """Each group's cell, made as ``estimates.evaluate`` makes it (``cell_metrics`` on the group's
  rows, groups in ``group_order``), is the metric on that subset."""
  rng = np.random.default_rng(0)
  y, score, pid, _ = _cohort(rng, informative_a=1.0, informative_b=1.0)
  age = rng.choice([25.0, 60.0, 80.0], size=40)[pid]
  groups = S.age_bands(age)
  fit = fitting.Fit(head="linear", target="binary", fraction="100%", seed=0, n_train=1,
                    test_scores=score, val_scores=score, threshold=0.0, info={})
  index = np.arange(y.size, dtype=np.float64)
  est = {g: estimates.cell_metrics([fit], targets.parse("binary", 18.0), y, index[groups == g],
                                   pid[groups == g], n_bootstrap=50, names=("auroc",))
         for g in S.group_order(groups)}
  assert list(est) == ["18-35", "50-75", ">=75"]
  for g, by_metric in est.items():
    m = groups == g
    assert by_metric["auroc"].estimate.point == pytest.approx(M.auroc(y[m], score[m]))
    assert by_metric["auroc"].estimate.n_ecgs == m.sum()


def _prevalence_cohort(rng, patients=160, prevalence=(0.2, 0.6), signal=(1.0, 1.0)):
  """Two groups of patients with their own prevalence and signal strength (binormal scores with
  a strong patient effect, 1-5 ECGs each): equal ``signal`` means equal AUROC whatever the
  prevalence."""
  counts = rng.integers(1, 6, patients)
  pid = np.repeat(np.arange(patients), counts)
  in_a = np.arange(patients) < patients // 2
  y_patient = rng.random(patients) < np.where(in_a, prevalence[0], prevalence[1])
  effect = np.where(in_a, signal[0], signal[1])
  u = rng.normal(0, 0.9, patients)
  score = np.repeat(effect * y_patient + u, counts) + rng.normal(0, 0.3, pid.size)
  return np.repeat(y_patient, counts), score, pid, np.where(np.repeat(in_a, counts), "a", "b")


def test_auroc_test_holds_its_level_when_only_prevalence_differs():
  """Null of equal AUROC with prevalence 20% vs 60%: DeLong's p-values stay near uniform, while
  AUPRC, which depends on prevalence, differs between the groups for that reason alone."""
  rng = np.random.default_rng(1)
  pvalues, auprc_gaps = [], []
  for _ in range(150):
    y, score, pid, group = _prevalence_cohort(rng)
    res = S.group_test("auroc", M.auroc_batch, y, score, pid, group, "a", "b",
                       fits_scores=score[None])
    pvalues.append(res.p_value)
    a = group == "a"
    auprc_gaps.append(M.average_precision(y[a], score[a]) - M.average_precision(y[~a], score[~a]))
  pvalues = np.array(pvalues)
  assert res.test == "DeLong"
  assert np.mean(pvalues <= 0.05) <= 0.10
  assert 0.35 <= np.mean(pvalues <= 0.5) <= 0.65
  assert scipy.stats.kstest(pvalues, "uniform").pvalue > 0.01
  assert np.mean(auprc_gaps) < -0.2  # what a test of the whole distribution would pick up


def test_auroc_test_detects_a_planted_difference_and_reports_the_groups():
  rng = np.random.default_rng(2)
  y, score, pid, group = _prevalence_cohort(rng, patients=200, signal=(3.0, 0.3))
  res = S.group_test("auroc", M.auroc_batch, y, score, pid, group, "a", "b",
                     fits_scores=score[None])
  a = group == "a"
  assert res.value_a == pytest.approx(M.auroc(y[a], score[a]))
  assert res.value_b == pytest.approx(M.auroc(y[~a], score[~a]))
  assert res.difference == pytest.approx(res.value_a - res.value_b)
  assert res.low < res.difference < res.high and res.p_value < 0.001
  assert (res.ecgs_a, res.ecgs_b) == (a.sum(), (~a).sum())
  assert (res.patients_a, res.patients_b) == (100, 100)
  assert (res.prevalence_a, res.prevalence_b) == pytest.approx((y[a].mean(), y[~a].mean()))


def test_other_metrics_use_an_independent_groups_bootstrap():
  rng = np.random.default_rng(3)
  pid = np.repeat(np.arange(60), 2)
  group = np.where(pid < 30, "a", "b")
  truth = rng.uniform(5, 35, pid.size)
  pred = truth + rng.normal(0, np.where(group == "a", 2.0, 6.0))
  res = S.group_test("rmse", M.rmse_batch, truth, pred, pid, group, "a", "b", n_resamples=200,
                     seed=5)
  a = group == "a"
  assert res.test == "bootstrap" and np.isnan(res.prevalence_a)
  assert res.value_a == pytest.approx(M.rmse(truth[a], pred[a]))
  # Each group resampled on its own: group a with the seed, group b with seed + 1.
  va = S.bootstrap.resample_values({"r": M.rmse_batch}, truth[a], pred[a], pid[a],
                                   n_resamples=200, seed=5)["r"]
  vb = S.bootstrap.resample_values({"r": M.rmse_batch}, truth[~a], pred[~a], pid[~a],
                                   n_resamples=200, seed=6)["r"]
  assert (res.low, res.high) == pytest.approx(tuple(np.quantile(va - vb, [0.025, 0.975])))
  assert res.difference < 0 and res.p_value < 0.02


def test_mixed_patients_error_or_majority():
  y = np.array([0, 1, 0, 1, 0, 1, 1, 0])
  score = np.arange(8.0)
  pid = np.array([1, 1, 1, 2, 2, 3, 3, 4])
  group = np.array(["a", "a", "b", "b", "b", "a", "a", "b"])
  with pytest.raises(ValueError, match="patient 1 .*both groups"):
    S.group_test("f1", M.auroc_batch, y, score, pid, group, "a", "b", n_resamples=10)
  res = S.group_test("auroc", M.auroc_batch, y, score, pid, group, "a", "b", n_resamples=10,
                     mixed="majority")
  assert (res.patients_a, res.patients_b) == (2, 2)  # patient 1: two of three ECGs in 'a'
  assert (res.ecgs_a, res.ecgs_b) == (5, 3)
  assert S.first_per_patient(group, pid).tolist() == ["a"] * 3 + ["b"] * 2 + ["a"] * 2 + ["b"]


def test_compare_groups_all_known_pairs_and_undefined_aurocs():
  rng = np.random.default_rng(3)
  y, score, pid, group = _prevalence_cohort(rng, patients=40)
  group = np.where(pid < 4, "unknown", group)
  results = S.compare_groups({"auroc": M.auroc_batch, "f1": lambda a, b, w: M.f1_batch(
      a, b, w, threshold=0.0)}, y, score, pid, group, fits_scores=score[None], n_resamples=20)
  assert [(r.group_a, r.group_b, r.metric, r.test) for r in results] == [
      ("a", "b", "auroc", "DeLong"), ("a", "b", "f1", "bootstrap")]
  one_class = np.where(group == "a", False, y)  # no positive in group a: no AUROC there
  (res,) = S.compare_groups({"auroc": M.auroc_batch}, one_class, score, pid, group,
                            fits_scores=score[None], n_resamples=20)
  assert np.isnan(res.value_a) and np.isnan(res.p_value) and np.isfinite(res.value_b)
