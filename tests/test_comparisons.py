"""Paired comparisons: which pairs and metrics, the paired bootstrap and DeLong of each against
their own functions on the same fits, Holm over the table, and 'holds' for a planted gap."""

import numpy as np
import pytest
from sklearn import metrics as skm

from ssldml_jax import config_defaults
from ssldml_jax.eval import (comparisons, delong, estimates, fitting, probe_config, significance,
                             targets)

N, PATIENTS = 300, 120


@pytest.fixture(scope="module")
def case():
  rng = np.random.default_rng(0)
  patient = np.sort(rng.integers(0, PATIENTS, N))
  pcwp = np.repeat(rng.uniform(5, 35, PATIENTS), np.bincount(patient, minlength=PATIENTS))
  test = {"ecg_id": np.array([f"e{i}" for i in range(N)]),
          "patient_id": np.array([f"p{p}" for p in patient]),
          "pcwp": pcwp.astype(np.float32), "age": np.full(N, 60.0, np.float32),
          "sex": (patient % 2).astype(np.int32)}
  y = test["pcwp"] > 18.0
  c = probe_config.add_entry_keys(probe_config.add_probe_section(config_defaults.base_config()))
  c.probe.heads, c.probe.n_bootstrap, c.probe.binary_test_metrics = ("linear", "mlp"), 200, ()
  c.probe.regression_test_metrics = ()
  probe_config.validate(c)
  signal = {"random": 0.0, "simclr": 0.5, "strong": 3.0}
  cells = {}
  for name, strength in signal.items():
    fits = []
    for pretrain_seed in (0, 1):
      for fraction in ("100%", "10%"):
        noise = rng.normal(0, 1, N)
        prob = 1 / (1 + np.exp(-(strength * (y - 0.5) + noise)))
        fits.append(fitting.Fit("linear", "binary", fraction, 0, 20, prob, prob[:5], 0.5, {},
                                pretrain_seed=pretrain_seed))
        fits.append(fitting.Fit("linear", "regression", fraction, 0, 20,
                                pcwp + rng.normal(0, 10 - 2 * strength, N), pcwp[:5], None, {},
                                pretrain_seed=pretrain_seed))
        fits.append(fitting.Fit("mlp", "binary", fraction, 0, 20, prob, prob[:5], 0.5, {},
                                pretrain_seed=pretrain_seed))
    cells[name] = estimates.evaluate(c, fits, test, name).cells
  labels = {"binary": y, "regression": test["pcwp"].astype(np.float64)}
  found = comparisons.compare(cells, ("random", "simclr"), "linear", targets.from_config(c), test)
  return cells, found, labels, test


def test_pairs_metrics_and_rows(case):
  _, found, _, _ = case
  keys = [(c.method, c.reference, c.target, c.fraction, c.metric) for c in found]
  assert len(keys) == len(set(keys))
  pairs = {(m, r) for m, r, *_ in keys}
  # The random encoder is never compared with the reference (that is the reference vs random).
  assert pairs == {("simclr", "random"), ("strong", "random"), ("strong", "simclr")}
  for pair in pairs:
    own = {(t, f, m) for mm, r, t, f, m in keys if (mm, r) == pair}
    assert own == ({("binary", "100%", m) for m in ("auroc", "auprc", "f1", "accuracy")}
                   | {("regression", "100%", m) for m in ("rmse", "mae", "pearson_r")}
                   | {("binary", "10%", "auroc"), ("regression", "10%", "rmse")})
  assert {c.delong is not None for c in found if c.metric == "auroc"} == {True}
  assert {c.delong is None for c in found if c.metric != "auroc"} == {True}


def test_each_comparison_is_its_cells_paired_difference(case):
  cells, found, labels, test = case
  for c in found:
    a = cells[c.method]["linear", c.target, c.fraction]
    b = cells[c.reference]["linear", c.target, c.fraction]
    want = significance.difference(a.metrics[c.metric].estimate.point,
                                   a.metrics[c.metric].replicates,
                                   b.metrics[c.metric].estimate.point,
                                   b.metrics[c.metric].replicates)
    assert c.diff == want
    if c.metric == "auroc":
      mean_a = np.mean([skm.roc_auc_score(labels["binary"], f.test_scores) for f in a.fits])
      assert c.diff.value_a == pytest.approx(mean_a, abs=1e-12)
      assert c.delong == delong.paired(labels["binary"], [f.test_scores for f in a.fits],
                                       [f.test_scores for f in b.fits], test["patient_id"])


def test_holm_over_the_table_and_what_holds(case):
  _, found, _, _ = case
  np.testing.assert_allclose([c.p_holm for c in found],
                             significance.holm([c.diff.p_value for c in found]))
  aurocs = [c for c in found if c.metric == "auroc"]
  np.testing.assert_allclose([c.delong_p_holm for c in aurocs],
                             significance.holm([c.delong.p_value for c in aurocs]))
  assert all(np.isnan(c.delong_p_holm) for c in found if c.metric != "auroc")
  strong = {(c.target, c.fraction, c.metric): c for c in found
            if (c.method, c.reference) == ("strong", "random")}
  assert strong["binary", "100%", "auroc"].holds and strong["binary", "100%", "auroc"].diff.low > 0
  assert all(c.holds == (c.p_holm < 0.05) for c in found)
  assert comparisons.holding(found, "random") >= {("strong", "binary", "100%", "auroc")}
  assert not {m for m, *_ in comparisons.holding(found, "random")} - {"strong", "simclr"}
  table = comparisons.table(found, {"strong": "Strong"}, "logistic / ridge probe")
  assert len(table.body) == len(found) and table.header[-1] == "Holds"
  row = next(r for r in table.body if r[:5] == ("Strong", "random", "binary", "100%", "AUROC"))
  assert row[-1] == "yes" and row[-3] != "n/a"
