"""Table cells from fits: means over pretraining and probe seeds and their patient bootstrap
against per-fit brute force, the SD over pretraining seeds, subgroup cells and tests against
scikit-learn on the group's rows, the majority-class row, per-fit records."""

import numpy as np
import pytest
from sklearn import metrics as skm

from ssldml_jax import config_defaults
from ssldml_jax.eval import bootstrap, estimates, fitting, metrics as M, probe_config, targets

N, PATIENTS = 240, 80


def _test_split():
  rng = np.random.default_rng(0)
  patient = np.arange(N) % PATIENTS
  sex = np.where(patient % 7 == 0, -1, patient % 2).astype(np.int32)  # some unknown
  # Patients of every age band, one with no age; the age at the first ECG decides the band.
  age = (20.0 + (patient * 13) % 70 + (np.arange(N) >= PATIENTS) * 1.5).astype(np.float32)
  age[patient == 5] = np.nan
  pcwp = rng.uniform(6.0, 34.0, N).astype(np.float32)
  return {"ecg_id": np.array([f"e{i}" for i in range(N)]),
          "patient_id": np.array([f"p{p:03d}" for p in patient]), "pcwp": pcwp, "age": age,
          "sex": sex}


def _fit(head, target, fraction, seed, scores, threshold=None, pretrain_seed=0):
  return fitting.Fit(head=head, target=target, fraction=fraction, seed=seed, n_train=50,
                     test_scores=scores, val_scores=scores[:10], threshold=threshold,
                     info={"C": 0.1}, n_validation=10, pretrain_seed=pretrain_seed)


@pytest.fixture(scope="module")
def case():
  test = _test_split()
  rng = np.random.default_rng(1)
  y = test["pcwp"] > 18.0
  prob = [np.clip(0.5 + 0.4 * (y - 0.5) + rng.normal(0, 0.3, N), 0.01, 0.99) for _ in range(5)]
  mmhg = [test["pcwp"] + rng.normal(0, 4.0, N) for _ in range(2)]
  full = _fit("linear", "binary", "100%", 0, prob[0], 0.5)
  fits = [full, fitting.Fit(**{**full.__dict__, "seed": 1}),  # one fit standing for two seeds
          _fit("linear", "binary", "10%", 0, prob[1], 0.45),
          _fit("linear", "binary", "10%", 1, prob[2], 0.55),
          # The same cell from an encoder of another pretraining seed.
          _fit("linear", "binary", "10%", 0, prob[3], 0.5, pretrain_seed=7),
          _fit("linear", "binary", "10%", 1, prob[4], 0.6, pretrain_seed=7),
          _fit("linear", "regression", "100%", 0, mmhg[0]),
          _fit("linear", "regression", "100%", 1, mmhg[1]),
          _fit("mlp", "binary", "100%", 0, prob[2], 0.5)]
  c = probe_config.add_entry_keys(probe_config.add_probe_section(config_defaults.base_config()))
  c.probe.heads = ("linear", "mlp")
  c.probe.n_bootstrap = 100
  probe_config.validate(c)
  rows, tests, cells = estimates.evaluate(c, fits, test, "enc")
  return test, fits, rows, tests


def _row(rows, head, target, metric, fraction="100%", group="all"):
  (row,) = [r for h, r in rows if (h, r.target, r.metric, r.fraction, r.group) ==
            (head, target, metric, fraction, group)]
  return row


def test_seed_mean_cell_matches_brute_force(case):
  test, fits, rows, _ = case
  y, pid = test["pcwp"] > 18.0, test["patient_id"]
  chosen = [f for f in fits if f.fraction == "10%"]
  per_fit = [bootstrap.resample_values(M.classification_metrics(f.threshold, ("auroc", "f1")),
                                       y, f.test_scores, pid, n_resamples=100, seed=0)
             for f in chosen]
  own = {"auroc": [skm.roc_auc_score(y, f.test_scores) for f in chosen],
         "f1": [skm.f1_score(y, f.test_scores >= f.threshold) for f in chosen]}
  for metric in ("auroc", "f1"):
    row = _row(rows, "linear", "binary", metric, fraction="10%")
    values = np.mean([v[metric] for v in per_fit], axis=0)
    low, high = np.quantile(values[np.isfinite(values)], [0.025, 0.975])
    assert row.point == pytest.approx(np.mean(own[metric]), abs=1e-12)  # all four replicates
    assert (row.low, row.high) == pytest.approx((low, high))
    assert (row.method, row.n) == ("enc", N)
    # SD over pretraining seeds 0 and 7 of each seed's mean over its two probe seeds.
    assert row.sd == pytest.approx(np.std([np.mean(own[metric][:2]), np.mean(own[metric][2:])],
                                          ddof=1), abs=1e-12)
  assert np.isnan(_row(rows, "linear", "regression", "rmse").sd)  # one pretraining seed
  # Regression: the mean over the two seeds' own RMSE.
  mmhg = [f.test_scores for f in fits if f.target == "regression"]
  rmse = np.mean([np.sqrt(skm.mean_squared_error(test["pcwp"], s)) for s in mmhg])
  assert _row(rows, "linear", "regression", "rmse").point == pytest.approx(rmse, abs=1e-9)


