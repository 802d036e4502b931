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
