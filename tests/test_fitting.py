"""Fitting every head, target, subset and seed: planted signals recovered (scored by
scikit-learn), subsets and seeds as configured, unusable subsets left out or reported."""

import numpy as np
import pytest
from sklearn import metrics as skm

from ssldml_jax import cli, config_defaults
from ssldml_jax.eval import fitting, metrics as M, probe_config, subsets, targets


def _split(rng, n, w, patients):
  x = rng.normal(size=(n, 8)) * np.geomspace(0.2, 5.0, 8) + 1.0
  signal = ((x - 1.0) / np.geomspace(0.2, 5.0, 8)) @ w
  pcwp = np.clip(16.0 + 6.0 * signal + rng.normal(0, 1.5, n), 1.0, 60.0)
  pid = np.array([f"p{i % patients:04d}" for i in range(n)])
  return {"embedding": x.astype(np.float32), "pcwp": pcwp.astype(np.float32), "patient_id": pid,
          "ecg_id": np.array([f"e{i}" for i in range(n)]), "age": np.full(n, 60.0, np.float32),
          "sex": (np.arange(n) % patients % 2).astype(np.int32)}


def planted_splits():
  rng = np.random.default_rng(0)
  w = np.array([1.0, -0.7, 0.5, 0, 0, 0, 0, 0])
  return {"train": _split(rng, 600, w, 200), "validation": _split(rng, 200, w, 70),
          "test": _split(rng, 300, w, 100)}


def probe_settings(heads=("linear", "mlp")):
  c = probe_config.add_entry_keys(probe_config.add_probe_section(config_defaults.base_config()))
  c.probe.update(dict(heads=heads, fraction_heads=("linear",), fractions=(0.1, 1.0),
                       limited_n=100, seeds=(0, 1)))
  c.probe.mlp.update(dict(hidden_dim=32, max_steps=600, eval_every_steps=50, patience=3))
  probe_config.validate(c)
  return c


@pytest.mark.slow
def test_heads_recover_planted_signal_on_the_configured_subsets():
  splits, config = planted_splits(), probe_settings()
  fits = fitting.fit_all(config, splits, log=lambda m: None)
  test, val = splits["test"], splits["validation"]
  for f in fits:
    if f.fraction != "100%":
      continue
    if f.target == "binary":
      assert skm.roc_auc_score(test["pcwp"] > 18.0, f.test_scores) > 0.9, (f.head, f.seed)
      assert f.threshold == M.choose_threshold(val["pcwp"] > 18.0, f.val_scores)
    else:
      assert np.corrcoef(test["pcwp"], f.test_scores)[0, 1] > 0.9, (f.head, f.seed)
      assert np.sqrt(skm.mean_squared_error(test["pcwp"], f.test_scores)) < 3.0  # SD is ~8
      assert f.threshold is None
  # Fractions and the limited setting only for fraction_heads; n_train as asked.
  assert {(f.head, f.fraction) for f in fits} == {
      ("linear", "10%"), ("linear", "100%"), ("linear", "n=100"), ("mlp", "100%")}
  assert len(fits) == 2 * 2 * 4  # targets x seeds x (three linear subsets + one mlp)
  assert {f.n_train for f in fits if f.fraction == "n=100"} == {100}
  assert {f.n_train for f in fits if f.fraction == "10%"} == {60}  # 20 of 200 patients x 3 ECGs
  # Model selection below 100% saw 20 validation patients (the floor over 10% of 70), not 70:
  # 40-60 of the 200 validation ECGs (patients hold 2 or 3), the rows its scores belong to.
  y_val = val["pcwp"] > 18.0
  for f in fits:
    assert f.n_validation == len(f.val_scores)
    if f.fraction == "100%":
      assert f.n_validation == 200
      continue
    assert 40 <= f.n_validation <= 60
    rows = subsets.draw_subsets(config, splits["train"]["patient_id"], f.seed)[f.fraction]
    kept = subsets.validation_rows(config, val["patient_id"], splits["train"]["patient_id"],
                                   rows, f.seed)
    assert np.unique(val["patient_id"][kept]).size == subsets.MIN_VALIDATION_PATIENTS
    if f.target == "binary":
      assert f.threshold == M.choose_threshold(y_val[kept], f.val_scores)
  # The deterministic linear fit at 100% is made once and stands for both seeds; others differ.
  for target in ("binary", "regression"):
    full = [f for f in fits if (f.head, f.target, f.fraction) == ("linear", target, "100%")]
    assert [f.seed for f in full] == [0, 1] and full[0].test_scores is full[1].test_scores
    tenth = [f for f in fits if (f.head, f.target, f.fraction) == ("linear", target, "10%")]
    assert not np.allclose(tenth[0].test_scores, tenth[1].test_scores)
    mlp = [f for f in fits if (f.head, f.target) == ("mlp", target)]
    assert not np.allclose(mlp[0].test_scores, mlp[1].test_scores)


