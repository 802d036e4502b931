"""``python -m ssldml_jax.predict``: the ECG files behind a probe's test split get the probe's own
test predictions; bad files land in the errors file with their reason and the run goes on."""

import csv
import os
import shutil

import h5py
import numpy as np
import pytest

import real_data_fixtures as fx
from ssldml_jax import cli, config_defaults, predict
from ssldml_jax.data import ecg_files, reader, records
from ssldml_jax.data.records import BadRecordError
from ssldml_jax.eval import (embed, fitting, linear_probe, probe_config, probe_files, probe_lib,
                             saved_probes, targets)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# wfdb calls pandas in a way pandas 3 deprecates; not this project's to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword")


def _read_csv(path):
  with open(path, newline="") as fh:
    return list(csv.DictReader(fh))


def _tiny_probe_config(data_dir):
  c = cli.load_config_file(os.path.join(REPO, "configs", "probe.py") + ":tiny")
  c.data.data_dir = data_dir
  c.model.width, c.model.stage_sizes, c.model.embedding_dim = 4, (1,), 8
  p = c.probe
  p.heads, p.fraction_heads, p.fractions, p.limited_n = ("linear", "mlp"), (), (1.0,), None
  p.seeds, p.n_bootstrap, p.n_permutations = (0, 1), 20, 20
  p.mlp.max_steps, p.mlp.eval_every_steps = 40, 20
  return c


def _export_test_split(builder, folder):
  """The stored test records as files: WFDB (upper-case lead names, 1 uV steps), .npy (leads
  in ``NPY_LEADS`` order, no rate) and HDF5 (one dataset per lead, int16 uV): the same values."""
  os.makedirs(folder)
  source = reader.Records(builder, "test")
  for i in range(len(source)):
    record = source[i]
    ecg_id, mv = record["ecg_id"], record["ecg"].astype(np.float64) / 1000.0
    kind = ("wfdb", "npy", "hdf5")[i % 3]
    if kind == "wfdb":
      fx.write_wfdb(os.path.join(folder, ecg_id), mv, fx.PTBXL_LEADS, record["sampling_rate"])
    elif kind == "npy":
      order = [records.LEADS.index(lead) for lead in NPY_LEADS]
      np.save(os.path.join(folder, ecg_id + ".npy"), mv[:, order].T.copy())
    else:
      with h5py.File(os.path.join(folder, ecg_id + ".h5"), "w") as f:
        group = f.create_group("ecg/2021-01-01")
        group.attrs["sampling_rate"], group.attrs["units"] = record["sampling_rate"], "uV"
        for j, lead in enumerate(records.LEADS):
          group.create_dataset(lead.lower(), data=record["ecg"][:, j])
  return len(source)


NPY_LEADS = records.LEADS[6:] + records.LEADS[:6]


