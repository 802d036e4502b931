"""The ecg_synth TFDS dataset, the shared builder checks, atomic builds and the build command."""

import glob
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ssldml_jax.data import build, ecg_synth, records, simulator, tfds_common

TINY = "ecg_synth/tiny"
VERSION = str(ecg_synth.EcgSynth.VERSION)


def _collect(chunks):
  chunks = list(chunks)
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def _read_split(builder, split):
  source = builder.as_data_source(split)
  return {rec["ecg_id"].decode(): rec for rec in (source[i] for i in range(len(source)))}


def test_round_trip_equals_simulator(ecg_synth_tiny):
  config = ecg_synth_tiny.builder_config
  assert set(ecg_synth_tiny.info.splits) == set(ecg_synth.SPLITS)
  assert ecg_synth_tiny.info.metadata["leads"] == list(records.LEADS)
  patients = {}
  for split, num_patients in zip(ecg_synth.SPLITS, config.patients):
    stored = _read_split(ecg_synth_tiny, split)
    sim = _collect(simulator.generate(split, num_patients, seed=config.seed,
                                      sampling_rate=config.sampling_rate,
                                      labeled=split != "unlabeled"))
    assert sorted(stored) == sorted(sim["ecg_id"])
    for i, ecg_id in enumerate(sim["ecg_id"]):
      rec = stored[ecg_id]
      expected, clipped = records.mv_to_int16_uv(sim["ecg"][i])
      assert clipped == 0
      assert rec["ecg"].shape == (1000, 12) and rec["ecg"].dtype == np.int16
      np.testing.assert_array_equal(rec["ecg"], expected)
      assert rec["patient_id"].decode() == sim["patient_id"][i]
      assert rec["age"] == sim["age"][i] and rec["sex"] == sim["sex"][i]
      assert rec["sampling_rate"] == 100
      np.testing.assert_array_equal(rec["pcwp"], sim["pcwp"][i])  # NaN == NaN here.
    pcwp = np.array([rec["pcwp"] for rec in stored.values()])
    assert np.isnan(pcwp).all() if split == "unlabeled" else np.isfinite(pcwp).all()
    patients[split] = {rec["patient_id"] for rec in stored.values()}
  for a in ecg_synth.SPLITS:
    for b in ecg_synth.SPLITS:
      assert a == b or not patients[a] & patients[b]
  report = tfds_common.read_build_report(ecg_synth_tiny)
  assert report["skipped"] == [] and report["clipped_samples"] == 0
  assert report["examples_written"] == {s: ecg_synth_tiny.info.splits[s].num_examples
                                        for s in ecg_synth.SPLITS}


class _BadSynth(tfds_common.EcgBuilder, skip_registration=True):
  """Good simulator records plus one of each kind of bad record."""

  name = "bad_synth"
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds_common.EcgBuilderConfig(name="small", sampling_rate=100)]
  DESCRIPTION = "Test-only."

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in ("train", "test")}

  def _generate_examples(self, split):
    chunk = _collect(simulator.generate(split, 3, seed=1, sampling_rate=100,
                                        ecgs_per_patient=(2, 2)))
    good = [{k: chunk[k][i] for k in ("ecg", "ecg_id", "patient_id", "age", "sex", "pcwp")}
            for i in range(len(chunk["ecg_id"]))]
    candidates = list(good)
    base = good[0]
    if split == "train":
      nan = base["ecg"].copy()
      nan[10, 4] = np.nan
      flat = base["ecg"].copy()
      flat[:, 8] = 0.25
      candidates += [
          dict(base, ecg_id="bad-nan", ecg=nan),
          dict(base, ecg_id="bad-flat", ecg=flat),
          dict(base, ecg_id="bad-shape", ecg=base["ecg"][:, :11]),
          dict(base, ecg_id="bad-length", ecg=base["ecg"][:900]),
          dict(base, ecg_id="bad-pcwp", pcwp=150.0),
          dict(base, ecg_id="bad-sex", sex=7),
          dict(base, ecg_id="bad-rate", sampling_rate=float("nan")),
          dict(base),  # Duplicate ecg_id.
          dict(base, ecg_id="resampled", sampling_rate=200,
               ecg=records.resample(base["ecg"].astype(np.float64), 100, 200)),
      ]
    else:
      candidates.append(dict(base, ecg_id="bad-patient", patient_id="train-p000000"))
    for record in candidates:
      example = self.make_example(split, record)
      if example is not None:
        yield example
    if split == "train":
      assert self.example_from(split, "bad-file", _unreadable) is None


