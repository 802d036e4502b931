"""Probe targets: specs, labels by a plain loop, checks against a dataset's features, metrics
against scikit-learn."""

import numpy as np
import pytest
from sklearn import metrics as skm

from ssldml_jax.eval import targets

BINARY, REGRESSION = targets.parse("binary", 18.0), targets.parse("regression", 18.0)
FEATURES = {"pcwp": targets.Feature((), np.dtype(np.float32)),
            "age": targets.Feature((), np.dtype(np.float32)),
            "sex": targets.Feature((), np.dtype(np.int32)),
            "diagnostic_superclass": targets.Feature((5,), np.dtype(np.int32),
                                                     ("NORM", "MI", "STTC", "CD", "HYP"))}


def _split(n=200, seed=0):
  rng = np.random.default_rng(seed)
  pcwp = rng.uniform(5.0, 35.0, n).astype(np.float32)
  pcwp[[3, 17]] = np.nan
  pcwp[5] = 18.0  # exactly at the threshold: not above it
  return {"pcwp": pcwp, "ecg_id": np.array([f"e{i}" for i in range(n)])}


def test_values_match_a_loop():
  split = _split()
  binary = targets.values(split, BINARY)
  regression = targets.values(split, REGRESSION)
  assert binary.dtype == bool and regression.dtype == np.float64
  for i, v in enumerate(split["pcwp"].tolist()):
    assert binary[i] == (v > 18.0)  # NaN compares False
    assert regression[i] == v or (np.isnan(v) and np.isnan(regression[i]))
  assert not binary[5]
  for target in (BINARY, REGRESSION):
    np.testing.assert_array_equal(targets.known(split, target), ~np.isnan(split["pcwp"]))


def test_threshold_is_compared_in_the_stored_precision():
  # 15.3 is not a float32 number; a label stored as float32(15.3) is at, not above, it.
  split = {"pcwp": np.array([15.3, 15.31, 15.29], np.float32)}
  np.testing.assert_array_equal(targets.values(split, targets.parse("binary", 15.3)),
                                [False, True, False])


@pytest.mark.parametrize("spec, want", [
    ("binary", ("binary", "pcwp", "binary", 18.0)),
    ("regression", ("regression", "pcwp", "regression", None)),
    ("diagnostic_superclass:multilabel", ("diagnostic_superclass", "diagnostic_superclass",
                                          "multilabel", None)),
    ("old=age:binary>65", ("old", "age", "binary", 65.0)),
    ("sex:binary", ("sex", "sex", "binary", None)),
    ("rhythm=code:multiclass", ("rhythm", "code", "multiclass", None)),
])
def test_specs(spec, want):
  t = targets.parse(spec, 18.0)
  assert (t.name, t.feature, t.kind, t.threshold) == want


@pytest.mark.parametrize("specs, message", [
    (("age:ordinal",), "kind 'ordinal' is not one of binary, regression, multilabel"),
    (("age:regression>3",), "only a binary target takes a threshold"),
    (("age binary",), "'age binary' is not a target; write binary, regression"),
    (("age:binary>65", "age:regression"), "target name\\(s\\) 'age' used twice"),
])
def test_bad_specs_say_why(specs, message):
  with pytest.raises(ValueError, match=message):
    targets.parse_all(specs, 18.0)