@pytest.mark.slow
def test_predict_on_the_files_of_the_test_split_gives_the_probes_predictions(
    ecg_synth_tiny, data_dir, tmp_path):
  workdir = str(tmp_path / "probe")
  probe_lib.run_probe(_tiny_probe_config(data_dir), workdir)
  folder = str(tmp_path / "ecgs")
  n = _export_test_split(ecg_synth_tiny, folder)
  out = str(tmp_path / "out" / "predictions.csv")
  summary = predict.run(workdir, [folder], out, sampling_rate=100, leads=NPY_LEADS,
                        embeddings_path=str(tmp_path / "emb.npz"), per_device_batch_size=2,
                        progress=False)
  assert (summary.scored, summary.failed) == (n, 0) and _read_csv(predict.errors_path(out)) == []
  own = probe_files.read_predictions(os.path.join(workdir, probe_files.PREDICTIONS_FILE))
  test = own["split"] == "test"
  rows = {r["ecg_id"]: r for r in _read_csv(out)}
  assert sorted(rows) == sorted(own["ecg_id"][test].tolist()) and len(rows) == n
  columns = [c for c in own if c.startswith("y_score_")]
  assert columns == ["y_score_binary", "y_score_binary_mlp", "y_score_regression",
                     "y_score_regression_mlp"]
  for column in columns:
    ours = np.array([float(rows[i][column]) for i in own["ecg_id"][test]])
    np.testing.assert_allclose(ours, own[column][test], rtol=0, atol=1e-5, err_msg=column)
  # The decision: 1 when the seed-mean probability reaches the saved validation threshold.
  saved = saved_probes.load(workdir)
  for head in ("linear", "mlp"):
    (ensemble,) = [e for e in saved.ensembles if (e.head, e.target.name) == (head, "binary")]
    column = "binary" if head == "linear" else "binary_mlp"
    for r in rows.values():
      assert int(r[f"y_pred_{column}"]) == int(float(r[f"y_score_{column}"]) >= ensemble.threshold)
  # The embeddings are those the probe cached for its test split.
  cached, written = embed.load_npz(os.path.join(workdir, "embeddings", "test.npz")), \
      np.load(tmp_path / "emb.npz", allow_pickle=False)
  where = {ecg_id: k for k, ecg_id in enumerate(written["ecg_id"].tolist())}
  np.testing.assert_allclose(written["embedding"][[where[i] for i in cached["ecg_id"]]],
                             cached["embedding"], atol=1e-6)
  # The stored split itself, named as a dataset input, gives the same numbers.
  again = str(tmp_path / "split.csv")
  assert predict.run(workdir, ["dataset:ecg_synth/tiny:test"], again, data_dir=data_dir,
                     progress=False).failed == 0
  for r in _read_csv(again):
    assert r["source"] == "dataset:ecg_synth/tiny:test"
    for column in columns:
      assert float(r[column]) == pytest.approx(float(rows[r["ecg_id"]][column]), abs=1e-5)


# --- A saved probe without a probe run: a random encoder and a planted linear head --------------

FORMAT = ecg_files.RecordFormat(stored_rate=100, num_samples=1000, model_rate=50)


def _saved_probe(root, seed=0):
  """A probe workdir holding a linear binary head on a random tiny encoder (no data read)."""
  c = probe_config.add_entry_keys(probe_config.add_probe_section(config_defaults.base_config()))
  c.model.width, c.model.stage_sizes, c.model.embedding_dim = 4, (1,), 8
  c.data.sampling_rate = FORMAT.model_rate
  c.probe.heads, c.probe.primary_head = ("linear",), "linear"
  c.seed = seed
  encoder = embed.random_encoder(c, seed)
  rng = np.random.default_rng(0)
  std = linear_probe.Standardizer(rng.normal(size=8), rng.uniform(0.5, 2.0, 8))
  res = linear_probe.ProbeResult(
      task="binary", hyper_name="C", hyper=1.0, grid=(1.0,), val_criterion=(0.5,),
      val_scores=np.linspace(0.1, 0.9, 6), test_scores=np.zeros(3), threshold=0.5,
      coef=rng.normal(size=8), intercept=0.1, standardizer=std, n_train=10)
  fit = fitting.Fit(head="linear", target="binary", fraction="100%", seed=0, n_train=10,
                    test_scores=res.test_scores, val_scores=res.val_scores, threshold=0.5,
                    info={}, model=res)
  target = targets.parse("binary", 18.0)
  validation = {"pcwp": np.array([10.0, 25.0, 12.0, 30.0, 11.0, 26.0], np.float32)}
  saved_probes.save(os.path.join(root, saved_probes.HEADS_DIR), config=c, fits=[fit],
                    probe_targets=[target], validation=validation, encoder=encoder,
                    record_format=FORMAT, dataset="ecg_synth/tiny")
  return root


@pytest.fixture(scope="module")
def saved_probe(tmp_path_factory):
  return _saved_probe(str(tmp_path_factory.mktemp("saved_probe")))


