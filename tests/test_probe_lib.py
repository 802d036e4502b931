"""Running one probe: a finished workdir is read back untouched, a split the dataset lacks names
its key. (A whole run on ecg_synth/tiny is checked by test_reproduce.py.)"""

import os

import numpy as np
import pytest

from ssldml_jax import cli, methods, metrics_log
from ssldml_jax.eval import embed, probe_config, probe_files, probe_lib, tables

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


@pytest.mark.parametrize("spec,message", [
    ("lvef:regression", r"config\.probe\.targets: target 'lvef': ecg_synth/tiny/[\d.]+ has no "
                        r"feature 'lvef' \(label features: age, pcwp, sex\)"),
    ("age:binary", r"feature 'age' of ecg_synth/tiny/[\d.]+ \(scalar, float32\) holds values "
                   r"other than 0/1"),
])
def test_a_target_the_dataset_cannot_give_stops_before_embedding(ecg_synth_tiny, data_dir,
                                                                 tmp_path, monkeypatch, spec,
                                                                 message):
  c = _tiny(data_dir)
  c.probe.targets = (spec,)
  monkeypatch.setattr(embed, "cached_split", lambda *a, **k: pytest.fail("embedded"))
  with pytest.raises(cli.ConfigError, match=message):
    probe_lib.run_probe(c, str(tmp_path))


def test_the_random_baseline_has_the_pretrained_encoders_architecture(tmp_path, monkeypatch):
  pretrain = methods.pretrain_config("simclr", "tiny")
  pretrain.model.width, pretrain.data.sampling_rate, pretrain.data.bandpass = 6, 40, (0.5, 15.0)
  metrics_log.write_config(str(tmp_path), pretrain)
  c = cli.load_config_file(TINY)
  c.encoder_workdir, c.random_baseline, c.probe.n_bootstrap = str(tmp_path), True, 7
  random = probe_lib.random_baseline_config(c)
  assert random.encoder_workdir is None and not random.random_baseline
  assert random.model.to_dict() == pretrain.model.to_dict()
  assert (random.data.sampling_rate, tuple(random.data.bandpass)) == (40, (0.5, 15.0))
  assert random.probe.name == "random" and random.probe.n_bootstrap == 7
  probe_config.validate(random)
  # Without a pretrained encoder there is no second probe.
  calls = []
  monkeypatch.setattr(probe_lib, "run_probe", lambda config, workdir: calls.append(
      (workdir, config.encoder_workdir)) or "outcome")
  c.encoder_workdir = None
  assert probe_lib.run_probes(c, "/w") == ["outcome"] and calls == [("/w", None)]
  c.encoder_workdir = str(tmp_path)
  assert len(probe_lib.run_probes(c, "/w")) == 2
  assert calls[1:] == [("/w", str(tmp_path)), ("/w/random", None)]
