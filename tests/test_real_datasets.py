"""The real-data builders (PTB-XL, MIMIC-IV-ECG, CODE-15%, a hospital cohort) on small fixtures.

The fixtures (``real_data_fixtures``) are written with wfdb and h5py in each dataset's layout, with
bad records among the good ones. Stored values are compared with the analytic signal the fixture
was drawn from, at the stored rate, so resampling, lead order, units and cropping are all checked
against something the code under test did not compute.
"""

import datetime
import json
import math
import os

import h5py
import numpy as np
import pytest

import real_data_fixtures as fx
from ssldml_jax.data import build, cohort, ptbxl, reader, readers, records, tfds_common

# wfdb calls pandas in a way pandas 3 deprecates; not this project's to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword")

# Resampling and 1 uV quantisation in the files: a few microvolts at most, but for the first and
# last two samples, where the polyphase filter extrapolates.
TOLERANCE_UV = 4.0
EDGE = 2


def _build(name: str, manual_dir: str, data_dir: str, **kwargs):
  return build.build(name, data_dir, manual_dir=manual_dir, **kwargs)


def _examples(builder) -> dict:
  """ecg_id -> (split, example) over every split."""
  out = {}
  for split in builder.info.splits:
    for example in builder.as_data_source(split):
      out[example["ecg_id"].decode()] = (split, example)
  return out


def _assert_skipped(builder, bad: dict) -> dict:
  """The build report lists exactly the bad records, each with the expected problem."""
  report = tfds_common.read_build_report(builder)
  skipped = {entry["id"]: " ".join(entry["problems"]) for entry in report["skipped"]}
  assert set(skipped) == set(bad), skipped
  for record_id, problem in bad.items():
    assert problem in skipped[record_id], (record_id, skipped[record_id])
  return report


def _assert_close(stored: np.ndarray, expected_uv: np.ndarray) -> None:
  assert stored.dtype == np.int16 and stored.shape == expected_uv.shape
  error = np.abs(stored[EDGE:-EDGE].astype(np.float64) - expected_uv[EDGE:-EDGE])
  assert error.max() <= TOLERANCE_UV, error.max(axis=0)


def _assert_patient_disjoint(examples: dict) -> None:
  split_of = {}
  for split, example in examples.values():
    assert split_of.setdefault(example["patient_id"], split) == split


@pytest.fixture(scope="module")
def ptbxl_source(tmp_path_factory):
  """(manual dir, truth) of the PTB-XL fixture, shared by the tests that build it."""
  manual = str(tmp_path_factory.mktemp("ptbxl_src"))
  return manual, fx.write_ptbxl(manual)


# --- Readers ----------------------------------------------------------------------------------

def test_trim_zero_padding_keeps_recording_with_zero_edge_sample():
  x = fx.signals(records.LEADS, 400, 2800, 1)
  x[0] = 0.0  # The recording's own first sample is 0 on every lead.
  padded = np.zeros((4096, 12))
  padded[648:648 + 2800] = x
  np.testing.assert_array_equal(readers.trim_zero_padding(padded), x)
  assert readers.trim_zero_padding(np.zeros((4096, 12))).shape == (0, 12)


@pytest.mark.parametrize("crop,start_s", [("first", 0.0), ("centre", 1.0)])
def test_to_record_resamples_reorders_and_crops(crop, start_s):
  raw = readers.RawEcg(fx.signals(fx.MIMIC_LEADS, 500, 6000, 3), fx.MIMIC_LEADS, 500.0)
  out = readers.to_record(raw, rate=250, num_samples=2500, crop=crop)
  expected = fx.expected_uv(3, start_s=start_s) / 1000.0
  assert out.shape == (2500, 12)
  np.testing.assert_allclose(out[EDGE:-EDGE], expected[EDGE:-EDGE], atol=2e-3)


def test_to_record_rejects_short_missing_lead_and_unknown_rate():
  short = readers.RawEcg(fx.signals(records.LEADS, 500, 4990, 0), records.LEADS, 500.0)
  with pytest.raises(records.BadRecordError, match=r"f\.dat: 4990 samples .* \(wrong length\)"):
    readers.to_record(short, rate=250, num_samples=2500, where="f.dat")
  eleven = readers.RawEcg(np.ones((5000, 11)), records.LEADS[:6] + records.LEADS[7:], 500.0)
  with pytest.raises(records.BadRecordError, match="f.dat: missing lead.*V1"):
    readers.to_record(eleven, rate=250, num_samples=2500, where="f.dat")
  no_rate = readers.RawEcg(np.ones((5000, 12)), records.LEADS, math.nan)
  with pytest.raises(records.BadRecordError, match="unknown sampling rate"):
    readers.to_record(no_rate, rate=250, num_samples=2500)


def test_patient_split_is_stable_and_near_the_fractions():
  fractions = {"train": 0.8, "validation": 0.1, "test": 0.1}
  splits = [readers.patient_split(str(i), fractions) for i in range(20_000)]
  assert splits == [readers.patient_split(str(i), fractions) for i in range(20_000)]
  for name, fraction in fractions.items():
    assert abs(splits.count(name) / len(splits) - fraction) < 0.01
  # SHA-256, not Python's per-process hash: a fixed id has a fixed split everywhere.
  assert [readers.patient_split(i, fractions) for i in ("505", "508", "500")] == \
      ["validation", "test", "train"]