@pytest.fixture(scope="module")
def ecg_folder(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("ecg_folder") / "ecgs")
  return folder, _write_good_and_bad(folder)


def _write_good_and_bad(folder):
  """Good files, one bad file per case, and what the errors file must say of each bad one."""
  os.makedirs(folder)
  ten_s = fx.signals(fx.PTBXL_LEADS, 500, 5000, 1)
  fx.write_wfdb(os.path.join(folder, "good_wfdb"), ten_s, fx.PTBXL_LEADS, 500)
  np.save(os.path.join(folder, "good_npy_12s.npy"), fx.signals(records.LEADS, 250, 3000, 2))
  bad = {}
  (open(os.path.join(folder, "unreadable.npy"), "wb")).write(b"\x93NUMPY garbage")
  bad["unreadable"] = "unreadable .npy file"
  with open(os.path.join(folder, "not_hdf5.h5"), "wb") as f:
    f.write(b"not an HDF5 file at all")
  bad["not_hdf5"] = "unreadable HDF5 file"
  fx.write_wfdb(os.path.join(folder, "truncated"), ten_s, fx.PTBXL_LEADS, 500)
  fx.truncate(os.path.join(folder, "truncated"))
  bad["truncated"] = "unreadable WFDB record"
  short = fx.signals(fx.PTBXL_LEADS, 500, 2500, 3)
  fx.write_wfdb(os.path.join(folder, "short"), short, fx.PTBXL_LEADS, 500)
  bad["short"] = "2500 samples at 500 Hz = 5.00 s, shorter than the 10 s wanted (wrong length)"
  nan = ten_s.copy()
  nan[100:200, 7] = np.nan
  fx.write_wfdb(os.path.join(folder, "nan"), nan, fx.PTBXL_LEADS, 500)
  bad["nan"] = "non-finite values (NaN/inf) in lead(s) V2"
  flat = ten_s.copy()
  flat[:, 3] = 0.25
  fx.write_wfdb(os.path.join(folder, "flat"), flat, fx.PTBXL_LEADS, 500)
  bad["flat"] = "flat lead(s) aVR (peak-to-peak < 10 uV)"
  fx.write_wfdb(os.path.join(folder, "missing_lead"), ten_s[:, :11], fx.PTBXL_LEADS[:11], 500)
  bad["missing_lead"] = "missing lead(s) V6 (has I, II, III, AVR, AVL, AVF, V1, V2, V3, V4, V5)"
  names = [f"ch{j}" for j in range(1, 13)]
  fx.write_wfdb(os.path.join(folder, "lead_names"), ten_s, names, 500)
  bad["lead_names"] = "missing lead(s) I, II, III, aVR, aVL, aVF, V1, V2, V3, V4, V5, V6 (has ch1"
  np.save(os.path.join(folder, "no_rate.npy"), fx.signals(records.LEADS, 250, 2500, 4))
  with h5py.File(os.path.join(folder, "no_rate.h5"), "w") as f:
    f.create_dataset("ecg", data=fx.signals(records.LEADS, 250, 2500, 5))
  bad["no_rate"] = "unknown sampling rate nan Hz"
  with open(os.path.join(folder, "notes.txt"), "w") as f:
    f.write("not an ECG")
  return bad