def test_resolve_checks_each_feature_against_the_dataset():
  train = {"sex": np.array([0, 1, -1, 1], np.int32), "age": np.array([40, 70, 50, np.nan])}
  got = targets.resolve(targets.parse_all(("binary", "diagnostic_superclass:multilabel",
                                           "sex:binary", "sc=diagnostic_superclass:multiclass"),
                                          18.0), FEATURES, "ptbxl/default", train)
  assert got[0] == BINARY
  assert got[1].classes == ("NORM", "MI", "STTC", "CD", "HYP") and got[1].width == 5
  assert got[3].multi_hot and got[3].width == 5
  for spec, message in (
      ("lvef:regression", "target 'lvef': ptbxl/default has no feature 'lvef' \\(label "
                          "features: age, diagnostic_superclass, pcwp, sex\\)"),
      ("diagnostic_superclass:regression", "feature 'diagnostic_superclass' of ptbxl/default "
                                           "\\(5, int32\\) is not one number per ECG"),
      ("age:multilabel", "feature 'age' of ptbxl/default \\(scalar, float32\\) is not a "
                         "multi-hot vector"),
      ("age:multiclass", "is neither an integer class nor a multi-hot vector"),
      ("age:binary", "holds values other than 0/1 \\(e.g. 40\\); give a threshold: "
                     "age=age:binary>T"),
  ):
    with pytest.raises(ValueError, match=message):
      targets.resolve([targets.parse(spec, 18.0)], FEATURES, "ptbxl/default", train)
  # The classes of an integer feature are those of the training split.
  coded = {"code": targets.Feature((), np.dtype(np.int64))}
  (t,) = targets.resolve([targets.parse("code:multiclass", 18.0)], coded, "d",
                         {"code": np.array([3, 1, 3, -1, 7])})
  assert t.classes == ("1", "3", "7")
  split = {"code": np.array([7, 1, 2, -1, 3])}
  np.testing.assert_array_equal(targets.values(split, t), [2, 0, -1, -1, 1])
  np.testing.assert_array_equal(targets.unknown_classes(split, t), [0, 0, 1, 0, 0])


def test_multi_hot_labels_and_what_is_known():
  x = np.array([[1, 0, 0, 0, 1], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0], [-1, -1, -1, -1, -1],
                [0, 0, 1, 1, 0]], np.int32)
  split = {"diagnostic_superclass": x}
  multi, single = targets.resolve(
      targets.parse_all(("diagnostic_superclass:multilabel", "one=diagnostic_superclass:"
                         "multiclass"), 18.0), FEATURES, "d", {})
  np.testing.assert_array_equal(targets.values(split, multi), x == 1)
  # No superclass, or unknown: left out (the PTB-XL benchmark's rule).
  np.testing.assert_array_equal(targets.known(split, multi), [1, 0, 1, 0, 1])
  # Single-label protocol: exactly one superclass.
  np.testing.assert_array_equal(targets.values(split, single), [-1, -1, 1, -1, -1])
  np.testing.assert_array_equal(targets.known(split, single), [0, 0, 1, 0, 0])
  assert targets.columns(multi) == [f"diagnostic_superclass.{c}" for c in multi.classes]
  onehot = targets.as_columns(single, np.array([1, 4]))
  np.testing.assert_array_equal(np.stack(onehot, 1), np.eye(5, dtype=bool)[[1, 4]])
  assert targets.primary_metric(multi) == "macro_auroc" and multi.higher_is_better
  assert targets.Target.from_json(multi.to_json()) == multi


def test_metric_fns_agree_with_sklearn():
  rng = np.random.default_rng(1)
  split = _split(300, seed=1)
  keep = targets.known(split, BINARY)
  split = {k: v[keep] for k, v in split.items()}
  y = targets.values(split, BINARY)
  score = np.clip(0.5 + 0.03 * (split["pcwp"] - 18.0) + rng.normal(0, 0.2, y.size), 0, 1)
  fns = targets.metric_fns(BINARY, 0.55)
  assert tuple(fns) == targets.metric_names(BINARY)
  pred = score >= 0.55
  want = {"auroc": skm.roc_auc_score(y, score), "auprc": skm.average_precision_score(y, score),
          "f1": skm.f1_score(y, pred), "accuracy": skm.accuracy_score(y, pred),
          "sensitivity": skm.recall_score(y, pred), "specificity": skm.recall_score(~y, ~pred)}
  for name, value in want.items():
    assert fns[name](y, score, None)[0] == pytest.approx(value, abs=1e-12), name
  mmhg = targets.values(split, REGRESSION)
  guess = mmhg + rng.normal(0, 3.0, mmhg.size)
  fns = targets.metric_fns(REGRESSION, None, names=("rmse", "mae"))
  assert tuple(fns) == ("rmse", "mae")
  assert fns["rmse"](mmhg, guess, None)[0] == pytest.approx(
      np.sqrt(skm.mean_squared_error(mmhg, guess)), abs=1e-12)
  assert fns["mae"](mmhg, guess, None)[0] == pytest.approx(
      skm.mean_absolute_error(mmhg, guess), abs=1e-12)
  assert targets.metric_names(REGRESSION) == ("rmse", "mae", "pearson_r")