def test_read_hdf5_picks_the_recording_by_date_and_checks_rate(tmp_path):
  path = str(tmp_path / "p.h5")
  with h5py.File(path, "w") as f:
    for day, value in (("2021-01-01", 1.0), ("2021-02-01", 2.0)):
      for lead in records.LEADS:
        f.create_dataset(f"ecg/{day}/{lead.upper()}", data=np.full(7, value))
    f.attrs["fs"] = 500
  raw = readers.read_hdf5(path, date="2021-02-01 13:45")
  assert raw.rate == 500 and raw.signal.shape == (7, 12) and np.all(raw.signal == 2.0)
  assert readers.read_hdf5(path, key="ecg/2021-01-01").signal[0, 0] == 1.0
  with pytest.raises(records.BadRecordError, match="p.h5: 'ecg' holds 2 recordings"):
    readers.read_hdf5(path, date="2021-03-01")
  with pytest.raises(records.BadRecordError, match="file says 500 Hz but 250 Hz.*wrong rate"):
    readers.read_hdf5(path, key="ecg/2021-01-01", rate=250.0)


def test_nearest_cath_prefers_nearest_then_earlier_then_first_row():
  t = datetime.datetime(2021, 1, 1, 12)
  hours = lambda h: t + datetime.timedelta(hours=h)
  caths = [cohort.Cath(hours(6), 1.0, 2), cohort.Cath(hours(-6), 2.0, 3),
           cohort.Cath(hours(-6), 3.0, 4), cohort.Cath(hours(30), 4.0, 5)]
  assert cohort.nearest_cath(caths, t, 24.0).pcwp == 2.0  # Tie: earlier time, then earlier row.
  assert cohort.nearest_cath(caths, t, 5.0) is None
  assert cohort.nearest_cath(caths, hours(29), 24.0).pcwp == 4.0


def test_ptbxl_label_conversions():
  assert [ptbxl.convert_sex(v) for v in ("0", "1", "")] == [1, 0, -1]
  assert ptbxl.convert_age("300") == 90.0 and ptbxl.convert_age("61") == 61.0
  classes = {"NORM": "NORM", "IMI": "MI", "LVH": "HYP"}
  np.testing.assert_array_equal(ptbxl.superclass_vector("{'IMI': 15.0, 'LVH': 100.0, 'SR': 0}",
                                                        classes), [0, 1, 0, 0, 1])
  np.testing.assert_array_equal(ptbxl.superclass_vector("{}", None), [-1] * 5)


def test_cohort_settings_reject_unknown_keys(tmp_path):
  (tmp_path / "cohort.json").write_text(json.dumps({"max_gap_hour": 48}))
  with pytest.raises(records.BadRecordError, match=r"cohort.json: unknown key 'max_gap_hour' "
                                                   r"\(allowed: .*max_gap_hours"):
    cohort.load_settings(cohort.Cohort.BUILDER_CONFIGS[0], str(tmp_path))
  (tmp_path / "cohort.json").write_text(json.dumps({"max_gap_hours": 48, "crop": "centre"}))
  config = cohort.load_settings(cohort.Cohort.BUILDER_CONFIGS[0], str(tmp_path))
  assert config.max_gap_hours == 48 and config.crop == "centre" and config.num_samples == 2500


# --- Builders ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["code15", "mimic_iv_ecg", "ptbxl", "cohort"])
def test_a_source_without_its_files_names_itself_and_what_to_download(name, tmp_path):
  with pytest.raises(readers.SourceError) as e:
    _build(name, str(tmp_path / "absent"), str(tmp_path / "data"))
  message = str(e.value)
  assert message.startswith(f"{name} is built from downloaded files: manual directory ")
  assert "(--manual_dir=DIR)" in message and "\n" not in message
  assert message.endswith(build.builder_class(name).MANUAL_DOWNLOAD_INSTRUCTIONS)
  assert not os.path.exists(tmp_path / "data" / name / "default" / "1.0.0")  # No dataset.


def test_ptbxl_build(ptbxl_source, tmp_path):
  manual, truth = ptbxl_source
  builder = _build("ptbxl", manual, str(tmp_path))
  examples = _examples(builder)
  assert set(examples) == set(truth["good"])
  for ecg_id, (patient, split, seed, age, sex, classes) in truth["good"].items():
    got_split, example = examples[ecg_id]
    assert (got_split, example["patient_id"].decode(), int(example["sex"])) == (split, patient, sex)
    assert example["age"] == age or (math.isnan(age) and math.isnan(example["age"]))
    assert math.isnan(example["pcwp"]) and example["sampling_rate"] == 250
    np.testing.assert_array_equal(example["diagnostic_superclass"], classes)
    _assert_close(example["ecg"], fx.expected_uv(seed))
  # A probe target reads the superclasses by name, as they were stored.
  features = reader.label_features(builder)
  assert features["diagnostic_superclass"] == ((5,), np.dtype(np.int32), ptbxl.SUPERCLASSES)
  for split in builder.info.splits:
    stored = reader.read_features(builder, split, ("diagnostic_superclass",))
    for ecg_id, vector in zip(stored["ecg_id"], stored["diagnostic_superclass"]):
      np.testing.assert_array_equal(vector, truth["good"][ecg_id][5])
  report = _assert_skipped(builder, {"7": "unreadable WFDB", "8": "NaN", "9": "missing lead(s) V6",
                                     "10": "100 Hz, expected 500 Hz (wrong rate)"})
  assert report["examples_written"] == {"train": 3, "validation": 2, "test": 1}


