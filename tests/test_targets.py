"""Probe targets: labels by a plain loop, metrics against scikit-learn."""

import numpy as np
import pytest
from sklearn import metrics as skm

from ssldml_jax.eval import targets


def _split(n=200, seed=0):
  rng = np.random.default_rng(seed)
  pcwp = rng.uniform(5.0, 35.0, n).astype(np.float32)
  pcwp[[3, 17]] = np.nan
  pcwp[5] = 18.0  # exactly at the threshold: not above it
  return {"pcwp": pcwp, "ecg_id": np.array([f"e{i}" for i in range(n)])}


def test_values_match_a_loop():
  split = _split()
  binary = targets.values(split, "binary", 18.0)
  regression = targets.values(split, "regression", 18.0)
  assert binary.dtype == bool and regression.dtype == np.float64
  for i, v in enumerate(split["pcwp"].tolist()):
    assert binary[i] == (v > 18.0)  # NaN compares False
    assert regression[i] == v or (np.isnan(v) and np.isnan(regression[i]))
  assert not binary[5]
  np.testing.assert_array_equal(targets.known(split), ~np.isnan(split["pcwp"]))
  with pytest.raises(ValueError, match="target='multiclass' is not a probe target"):
    targets.values(split, "multiclass", 18.0)


def test_threshold_is_compared_in_the_stored_precision():
  # 15.3 is not a float32 number; a label stored as float32(15.3) is at, not above, it.
  split = {"pcwp": np.array([15.3, 15.31, 15.29], np.float32)}
  np.testing.assert_array_equal(targets.values(split, "binary", 15.3), [False, True, False])


def test_metric_fns_agree_with_sklearn():
  rng = np.random.default_rng(1)
  split = _split(300, seed=1)
  keep = targets.known(split)
  split = {k: v[keep] for k, v in split.items()}
  y = targets.values(split, "binary", 18.0)
  score = np.clip(0.5 + 0.03 * (split["pcwp"] - 18.0) + rng.normal(0, 0.2, y.size), 0, 1)
  fns = targets.metric_fns("binary", 0.55)
  assert tuple(fns) == targets.metric_names("binary")
  pred = score >= 0.55
  want = {"auroc": skm.roc_auc_score(y, score), "auprc": skm.average_precision_score(y, score),
          "f1": skm.f1_score(y, pred), "accuracy": skm.accuracy_score(y, pred),
          "sensitivity": skm.recall_score(y, pred), "specificity": skm.recall_score(~y, ~pred)}
  for name, value in want.items():
    assert fns[name](y, score, None)[0] == pytest.approx(value, abs=1e-12), name
  mmhg = targets.values(split, "regression", 18.0)
  guess = mmhg + rng.normal(0, 3.0, mmhg.size)
  fns = targets.metric_fns("regression", None, names=("rmse", "mae"))
  assert tuple(fns) == ("rmse", "mae")
  assert fns["rmse"](mmhg, guess, None)[0] == pytest.approx(
      np.sqrt(skm.mean_squared_error(mmhg, guess)), abs=1e-12)
  assert fns["mae"](mmhg, guess, None)[0] == pytest.approx(
      skm.mean_absolute_error(mmhg, guess), abs=1e-12)
  assert targets.metric_names("regression") == ("rmse", "mae", "pearson_r")
