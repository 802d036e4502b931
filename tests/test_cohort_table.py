"""The cohort table of ecg_synth/tiny against counts taken record by record from TFDS."""

import math

import numpy as np

from ssldml_jax.eval import cohort_table


def _expected_row(split, source, threshold):
  """The row by brute force over TFDS's decoded records."""
  recs = [source[i] for i in range(len(source))]
  pcwp = [float(r["pcwp"]) for r in recs if math.isfinite(r["pcwp"])]
  above = [v for v in pcwp if v > threshold]
  sexes = [int(r["sex"]) for r in recs]
  bands = {"18-35": 0, "35-50": 0, "50-75": 0, ">=75": 0, "<18": 0, "unknown": 0}
  for r in recs:
    age = float(r["age"])
    if not math.isfinite(age):
      bands["unknown"] += 1
    elif age < 18:
      bands["<18"] += 1
    elif age < 35:
      bands["18-35"] += 1
    elif age < 50:
      bands["35-50"] += 1
    elif age < 75:
      bands["50-75"] += 1
    else:
      bands[">=75"] += 1
  mean = sum(pcwp) / len(pcwp)
  sd = math.sqrt(sum((v - mean) ** 2 for v in pcwp) / len(pcwp))
  return (split, str(len(recs)), str(len({r["patient_id"] for r in recs})), str(len(pcwp)),
          f"{mean:.1f} ({sd:.1f})", f"{len(above)} ({100 * len(above) / len(pcwp):.1f}%)",
          str(sexes.count(0)), str(sexes.count(1)), str(sexes.count(-1)),
          str(bands["18-35"]), str(bands["35-50"]), str(bands["50-75"]), str(bands[">=75"]),
          f"{bands['<18']} / {bands['unknown']}")


def test_cohort_rows_match_a_count_over_the_records(ecg_synth_tiny):
  table, example = cohort_table.build(ecg_synth_tiny, 18.0, "test")
  assert table.header[5] == "mPCWP > 18"
  rows = {row[0]: row for row in table.body}
  assert set(rows) == set(ecg_synth_tiny.info.splits)
  for split in ("train", "validation", "test"):
    source = ecg_synth_tiny.as_data_source(split)
    assert rows[split] == _expected_row(split, source, 18.0)
  unlabeled = rows["unlabeled"]
  assert unlabeled[3:6] == ("0", "-", "-")  # no mPCWP in the unlabeled pool
  first = ecg_synth_tiny.as_data_source("test")[0]
  assert example["ecg_id"] == first["ecg_id"].decode()
  np.testing.assert_allclose(example["ecg_mv"], first["ecg"] / 1000.0, rtol=1e-6)
  assert cohort_table.build(ecg_synth_tiny, 18.0, "nope")[1] is None
