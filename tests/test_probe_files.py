"""A probe's files: predictions.csv against the values written by hand, probe_results.json
read back as written (NaN included)."""

import csv
import dataclasses
import math

import numpy as np

from ssldml_jax import config_defaults
from ssldml_jax.eval import fitting, probe_config, probe_files, subgroups, tables, targets


def _split(n, seed):
  rng = np.random.default_rng(seed)
  return {"ecg_id": np.array([f"{seed}e{i}" for i in range(n)]),
          "patient_id": np.array([f"p{i // 2}" for i in range(n)]),
          "pcwp": rng.uniform(5.0, 35.0, n).astype(np.float32)}


def _fit(head, target, fraction, seed, rng, n_val, n_test):
  return fitting.Fit(head=head, target=target, fraction=fraction, seed=seed, n_train=9,
                     val_scores=rng.uniform(0, 40, n_val), test_scores=rng.uniform(0, 40, n_test),
                     threshold=None, info={})


def test_predictions_file(tmp_path):
  c = probe_config.add_entry_keys(probe_config.add_probe_section(config_defaults.base_config()))
  c.probe.heads, c.probe.primary_head = ("linear", "mlp"), "mlp"
  splits = {"validation": _split(6, 1), "test": _split(5, 2)}
  rng = np.random.default_rng(0)
  fits = [_fit(h, t, fr, s, rng, 6, 5) for h in ("linear", "mlp") for t in ("binary", "regression")
          for fr in ("10%", "100%") for s in (0, 1)]
  path = probe_files.write_predictions(str(tmp_path / "p.csv"), c, fits, splits)
  with open(path, newline="") as fh:
    rows = list(csv.reader(fh))
  assert rows[0] == ["ecg_id", "patient_id", "split", "y_true_binary", "y_score_binary_linear",
                     "y_score_binary", "y_true_regression", "y_score_regression_linear",
                     "y_score_regression"]
  body = rows[1:]
  assert [r[2] for r in body] == ["validation"] * 6 + ["test"] * 5
  for r, (split, i) in zip(body, [("validation", i) for i in range(6)] +
                           [("test", i) for i in range(5)]):
    s = splits[split]
    pcwp = float(s["pcwp"][i])
    assert r[:2] == [s["ecg_id"][i], s["patient_id"][i]]
    assert r[3] == ("1" if pcwp > 18.0 else "0") and r[6] == f"{pcwp:.3f}"
    for column, head, target in ((4, "linear", "binary"), (5, "mlp", "binary"),
                                 (7, "linear", "regression"), (8, "mlp", "regression")):
      # The seed mean of the 100% fits only.
      scores = [getattr(f, "val_scores" if split == "validation" else "test_scores")[i]
                for f in fits if (f.head, f.target, f.fraction) == (head, target, "100%")]
      assert float(r[column]) == float(f"{(scores[0] + scores[1]) / 2:.9g}")
  read = probe_files.read_predictions(path)
  assert read["ecg_id"].tolist() == [r[0] for r in body]
  np.testing.assert_array_equal(read["y_score_binary"], [float(r[5]) for r in body])
  assert read["y_true_binary"].dtype == np.float64


def test_outcome_round_trip(tmp_path):
  row = tables.Row(method="enc", target="binary", metric="f1", point=0.7, low=math.nan,
                   high=math.inf, n=12, group="female", fraction="10%")
  test = subgroups.GroupTest(metric="auroc", group_a="female", group_b="male", test="DeLong",
                             value_a=0.8, value_b=0.6, difference=0.2, low=0.1, high=0.3,
                             p_value=math.nan, ecgs_a=9, ecgs_b=12, patients_a=5, patients_b=7,
                             prevalence_a=0.25, prevalence_b=math.nan)
  fits = [{"head": "linear", "target": "binary", "seed": 0, "test": {"auroc": 0.75}}]
  outcome = probe_files.ProbeOutcome(name="enc", workdir=str(tmp_path), rows=[("mlp", row)],
                                     tests=[("linear", "binary", test)], fits=fits)
  assert not probe_files.is_done(str(tmp_path))
  probe_files.save_outcome(str(tmp_path / probe_files.RESULTS_FILE), outcome,
                           {"dataset": "ecg_synth/tiny", "value": np.float32(0.5)})
  assert not probe_files.is_done(str(tmp_path))  # the fits are missing
  probe_files.save_fits(outcome.fits_path, [], np.array(["e0"]))
  assert probe_files.is_done(str(tmp_path))
  assert not list(tmp_path.glob("*.tmp"))
  back = probe_files.load_outcome(str(tmp_path))
  (head, got), = back.rows
  assert head == "mlp" and got.point == 0.7 and math.isnan(got.low) and math.isnan(got.high)
  assert {k: v for k, v in got.__dict__.items() if k not in ("low", "high", "sd")} == \
      {k: v for k, v in row.__dict__.items() if k not in ("low", "high", "sd")}
  assert math.isnan(got.sd)
  (head, target, got), = back.tests
  assert (head, target) == ("linear", "binary") and math.isnan(got.p_value)
  assert got == dataclasses.replace(test, prevalence_b=got.prevalence_b, p_value=got.p_value)
  assert math.isnan(got.prevalence_b)
  assert back.fits == fits and back.name == "enc"
  assert back.predictions_path == str(tmp_path / probe_files.PREDICTIONS_FILE)
  assert back.embeddings_path("test") == str(tmp_path / "embeddings" / "test.npz")