def test_unusable_subsets_are_left_out_and_said():
  splits, config = planted_splits(), probe_settings(heads=("linear",))
  train = splits["train"]
  # 30% of patients above 18 mmHg: a 1% subset (2 patients) often holds one class only.
  train["pcwp"] = np.where(np.arange(600) % 200 < 60, 25.0, 12.0).astype(np.float32)
  config.probe.fractions = (0.01, 1.0)
  config.probe.limited_n = 1000  # more than the 600 training ECGs
  config.probe.seeds = tuple(range(6))
  config.probe.targets = ("binary",)
  messages = []
  fits = fitting.fit_all(config, splits, log=messages.append)
  assert any("the n=1000 setting is left out: the training split has only 600" in m
             for m in messages)
  expected = set()
  for seed in config.probe.seeds:  # by brute force: which 1% subsets have a single class
    idx = subsets.label_fraction_subsets(train["patient_id"], fractions=(0.01,), limited_n=None,
                                         seed=seed)["1%"]
    if len(set((train["pcwp"][idx] > 18).tolist())) == 1:
      expected.add(seed)
  assert expected and expected != set(config.probe.seeds)  # the data exercise both branches
  left_out = {int(m.split(" seed ")[1].split()[0]) for m in messages if "1% seed" in m}
  assert left_out == expected
  assert {f.seed for f in fits if f.fraction == "1%"} == set(config.probe.seeds) - expected
  train["pcwp"][:] = 12.0  # one class on the whole split: a config error, not a silent gap
  with pytest.raises(cli.ConfigError, match="probe linear binary on the whole training split"):
    fitting.fit_all(config, splits, log=messages.append)


@pytest.mark.slow
def test_multilabel_and_multiclass_targets_on_the_linear_and_mlp_heads():
  splits, config = planted_splits(), probe_settings()
  for split in splits.values():
    mmhg = split["pcwp"]
    split["ds"] = np.stack([mmhg > 18, mmhg < 14, mmhg > 24], 1).astype(np.int32)
    split["code"] = np.digitize(mmhg, [14.0, 20.0]) * 5  # classes 0, 5, 10
  config.probe.targets = ("ds:multilabel", "code:multiclass")
  config.probe.fractions, config.probe.limited_n, config.probe.seeds = (1.0,), None, (0,)
  features = {"ds": targets.Feature((3,), np.dtype(np.int32), ("high", "low", "very_high")),
              "code": targets.Feature((), np.dtype(np.int64))}
  found = targets.resolve(targets.from_config(config), features, "d", splits["train"])
  assert found[1].classes == ("0", "5", "10")
  fits = fitting.fit_all(config, splits, log=lambda m: None, probe_targets=found)
  assert {(f.head, f.target) for f in fits} == {(h, t) for h in ("linear", "mlp")
                                                for t in ("ds", "code")}
  test = splits["test"]
  for f in fits:
    assert f.test_scores.shape == (300, 3), (f.head, f.target)
    if f.target == "ds":
      y = test["ds"] == 1
      assert skm.roc_auc_score(y, f.test_scores, average="macro") > 0.85, f.head
      assert len(f.threshold) == 3
    else:
      y = np.digitize(test["pcwp"], [14.0, 20.0])
      np.testing.assert_allclose(f.test_scores.sum(axis=1), 1.0, rtol=1e-6)
      assert skm.roc_auc_score(y, f.test_scores, multi_class="ovr") > 0.85, f.head
      assert f.threshold is None
