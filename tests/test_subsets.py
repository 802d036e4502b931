"""Label subsets: patient-level, nested and deterministic fractions; labeled rows; per-head names."""

import math

import numpy as np
import pytest

from ssldml_jax import cli, config_defaults
from ssldml_jax.eval import probe_config, targets
from ssldml_jax.eval import subsets as S


def _patients(rng, num=205):  # 1% of 205 patients rounds up to 3
  return np.repeat(rng.permutation(np.arange(1000, 1000 + num)), rng.integers(1, 8, num))


def test_label_fractions_patient_level_nested_deterministic():
  rng = np.random.default_rng(2)
  pid = rng.permutation(_patients(rng))
  subsets = S.label_fraction_subsets(pid, limited_n=300, seed=4)
  assert list(subsets) == ["1%", "10%", "100%", "n=300"]
  num = np.unique(pid).size
  for name, f in (("1%", 0.01), ("10%", 0.1), ("100%", 1.0)):
    chosen = np.unique(pid[subsets[name]])
    assert chosen.size == math.ceil(f * num)
    assert np.isin(pid, chosen).sum() == subsets[name].size  # all ECGs of chosen patients
  assert set(subsets["1%"]) < set(subsets["10%"]) < set(subsets["100%"])
  assert subsets["100%"].size == pid.size
  limited = subsets["n=300"]
  assert limited.size == 300 and np.unique(limited).size == 300
  partial = [p for p in np.unique(pid[limited]) if np.sum(pid[limited] == p) < np.sum(pid == p)]
  assert len(partial) <= 1
  assert set(subsets["10%"]) <= set(limited) or set(limited) <= set(subsets["10%"])
  again = S.label_fraction_subsets(pid, limited_n=300, seed=4)
  other = S.label_fraction_subsets(pid, limited_n=300, seed=5)
  assert all(np.array_equal(subsets[k], again[k]) for k in subsets)
  assert not np.array_equal(subsets["10%"], other["10%"])
  with pytest.raises(ValueError, match="limited n=5000 .* has"):
    S.label_fraction_subsets(pid, limited_n=5000)


def test_labeled_keeps_known_rows_and_says_what_it_left_out(capsys):
  split = {"ecg_id": np.array(["a", "b", "c", "d"]), "pcwp": np.array([12.0, np.nan, 30.0, np.nan]),
           "embedding": np.arange(8.0).reshape(4, 2)}
  kept = S.labeled(split, "validation")
  assert kept["ecg_id"].tolist() == ["a", "c"]
  np.testing.assert_array_equal(kept["embedding"], [[0.0, 1.0], [4.0, 5.0]])
  assert "validation: 2 of 4 ECG(s) without a label for pcwp (regression) left out (first 'b')" \
      in capsys.readouterr().out
  split["pcwp"][:] = np.nan
  with pytest.raises(cli.ConfigError, match=r"config\.data\.test_split: no ECG"):
    S.labeled(split, "test")


def test_subsets_of_a_probe_config():
  c = probe_config.add_entry_keys(probe_config.add_probe_section(config_defaults.base_config()))
  c.probe.fractions, c.probe.limited_n, c.probe.fraction_heads = (1.0, 0.1), 50, ("linear",)
  assert S.subset_names(c, "linear") == ["10%", "100%", "n=50"]
  assert S.subset_names(c, "mlp") == [S.FULL] == ["100%"]
  pid = np.repeat(np.arange(30), 2)  # 60 ECGs
  drawn = S.draw_subsets(c, pid, seed=3)
  want = S.label_fraction_subsets(pid, fractions=(1.0, 0.1), limited_n=50, seed=3)
  assert list(drawn) == list(want) and all(np.array_equal(drawn[k], want[k]) for k in want)
  c.probe.limited_n = 61  # more than the split holds: left out, not an error
  assert set(S.draw_subsets(c, pid, seed=3)) == {"100%", "10%"}
  c.probe.rows = ("n=61", "100%")  # the main job's restriction of one probe to some rows
  assert S.subset_names(c, "linear") == ["100%", "n=61"]
  assert S.subset_names(c, "mlp") == ["100%"]