def test_ptbxl_strict_build_fails_and_leaves_nothing(ptbxl_source, tmp_path):
  data_dir = str(tmp_path)
  with pytest.raises(records.BadRecordError, match="record 7: .*strict mode"):
    _build("ptbxl", ptbxl_source[0], data_dir, strict=True)
  assert not build.make_builder("ptbxl", data_dir).is_prepared()
  config_dir = os.path.join(data_dir, "ptbxl", "default")
  assert not os.path.isdir(config_dir) or not any(
      not name.startswith("incomplete") for name in os.listdir(config_dir))


def test_mimic_build_puts_avl_avf_back(tmp_path):
  manual = str(tmp_path / "src")
  truth = fx.write_mimic(manual)
  builder = _build("mimic_iv_ecg", manual, str(tmp_path / "data"))
  examples = _examples(builder)
  assert set(examples) == set(truth["good"])
  _assert_patient_disjoint(examples)
  for study, (subject, seed, age, sex) in truth["good"].items():
    split, example = examples[study]
    assert split == readers.patient_split(subject, {"train": .8, "validation": .1, "test": .1})
    assert (example["patient_id"].decode(), int(example["sex"])) == (subject, sex)
    assert example["age"] == age or (math.isnan(age) and math.isnan(example["age"]))
    _assert_close(example["ecg"], fx.expected_uv(seed))
  # The file's 5th column is aVF; stored column 4 must be aVL.
  one = examples["40000000"][1]["ecg"].astype(float)
  avl = fx.expected_uv(0)[:, records.LEADS.index("aVL")]
  assert np.corrcoef(one[:, 4], avl)[0, 1] > 0.999
  _assert_skipped(builder, {"40000101": "non-finite values (NaN/inf) in lead(s) aVF",
                            "40000301": "250 Hz, expected 500 Hz"})


def test_code15_build_trims_padding_and_resamples(tmp_path):
  manual = str(tmp_path / "src")
  os.makedirs(manual)
  truth = fx.write_code15(manual)
  builder = _build("code15", manual, str(tmp_path / "data"))
  examples = _examples(builder)
  assert set(examples) == set(truth["good"])
  _assert_patient_disjoint(examples)
  assert {split for split, _ in examples.values()} == {"train", "validation", "test"}
  for exam, (patient, seed, age, sex) in truth["good"].items():
    _, example = examples[exam]
    assert (example["patient_id"].decode(), float(example["age"]), int(example["sex"])) == \
        (patient, age, sex)
    _assert_close(example["ecg"], fx.expected_uv(seed))
  _assert_skipped(builder, {"1004": "7.00 s, shorter than the 10 s", "1007": "all-zero",
                            "1008": "NaN", "1010": "in exams_part1.hdf5 but not in exams.csv",
                            "9999": "not found in exams_part0.hdf5"})


def test_cohort_build_joins_labels_and_reads_every_format(tmp_path):
  manual = str(tmp_path / "src")
  truth = fx.write_cohort(manual, settings={"crop": "centre"})
  builder = _build("cohort", manual, str(tmp_path / "data"))
  examples = _examples(builder)
  assert set(examples) == set(truth["good"])
  _assert_patient_disjoint(examples)
  for ecg_id, (patient, seed, pcwp, start_s) in truth["good"].items():
    split, example = examples[ecg_id]
    assert example["patient_id"].decode() == patient
    assert example["pcwp"] == pcwp or (math.isnan(pcwp) and math.isnan(example["pcwp"]))
    # Patients without a labeled ECG form the unlabeled pool; P1 keeps its unlabeled ECG w2.
    assert (split == "unlabeled") == (patient not in ("P1", "P2", "P4"))
    assert int(example["sex"]) == (0 if seed % 2 else 1) and example["age"] == 60 + seed
    expected = fx.expected_uv(seed, start_s=start_s)
    if ecg_id.startswith("n"):  # Stored at its own rate: no resampling, exact int16 rounding.
      np.testing.assert_array_equal(example["ecg"], np.rint(expected))
    else:
      _assert_close(example["ecg"], expected)
  _assert_skipped(builder, {"b1": "b1.h5: missing lead(s) V6", "b2": "unreadable WFDB",
                            "b3": "non-finite", "b4": "8.00 s, shorter", "b5": "no such file",
                            "b6": "says 250 Hz (wrong rate)", "n3": "impossible mPCWP 400",
                            "labels.csv row 9": "unparsable cath_time"})