def test_a_fit_standing_for_several_seeds_counts_once(case):
  test, fits, rows, _ = case
  y = test["pcwp"] > 18.0
  full = fits[0]
  extra = _fit("linear", "binary", "100%", 2, fits[2].test_scores, 0.5)
  c = probe_config.add_entry_keys(probe_config.add_probe_section(config_defaults.base_config()))
  c.probe.n_bootstrap, c.probe.binary_test_metrics = 20, ()
  rows, _, _ = estimates.evaluate(c, fits[:2] + [extra], test, "enc")
  want = np.mean([skm.roc_auc_score(y, full.test_scores), skm.roc_auc_score(y, extra.test_scores)])
  assert _row(rows, "linear", "binary", "auroc").point == pytest.approx(want, abs=1e-12)


def test_subgroup_cells_and_tests(case):
  test, fits, rows, tests = case
  y, score = test["pcwp"] > 18.0, fits[0].test_scores
  groups = estimates.subgroups_of(test)
  # Brute force: sex from the code, age band from the patient's first ECG.
  first_age = {}
  for p, a in zip(test["patient_id"], test["age"]):
    first_age.setdefault(p, a)
  for i in range(N):
    sex = {0: "female", 1: "male", -1: "sex unknown"}[int(test["sex"][i])]
    a = first_age[test["patient_id"][i]]
    band = ("age unknown" if np.isnan(a) else "18-35" if a < 35 else "35-50" if a < 50
            else "50-75" if a < 75 else ">=75")
    assert (groups["sex"][i], groups["age"][i]) == (sex, band)
  for kind in ("sex", "age"):
    for g in set(groups[kind].tolist()):
      m = groups[kind] == g
      row = _row(rows, "linear", "binary", "auroc", group=g)
      assert row.n == m.sum()
      assert row.point == pytest.approx(skm.roc_auc_score(y[m], score[m]), abs=1e-12)
  # Only the primary head at 100% gets subgroup rows and tests.
  assert {h for h, r in rows if r.group != "all"} == {"linear"}
  assert {r.fraction for _, r in rows if r.group != "all"} == {"100%"}
  pairs = {(t, r.metric, r.group_a, r.group_b, r.test) for h, t, r in tests}
  bands = ["18-35", "35-50", "50-75", ">=75"]
  want = {("binary", "auroc", "female", "male", "DeLong"),
          ("regression", "rmse", "female", "male", "bootstrap")}
  want |= {(t, m, a, b, kind) for t, m, kind in (("binary", "auroc", "DeLong"),
                                                 ("regression", "rmse", "bootstrap"))
           for i, a in enumerate(bands) for b in bands[i + 1:]}
  assert pairs == want  # unknown sex / age never compared
  female_male = next(r for h, t, r in tests if (t, r.group_a) == ("binary", "female"))
  female = groups["sex"] == "female"
  assert female_male.value_a == pytest.approx(skm.roc_auc_score(y[female], score[female]))
  assert female_male.prevalence_a == pytest.approx(y[female].mean())
  assert female_male.ecgs_a == female.sum() and 0.0 < female_male.p_value <= 1.0


def test_majority_class_row(case):
  test, _, rows, _ = case
  y = test["pcwp"] > 18.0
  row = _row(rows, "linear", "binary", estimates.MAJORITY)
  assert row.point == pytest.approx(max(y.mean(), 1 - y.mean()))
  assert row.low <= row.point <= row.high
  assert not [r for _, r in rows if r.metric == estimates.MAJORITY and r.fraction != "100%"]


def test_fit_records_hold_each_fits_own_metrics(case):
  test, fits, _, _ = case
  records = estimates.fit_records(fits, test, targets.parse_all(("binary", "regression"), 18.0))
  assert len(records) == len(fits)
  y = test["pcwp"] > 18.0
  for f, r in zip(fits, records):
    assert (r["head"], r["target"], r["fraction"], r["seed"], r["C"], r["pretrain_seed"],
            r["n_validation"]) == (f.head, f.target, f.fraction, f.seed, 0.1, f.pretrain_seed, 10)
    if f.target == "binary":
      assert r["test"]["auroc"] == pytest.approx(skm.roc_auc_score(y, f.test_scores), abs=1e-12)
      assert r["test"]["accuracy"] == pytest.approx(
          skm.accuracy_score(y, f.test_scores >= f.threshold), abs=1e-12)
    else:
      assert r["test"]["mae"] == pytest.approx(
          skm.mean_absolute_error(test["pcwp"], f.test_scores), abs=1e-9)