def test_a_label_row_is_the_probes_subset_of_the_same_seed():
  """What a label-limited pretraining trains on is exactly what the probe of that seed draws."""
  rng = np.random.default_rng(5)
  pid = rng.permutation(_patients(rng))
  for seed in (0, 3):
    drawn = S.label_fraction_subsets(pid, fractions=(0.01, 0.1, 1.0), limited_n=300, seed=seed)
    for row in ("1%", "10%", "n=300"):
      np.testing.assert_array_equal(S.train_label_rows(pid, row, seed), drawn[row])
  assert S.parse_row("10%") == (0.1, None) and S.parse_row("n=1000") == (None, 1000)
  for bad in ("10", "0%", "n=0", "n=x", "150%"):
    with pytest.raises(ValueError, match="is not a label row"):
      S.parse_row(bad)
  assert [S.row_slug(r) for r in ("1%", "0.5%", "n=1000")] == [
      "labels_1pct", "labels_0p5pct", "labels_n1000"]


def test_validation_rows_shrink_with_the_row_down_to_the_floor():
  c = probe_config.add_entry_keys(probe_config.add_probe_section(config_defaults.base_config()))
  rng = np.random.default_rng(6)
  train = rng.permutation(_patients(rng, 400))
  val = np.repeat(np.arange(5000, 5100), 2)                   # 100 patients, 200 ECGs
  rows = S.label_fraction_subsets(train, fractions=(0.01, 0.3, 1.0), limited_n=None, seed=2)
  kept = {r: S.validation_rows(c, val, train, rows[r], 2) for r in rows}
  patients = {r: np.unique(val[k]) for r, k in kept.items()}
  assert patients["100%"].size == 100 and kept["100%"].size == 200
  assert patients["30%"].size == 30                          # the row's share of patients
  assert patients["1%"].size == S.MIN_VALIDATION_PATIENTS    # 4 patients would be 1%: the floor
  assert set(patients["1%"]) < set(patients["30%"])          # nested, like the training rows
  assert all(np.isin(val, patients[r]).sum() == kept[r].size for r in kept)  # whole patients
  np.testing.assert_array_equal(S.validation_rows(c, val, train, rows["1%"], 2), kept["1%"])
  assert not np.array_equal(S.validation_rows(c, val, train, rows["1%"], 3), kept["1%"])
  c.probe.limited_validation = "full"
  assert S.validation_rows(c, val, train, rows["1%"], 2).size == 200


def test_labeled_keeps_the_rows_known_for_every_target_and_counts_the_others(capsys):
  split = {"ecg_id": np.array(["a", "b", "c", "d", "e"]),
           "pcwp": np.array([20.0, np.nan, 12.0, 30.0, 9.0], np.float32),
           "ds": np.array([[1, 0], [0, 1], [0, 0], [-1, -1], [0, 1]], np.int32)}
  both = [targets.parse("binary", 18.0), targets.Target("ds", "ds", "multilabel",
                                                        classes=("x", "y"))]
  out = S.labeled(split, "validation", both)
  assert out["ecg_id"].tolist() == ["a", "e"]
  np.testing.assert_array_equal(out["ds"], [[1, 0], [0, 1]])
  lines = capsys.readouterr().out.splitlines()
  assert lines == ["probe: validation: 1 of 5 ECG(s) without a label for pcwp > 18 left out "
                   "(first 'b')",
                   "probe: validation: 2 of 5 ECG(s) without a label for ds (multilabel: x, y) "
                   "left out (first 'c')"]
  split["ds"][:] = 0
  with pytest.raises(cli.ConfigError, match="config.data.validation_split: no ECG of that split "
                                            "has a label for every target"):
    S.labeled(split, "validation", both)