def test_fits_round_trip_once_each(tmp_path):
  """fits.npz holds every distinct fit once (one standing for two seeds too), scores and
  thresholds exact, a multi-label fit's per label too."""
  rng = np.random.default_rng(3)
  first = fitting.Fit(head="linear", target="binary", fraction="100%", seed=0, n_train=9,
                      val_scores=rng.random(6), test_scores=rng.random(5), threshold=0.4,
                      info={"C": 1.0}, n_validation=6, pretrain_seed=3)
  fits = [first, dataclasses.replace(first, seed=1),
          fitting.Fit(head="mlp", target="regression", fraction="n=40", seed=2, n_train=40,
                      val_scores=rng.random(4), test_scores=rng.random(5), threshold=None,
                      info={}, n_validation=4, pretrain_seed=3),
          fitting.Fit(head="linear", target="ds", fraction="10%", seed=1, n_train=4,
                      val_scores=rng.random((3, 2)), test_scores=rng.random((5, 2)),
                      threshold=(0.25, 0.5), info={}, n_validation=3, pretrain_seed=1)]
  ids = np.array([f"e{i}" for i in range(5)])
  path = probe_files.save_fits(str(tmp_path / probe_files.FITS_FILE), fits, ids)
  assert not list(tmp_path.glob("*.tmp*"))
  back, back_ids = probe_files.load_fits(path)
  assert back_ids.tolist() == ids.tolist() and len(back) == 3
  for want, got in zip((fits[0], fits[2], fits[3]), back):
    for key in ("head", "target", "fraction", "seed", "pretrain_seed", "n_train", "n_validation",
                "threshold"):
      assert getattr(got, key) == getattr(want, key), key
    np.testing.assert_array_equal(got.test_scores, want.test_scores)
    np.testing.assert_array_equal(got.val_scores, want.val_scores)


def test_predictions_of_multilabel_and_multiclass_targets(tmp_path):
  c = probe_config.add_entry_keys(probe_config.add_probe_section(config_defaults.base_config()))
  c.probe.heads = ("linear",)
  multi = targets.Target("ds", "ds", "multilabel", classes=("NORM", "MI"))
  one = targets.Target("rhythm", "code", "multiclass", classes=("3", "7", "9"))
  rng = np.random.default_rng(0)
  splits = {s: {"ecg_id": np.array([f"{s}{i}" for i in range(4)]),
                "patient_id": np.array([f"p{i}" for i in range(4)]),
                "ds": np.array([[1, 0], [0, 1], [1, 1], [1, 0]], np.int32),
                "code": np.array([3, 9, 7, 9])} for s in ("validation", "test")}
  fits = [fitting.Fit(head="linear", target=t.name, fraction="100%", seed=0, n_train=9,
                      val_scores=rng.uniform(size=(4, t.width)),
                      test_scores=rng.uniform(size=(4, t.width)), threshold=None, info={})
          for t in (multi, one)]
  path = probe_files.write_predictions(str(tmp_path / "p.csv"), c, fits, splits, [multi, one])
  read = probe_files.read_predictions(path)
  assert list(read) == ["ecg_id", "patient_id", "split", "y_true_ds.NORM", "y_true_ds.MI",
                        "y_score_ds.NORM", "y_score_ds.MI", "y_true_rhythm.3", "y_true_rhythm.7",
                        "y_true_rhythm.9", "y_score_rhythm.3", "y_score_rhythm.7",
                        "y_score_rhythm.9"]
  test = read["split"] == "test"
  np.testing.assert_array_equal(read["y_true_ds.MI"][test], [0, 1, 1, 0])
  np.testing.assert_array_equal(read["y_true_rhythm.9"][test], [0, 1, 0, 1])  # one-hot classes
  np.testing.assert_allclose(read["y_score_rhythm.7"][test], fits[1].test_scores[:, 1],
                             rtol=1e-8)