def _unreadable():
  raise records.BadRecordError("/no/such/file.hea: no such file")


EXPECTED_BAD = {
    "bad-nan": "non-finite values (NaN/inf) in lead(s) aVL",
    "bad-flat": "flat lead(s) V3",
    "bad-shape": "shape (1000, 11)",
    "bad-length": "length 900 samples, expected 1000",
    "bad-pcwp": "impossible mPCWP 150.0",
    "bad-sex": "sex code 7",
    "bad-rate": "sampling rate nan Hz is unknown",
    "train-p000000-e0": "duplicate ecg_id",
    "bad-file": "cannot read: /no/such/file.hea",
    "bad-patient": "patient train-p000000 is already in split 'train'",
}


def test_bad_records_are_reported_counted_and_skipped(tmp_path, capsys):
  builder = _BadSynth(data_dir=str(tmp_path))
  builder.download_and_prepare()
  out = capsys.readouterr().out
  report = tfds_common.read_build_report(builder)
  assert report["examples_written"] == {"train": 7, "test": 6}
  assert {s["id"]: s["split"] for s in report["skipped"]} == {
      k: "test" if k == "bad-patient" else "train" for k in EXPECTED_BAD}
  for entry in report["skipped"]:
    assert any(EXPECTED_BAD[entry["id"]] in p for p in entry["problems"]), entry
    assert f"record {entry['id']}: " in out  # One message per bad record, naming it.
  train = _read_split(builder, "train")
  assert len(train) == 7 and len(_read_split(builder, "test")) == 6
  assert not [ecg_id for ecg_id in train if ecg_id.startswith("bad-")]
  # The 200 Hz record was resampled to the config's 100 Hz.
  base = next(simulator.generate("train", 1, seed=1, sampling_rate=100,
                                 ecgs_per_patient=(2, 2)))["ecg"][0].astype(np.float64)
  expected, _ = records.mv_to_int16_uv(records.resample(records.resample(base, 100, 200), 200, 100))
  np.testing.assert_array_equal(train["resampled"]["ecg"], expected)


def test_strict_mode_raises_and_leaves_nothing(tmp_path):
  builder = _BadSynth(data_dir=str(tmp_path), strict=True)
  with pytest.raises(records.BadRecordError, match=r"record bad-nan: non-finite.*strict mode"):
    builder.download_and_prepare()
  assert not _BadSynth(data_dir=str(tmp_path)).is_prepared()
  assert not glob.glob(str(tmp_path / "bad_synth" / "small" / "*"))


