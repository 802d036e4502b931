"""Subgroups: band boundaries, per-group estimates, patient-level permutation tests."""

import numpy as np
import pytest
import scipy.stats

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


def test_subgroup_estimates_equal_metric_on_subset():
  rng = np.random.default_rng(0)
  y, score, pid, _ = _cohort(rng, informative_a=1.0, informative_b=1.0)
  age = rng.choice([25.0, 60.0, 80.0], size=40)[pid]
  groups = S.age_bands(age)
  est = S.subgroup_estimates({"auroc": M.auroc_batch}, y, score, pid, groups, n_resamples=50)
  assert list(est) == ["18-35", "50-75", ">=75"]
  for g, by_metric in est.items():
    m = groups == g
    assert by_metric["auroc"].point == pytest.approx(M.auroc(y[m], score[m]))
    assert by_metric["auroc"].n_ecgs == m.sum()


def test_permutation_pvalues_uniform_under_null():
  rng = np.random.default_rng(1)
  pvalues = []
  for r in range(150):
    y, score, pid, group = _cohort(rng, informative_a=1.0, informative_b=1.0)
    res = S.permutation_test(M.auroc_batch, y, score, pid, group, "a", "b",
                             n_permutations=100, seed=r)
    pvalues.append(res.p_value)
  pvalues = np.array(pvalues)
  assert pvalues.min() > 0.0
  assert np.mean(pvalues <= 0.05) <= 0.10
  assert 0.35 <= np.mean(pvalues <= 0.5) <= 0.65
  assert scipy.stats.kstest(pvalues, "uniform").pvalue > 0.01


def test_permutation_detects_a_planted_difference():
  rng = np.random.default_rng(2)
  y, score, pid, group = _cohort(rng, patients=120, informative_a=3.0, informative_b=0.0)
  res = S.permutation_test(M.auroc_batch, y, score, pid, group, "a", "b", n_permutations=500,
                           name="auroc")
  assert res.value_a > res.value_b and res.difference == pytest.approx(res.value_a - res.value_b)
  assert res.value_a == pytest.approx(M.auroc(y[group == "a"], score[group == "a"]))
  assert res.p_value < 0.01
  assert res.patients_a + res.patients_b == 120
  again = S.permutation_test(M.auroc_batch, y, score, pid, group, "a", "b", n_permutations=500)
  assert again.p_value == res.p_value


def test_mixed_patients_error_or_majority():
  y = np.array([0, 1, 0, 1, 0, 1, 1, 0])
  score = np.arange(8.0)
  pid = np.array([1, 1, 1, 2, 2, 3, 3, 4])
  group = np.array(["a", "a", "b", "b", "b", "a", "a", "b"])
  with pytest.raises(ValueError, match="patient 1 .*both groups"):
    S.permutation_test(M.auroc_batch, y, score, pid, group, "a", "b", n_permutations=10)
  res = S.permutation_test(M.auroc_batch, y, score, pid, group, "a", "b", n_permutations=10,
                           mixed="majority")
  assert (res.patients_a, res.patients_b) == (2, 2)  # patient 1: two of three ECGs in 'a'
  assert S.first_per_patient(group, pid).tolist() == ["a"] * 3 + ["b"] * 2 + ["a"] * 2 + ["b"]


def test_compare_groups_all_known_pairs():
  rng = np.random.default_rng(3)
  y, score, pid, group = _cohort(rng)
  group = np.where(pid < 4, "unknown", group)
  results = S.compare_groups({"auroc": M.auroc_batch, "f1": lambda a, b, w: M.f1_batch(
      a, b, w, threshold=0.0)}, y, score, pid, group, n_permutations=20)
  assert [(r.group_a, r.group_b, r.metric) for r in results] == [
      ("a", "b", "auroc"), ("a", "b", "f1")]
