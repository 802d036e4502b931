"""What a path holds for ``predict``, and each ECG made into a record as a build makes one
(checked against the analytic signal of the fixtures)."""

import h5py
import numpy as np
import pytest

import real_data_fixtures as fx
from ssldml_jax.data import ecg_files, readers, records
from ssldml_jax.data.records import BadRecordError

# wfdb calls pandas in a way pandas 3 deprecates; not this project's to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword")


def test_a_folder_lists_every_ecg_and_names_the_files_it_does_not_read(tmp_path):
  root = tmp_path / "in"
  (root / "a" / "b").mkdir(parents=True)
  fx.write_wfdb(str(root / "a" / "rec1"), fx.signals(fx.PTBXL_LEADS, 500, 100, 0),
                fx.PTBXL_LEADS, 500)
  (root / "a" / "rec1.atr").write_bytes(b"")  # an annotation file goes with its record
  np.save(root / "a" / "b" / "x.npy", np.zeros((12, 50)))
  with h5py.File(root / "c.h5", "w") as f:
    for day, value in (("2021-01-01", 1.0), ("2021-02-01", 2.0)):
      for lead in records.LEADS:
        f.create_dataset(f"ecg/{day}/{lead}", data=np.full(20, value))
  with h5py.File(root / "single.HDF5", "w") as f:
    f.create_dataset("ecg", data=np.ones((20, 12)))
  (root / "notes.txt").write_text("not an ECG")
  messages = []
  items = ecg_files.list_inputs([str(root)], default_rate=250.0, log=messages.append)
  assert [i.ecg_id for i in items] == ["c/2021-01-01", "c/2021-02-01", "single", "a/rec1",
                                       "a/b/x"]
  assert items[3].source == str(root / "a" / "rec1")
  assert items[1].read().signal[0, 0] == 2.0 and items[1].read().rate == 250.0
  assert items[4].read().signal.shape == (50, 12)
  assert messages == [f"{root}: 1 file(s) of other types not read (e.g. notes.txt); ECG files "
                      "are .hea, .h5, .hdf5, .npy"]
  # A record given without its extension; a file of another type; a path that is not there.
  record, other, missing = ecg_files.list_inputs(
      [str(root / "a" / "rec1"), str(root / "notes.txt"), str(tmp_path / "gone.npy")])
  assert (record.ecg_id, record.read().rate) == ("rec1", 500.0)
  for item, reason in ((other, "notes.txt: not an ECG file"),
                       (missing, "gone.npy: no such file or folder")):
    with pytest.raises(BadRecordError, match=reason):
      item.read()


def test_dataset_inputs_name_what_is_wrong(ecg_synth_tiny, data_dir):
  for spec, reason in (("dataset:ecg_synth/tiny", "write a dataset split as "
                                                  "dataset:NAME/CONFIG:SPLIT"),
                       ("dataset:ecg_synth/tiny:nope", "ecg_synth/tiny has no split 'nope' "
                                                       "\\(has test, train, unlabeled"),
                       ("dataset:ecg_synth/large:test", "is not built in")):
    (item,) = ecg_files.list_inputs([spec], data_dir=data_dir)
    with pytest.raises(BadRecordError, match=reason):
      item.read()
  items = ecg_files.list_inputs(["dataset:ecg_synth/tiny:test"], data_dir=data_dir)
  assert len(items) == ecg_synth_tiny.info.splits["test"].num_examples
  first = items[0].read()
  assert first.rate == 100.0 and first.leads == records.LEADS and first.signal.shape == (1000, 12)


@pytest.mark.parametrize("crop,start_s", [("first", 0.0), ("centre", 1.0)])
def test_as_record_reorders_resamples_and_crops_like_a_build(crop, start_s):
  raw = readers.RawEcg(fx.signals(fx.MIMIC_LEADS, 500, 6000, 3), fx.MIMIC_LEADS, 500.0)
  fmt = ecg_files.RecordFormat(stored_rate=250, num_samples=2500, model_rate=50, crop=crop)
  stored = ecg_files.as_record(raw, fmt, "f")
  assert stored.dtype == np.int16 and stored.shape == (2500, 12)
  error = np.abs(stored.astype(float) - fx.expected_uv(3, start_s=start_s))[2:-2]
  assert error.max() <= 4.0  # 1 uV steps and the polyphase filter, away from the ends
  model = records.model_input(stored[None], fmt.stored_rate, fmt.model_rate)
  np.testing.assert_array_equal(
      model[0], records.resample(stored.astype(np.float32) * np.float32(1e-3), 250, 50))
  flat = readers.RawEcg(np.where(np.arange(12) == 4, 0.3, raw.signal), fx.MIMIC_LEADS, 500.0)
  with pytest.raises(BadRecordError, match="^f: flat lead\\(s\\) aVF"):  # MIMIC's 5th is aVF
    ecg_files.as_record(flat, fmt, "f")