def test_interrupted_build_and_failed_rebuild_leave_no_complete_dataset(tmp_path, monkeypatch):
  data_dir = str(tmp_path)
  config_dir = os.path.join(data_dir, "ecg_synth", "tiny")
  real_generate = simulator.generate

  def power_cut(*args, **kwargs):
    for chunk in real_generate(*args, **kwargs):
      yield chunk
      # What a SIGKILL here would leave behind: the temporary directory, half written.
      (partial,) = glob.glob(os.path.join(config_dir, "incomplete.*"))
      shutil.copytree(partial, os.path.join(config_dir, f"incomplete.KILLED_{VERSION}"),
                      dirs_exist_ok=True)
      raise RuntimeError("power cut")

  monkeypatch.setattr(simulator, "generate", power_cut)
  with pytest.raises(RuntimeError, match="power cut"):
    build.build(TINY, data_dir)
  assert os.listdir(config_dir) == [f"incomplete.KILLED_{VERSION}"]
  assert not tfds.builder(TINY, data_dir=data_dir).is_prepared()
  with pytest.raises(build.DatasetError, match="not built"):
    build.ensure_built(TINY, data_dir, build_if_missing=False)

  monkeypatch.setattr(simulator, "generate", real_generate)
  built = build.ensure_built(TINY, data_dir)  # The leftover does not get in the way.
  counts = {s: built.info.splits[s].num_examples for s in ecg_synth.SPLITS}

  monkeypatch.setattr(simulator, "generate", power_cut)
  with pytest.raises(RuntimeError, match="power cut"):
    build.build(TINY, data_dir, overwrite=True)
  again = tfds.builder(TINY, data_dir=data_dir)
  assert again.is_prepared()  # The failed rebuild kept the old dataset.
  assert {s: len(again.as_data_source(s)) for s in ecg_synth.SPLITS} == counts
  assert not glob.glob(os.path.join(data_dir, ".rebuild-*"))

  monkeypatch.setattr(simulator, "generate", real_generate)
  rebuilt = build.build(TINY, data_dir, overwrite=True)
  assert rebuilt.is_prepared() and tfds_common.read_build_report(rebuilt)["skipped"] == []
  assert {s: len(rebuilt.as_data_source(s)) for s in ecg_synth.SPLITS} == counts
  assert sorted(os.listdir(config_dir)) == [VERSION, f"incomplete.KILLED_{VERSION}"]
  assert not glob.glob(os.path.join(data_dir, ".rebuild-*"))


def test_build_command(ecg_synth_tiny, data_dir, capsys):
  assert build.main([TINY, f"--data_dir={data_dir}"]) == 0
  out = capsys.readouterr().out
  assert "already built" in out and "skipped 0 bad record(s)" in out

  assert build.main(["no_such_dataset"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "unknown dataset 'no_such_dataset'" in err
  assert "ecg_synth/tiny" in err and "ecg_synth/default" in err

  assert build.main(["ecg_synth/huge"]) == 2
  err = capsys.readouterr().err.strip()
  assert err == ("error: unknown config 'huge' of dataset 'ecg_synth'; available: "
                 "ecg_synth/default, ecg_synth/tiny, ecg_synth/large")


def test_resolve_data_dir(monkeypatch, tmp_path):
  monkeypatch.setenv(build.DATA_DIR_ENV, str(tmp_path / "env"))
  assert build.resolve_data_dir(str(tmp_path / "flag")) == str(tmp_path / "flag")
  assert build.resolve_data_dir(None) == str(tmp_path / "env")
  monkeypatch.delenv(build.DATA_DIR_ENV)
  assert build.resolve_data_dir(None) == os.path.expanduser("~/ssldml_data")
  package = os.path.dirname(build.__file__)
  with pytest.raises(build.DatasetError, match="inside the ssldml_jax package"):
    build.resolve_data_dir(os.path.join(package, "data"))


def test_report_json_is_plain(ecg_synth_tiny):
  with open(os.path.join(ecg_synth_tiny.data_dir, tfds_common.REPORT_FILENAME)) as f:
    report = json.load(f)
  assert records.BuildReport(**report).summary().startswith(f"ecg_synth/tiny/{VERSION}: wrote ")


def test_a_cohort_built_by_an_older_simulator_is_never_read(ecg_synth_tiny, tmp_path):
  # The first release's records (another simulator) as a user's data directory may hold them.
  assert tfds.core.Version(VERSION) > tfds.core.Version("1.0.0")
  assert VERSION in ecg_synth.EcgSynth.RELEASE_NOTES
  old = tmp_path / "ecg_synth" / "tiny" / "1.0.0"
  shutil.copytree(ecg_synth_tiny.data_dir, old)
  assert not tfds.builder(TINY, data_dir=str(tmp_path)).is_prepared()
  with pytest.raises(build.DatasetError, match="not built"):
    build.ensure_built(TINY, str(tmp_path), build_if_missing=False)
