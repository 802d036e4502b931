"""Running one probe: a finished workdir is read back untouched, a split the dataset lacks names
its key. (A whole run on ecg_synth/tiny is checked by test_reproduce.py.)"""

import os

import numpy as np
import pytest

from ssldml_jax import cli
from ssldml_jax.eval import probe_files, probe_lib, tables

TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                    "probe.py") + ":tiny"


def _tiny(data_dir):
  c = cli.load_config_file(TINY)
  c.data.data_dir = data_dir
  c.model.width, c.model.stage_sizes, c.model.embedding_dim = 4, (1,), 8
  return c


def test_a_finished_probe_is_read_back_not_redone(tmp_path, capsys):
  row = tables.Row(method="enc", target="binary", metric="auroc", point=0.8, low=0.7, high=0.9,
                   n=10)
  saved = probe_files.ProbeOutcome(name="enc", workdir=str(tmp_path), rows=[("linear", row)],
                                   tests=[], fits=[{"seed": 0}])
  probe_files.save_outcome(str(tmp_path / probe_files.RESULTS_FILE), saved, {})
  probe_files.save_fits(saved.fits_path, [], np.array(["e0"]))
  c = cli.load_config_file(TINY)
  c.data.name = "ecg_synth/missing"  # reading any data would fail
  c.encoder_workdir = "/nowhere/ssl_run"
  outcome = probe_lib.run_probe(c, str(tmp_path))
  assert outcome.rows == saved.rows and outcome.fits == saved.fits
  assert f"probe ssl_run: results in {tmp_path} exist" in capsys.readouterr().out


@pytest.mark.parametrize("key,value,message", [
    ("data.test_split", "nope", r"config\.data\.test_split='nope' is not a split of "
                                 r"ecg_synth/tiny \(has test, train, unlabeled, validation\)"),
    ("export_splits", "unlabeled,zzz", r"config\.export_splits='zzz' is not a split"),
])
def test_a_missing_split_names_its_key(ecg_synth_tiny, data_dir, tmp_path, key, value, message):
  c = _tiny(data_dir)
  section, _, leaf = key.rpartition(".")
  (cli.get_path(c, section) if section else c)[leaf] = value
  with pytest.raises(cli.ConfigError, match=message):
    probe_lib.run_probe(c, str(tmp_path))
  assert not os.path.exists(tmp_path / probe_files.RESULTS_FILE)