def test_bad_files_are_reported_with_their_reason_and_the_run_goes_on(saved_probe, ecg_folder,
                                                                     tmp_path, capsys):
  workdir, (folder, bad) = saved_probe, ecg_folder
  out = str(tmp_path / "p.csv")
  failed = predict.run(workdir, [folder, str(tmp_path / "nowhere")], out, progress=False).failed
  errors = _read_csv(predict.errors_path(out))
  reasons = {}
  for e in errors:
    reasons.setdefault(e["ecg_id"], []).append(e["reason"])
  # Without --sampling_rate a good .npy file is as unusable as the others: it has no rate.
  expected = dict(bad, good_npy_12s=bad["no_rate"])
  assert set(reasons) == set(expected) | {"nowhere"}
  for ecg_id, reason in expected.items():
    assert all(reason in r for r in reasons[ecg_id]), (ecg_id, reasons[ecg_id])
  # The row names the file; the reason does not repeat it.
  assert [(e["source"], e["reason"]) for e in errors if e["ecg_id"] == "nowhere"] == [
      (str(tmp_path / "nowhere"), "no such file or folder")]
  assert failed == len(errors) == len(expected) + 2  # no_rate twice (.npy and .h5)
  assert [r["ecg_id"] for r in _read_csv(out)] == ["good_wfdb"]  # WFDB headers give the rate
  assert "notes.txt" in capsys.readouterr().err  # named, not read
  # With the rate of the files that do not say, the .npy files are scored (12 s cut to 10 s).
  failed = predict.run(workdir, [folder], out, sampling_rate=250, progress=False).failed
  scored = {r["ecg_id"] for r in _read_csv(out)}
  assert scored == {"good_wfdb", "good_npy_12s", "no_rate"}
  assert failed == len(bad) - 1
  assert not [name for name in os.listdir(tmp_path) if ".tmp" in name]  # no half-written file


def test_strict_stops_at_the_first_bad_file_and_writes_nothing(saved_probe, ecg_folder,
                                                               tmp_path):
  workdir, (folder, _) = saved_probe, ecg_folder
  out = str(tmp_path / "p.csv")
  # Files are read in name order: flat.hea is the first.
  with pytest.raises(BadRecordError, match=r"ecgs/flat: flat lead\(s\) aVR .*\(strict mode: "
                                           r"nothing written\)"):
    predict.run(workdir, [folder], out, strict=True, progress=False)
  assert not os.path.exists(out)
  assert not os.path.exists(predict.errors_path(out))


def test_the_command_line_exits_non_zero_when_an_ecg_failed(saved_probe, tmp_path, capsys):
  workdir = saved_probe
  good = str(tmp_path / "good")
  fx.write_wfdb(good, fx.signals(fx.PTBXL_LEADS, 500, 5000, 1), fx.PTBXL_LEADS, 500)
  np.save(str(tmp_path / "bad.npy"), np.zeros((100, 12)))
  out = str(tmp_path / "p.csv")
  argv = ["predict", f"--probe={workdir}", f"--input={good}.hea", f"--output={out}", "--nostrict"]
  for extra, status in (([], 0), ([str(tmp_path / "bad.npy")], 1)):
    predict.FLAGS.unparse_flags()
    rest = predict.FLAGS(argv + extra)
    with pytest.raises(SystemExit) as stop:
      predict.main(rest)
    assert stop.value.code == status
  assert len(_read_csv(out)) == 1 and len(_read_csv(predict.errors_path(out))) == 1
  predict.FLAGS.unparse_flags()
  rest = predict.FLAGS(["predict", f"--probe={tmp_path}", f"--input={good}", f"--output={out}"])
  with pytest.raises(SystemExit) as stop:
    predict.main(rest)
  assert stop.value.code == 2
  assert f"error: --probe: {tmp_path}/heads holds no saved probe" in capsys.readouterr().err
  predict.FLAGS.unparse_flags()


def test_a_probe_fit_on_other_weights_is_refused(saved_probe, tmp_path):
  workdir = str(tmp_path / "probe")
  shutil.copytree(saved_probe, workdir)
  path = os.path.join(workdir, saved_probes.HEADS_DIR, saved_probes.MANIFEST)
  with open(path) as f:
    text = f.read()
  with open(path, "w") as f:  # the same manifest, an encoder of another seed
    f.write(text.replace('"seed": 0', '"seed": 1'))
  with pytest.raises(predict.UsageError, match=r"--probe: the encoder differs from the one the "
                                               r"probe in .* was fit on: it was a random "
                                               r"initialisation \(seed 1\)"):
    predict.run(workdir, [str(tmp_path)], str(tmp_path / "p.csv"), progress=False)
