"""The record reader against TFDS's own decoder, on every record of ecg_synth/tiny."""

import numpy as np
import pytest

from ssldml_jax.data import reader, records


@pytest.fixture(scope="module")
def tfds_records(ecg_synth_tiny):
  """Every record of every split as TFDS's generic decoder gives it: split -> list of dicts."""
  out = {}
  for split in ecg_synth_tiny.info.splits:
    source = ecg_synth_tiny.as_data_source(split)
    out[split] = [source[i] for i in range(len(source))]
  return out


def test_fast_decoder_agrees_with_tfds(ecg_synth_tiny, tfds_records):
  for split, expected in tfds_records.items():
    source = reader.Records(ecg_synth_tiny, split)
    assert len(source) == len(expected)
    for i, want in enumerate(expected):
      got = source[i]
      assert got["ecg"].dtype == np.int16
      np.testing.assert_array_equal(got["ecg"], want["ecg"])
      assert (got["ecg_id"], got["patient_id"]) == (want["ecg_id"].decode(),
                                                    want["patient_id"].decode())
      np.testing.assert_array_equal([got["pcwp"], got["age"]], [want["pcwp"], want["age"]])
      assert (got["sex"], got["sampling_rate"]) == (want["sex"], want["sampling_rate"])
      # The generic decoder's own output, converted, is the same record.
      back = reader.from_tfds(want)
      assert {k: str(v) for k, v in back.items() if k != "ecg"} == \
          {k: str(v) for k, v in got.items() if k != "ecg"}


def test_subset_and_repr(ecg_synth_tiny, tfds_records):
  subset = reader.Records(ecg_synth_tiny, "test").subset(np.array([5, 0, 7]), "some")
  assert len(subset) == 3
  assert [subset[i]["ecg_id"] for i in range(3)] == [
      tfds_records["test"][i]["ecg_id"].decode() for i in (5, 0, 7)]
  assert repr(subset) == (f"Records({ecg_synth_tiny.info.full_name}, split=test, subset=some, "
                          "n=3)")


def test_read_labels_is_every_record_in_order(ecg_synth_tiny, tfds_records):
  labels = reader.read_labels(ecg_synth_tiny, "train")
  want = tfds_records["train"]
  assert list(labels) == list(reader.LABEL_FIELDS)
  assert labels["ecg_id"].tolist() == [r["ecg_id"].decode() for r in want]
  assert labels["patient_id"].tolist() == [r["patient_id"].decode() for r in want]
  for key, dtype in (("pcwp", np.float32), ("age", np.float32), ("sex", np.int32)):
    assert labels[key].dtype == dtype
    np.testing.assert_array_equal(labels[key], [r[key] for r in want])


def test_first_ecg_in_millivolts(ecg_synth_tiny, tfds_records):
  first = reader.first_ecg(ecg_synth_tiny, "validation")
  want = tfds_records["validation"][0]
  assert first["ecg_id"] == want["ecg_id"].decode()
  assert first["rate"] == want["sampling_rate"] == ecg_synth_tiny.builder_config.sampling_rate
  np.testing.assert_allclose(first["ecg_mv"], want["ecg"] / 1000.0, rtol=1e-6, atol=0)
  assert first["ecg_mv"].dtype == np.float32 and first["ecg_mv"].shape[1] == records.NUM_LEADS


def test_label_features_and_read_features_agree_with_tfds(ecg_synth_tiny, tfds_records):
  features = reader.label_features(ecg_synth_tiny)
  assert features == {"age": ((), np.dtype(np.float32), ()), "sex": ((), np.dtype(np.int32), ()),
                      "pcwp": ((), np.dtype(np.float32), ())}
  got = reader.read_features(ecg_synth_tiny, "validation", ("sex", "pcwp"))
  want = tfds_records["validation"]
  assert got["ecg_id"].tolist() == [r["ecg_id"].decode() for r in want]
  np.testing.assert_array_equal(got["sex"], [r["sex"] for r in want])
  np.testing.assert_array_equal(got["pcwp"], np.array([r["pcwp"] for r in want], np.float32))
  assert got["sex"].dtype == np.int32 and got["pcwp"].dtype == np.float32
  with pytest.raises(KeyError, match="has no label feature ecg \\(has age, pcwp, sex\\)"):
    reader.read_features(ecg_synth_tiny, "test", ("ecg",))
