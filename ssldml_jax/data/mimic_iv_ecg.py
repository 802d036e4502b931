"""``mimic_iv_ecg``: MIMIC-IV-ECG (PhysioNet), ~800,000 10-s 12-lead ECGs, from a manual dir.

Reads ``record_list.csv`` (``subject_id``, ``study_id``, ``file_name``, ``ecg_time``, ``path``)
and the 500 Hz WFDB records it points to. The study is the ECG (``ecg_id`` = ``study_id``), the
subject the patient. MIMIC writes aVF before aVL; the leads are put back in the project's order
by name.

Splits: MIMIC-IV-ECG has none, so patients are split by a hash of ``subject_id``
(``readers.patient_split``): 80% ``train``, 10% ``validation``, 10% ``test``. The hash is SHA-256
of the id, so the split of a subject is the same on every machine and in every release of the
record list.

Age and sex are not in the ECG module. When MIMIC-IV's ``hosp/patients.csv(.gz)`` is placed in the
manual dir (or beside ``record_list.csv``), sex is its ``gender`` and age is
``anchor_age + (ECG year - anchor_year)`` (MIMIC's shifted years cancel out); otherwise both are
unknown. No mPCWP: ``pcwp`` is NaN.
"""

from __future__ import annotations

import math
import operator
import os
from typing import Iterator, Optional

import pandas as pd
import tensorflow_datasets as tfds

from ssldml_jax.data import readers, records

SOURCE_RATE = 500
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
RECORD_LIST_COLUMNS = ("subject_id", "study_id", "ecg_time", "path")


def read_patients(path: Optional[str]) -> dict[str, tuple[int, float, float]]:
  """subject_id -> (sex, anchor_age, anchor_year) from MIMIC-IV ``patients.csv``; {} if absent."""
  if path is None:
    return {}
  table = pd.read_csv(path, dtype=str, keep_default_na=False)
  missing = [c for c in ("subject_id", "gender", "anchor_age", "anchor_year")
             if c not in table.columns]
  if missing:
    raise readers.SourceError(f"{path}: missing column(s) {', '.join(missing)}")
  out = {}
  for row in table.to_dict("records"):
    try:
      sex = readers.parse_sex(row["gender"])
    except ValueError:
      sex = records.SEX_UNKNOWN  # An unknown gender code leaves sex unknown, as MIMIC intends.
    out[row["subject_id"].strip()] = (sex, readers.parse_float(row["anchor_age"]),
                                      readers.parse_float(row["anchor_year"]))
  return out


def find_patients(manual_dir: str, root: str) -> Optional[str]:
  """MIMIC-IV's ``patients.csv(.gz)`` in the manual dir or beside ``record_list.csv`` (``root``),
  each or one folder below; None when absent."""
  return next((p for p in (readers.find_source(d, name, required=False)
                           for d in (manual_dir, root)
                           for name in ("patients.csv", "patients.csv.gz"))
               if p is not None), None)


def age_at(ecg_time: str, anchor: Optional[tuple[int, float, float]]) -> float:
  """Age in years at the ECG from the patient's anchor age and year; NaN when unknown."""
  when = readers.parse_datetime(ecg_time)
  if anchor is None or when is None:
    return math.nan
  _, anchor_age, anchor_year = anchor
  return anchor_age + (when.year - anchor_year)


class MimicIvEcg(readers.SourceBuilder):
  """MIMIC-IV-ECG at the config's rate, split by a hash of the subject."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download MIMIC-IV-ECG from https://physionet.org/content/mimic-iv-ecg/ (`wget -r -N -c "
      "-np https://physionet.org/files/mimic-iv-ecg/1.0/`) and pass the folder that holds "
      "record_list.csv and files/ as --manual_dir. Optionally copy MIMIC-IV's "
      "hosp/patients.csv.gz there for age and sex.")
  DESCRIPTION = ("MIMIC-IV-ECG: 10-s 12-lead diagnostic ECGs from Beth Israel Deaconess Medical "
                 "Center (Gow et al., PhysioNet 2023). Patients split 80/10/10 into train/"
                 "validation/test by SHA-256 of subject_id. Age/sex from MIMIC-IV patients.csv "
                 "when given. No mPCWP (pcwp NaN).")
  HOMEPAGE = "https://physionet.org/content/mimic-iv-ecg/"
  CITATION = ("Gow B, Pollard T, Nathanson LA, et al. MIMIC-IV-ECG: Diagnostic Electrocardiogram "
              "Matched Subset (version 1.0). PhysioNet (2023).")

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
    record_list, root = self.source_table(dl_manager, "record_list.csv")
    patients = read_patients(find_patients(self.source_dir(dl_manager), root))
    table = pd.read_csv(record_list, dtype=str, keep_default_na=False)
    missing = [c for c in RECORD_LIST_COLUMNS if c not in table.columns]
    if missing:
      raise readers.SourceError(f"{record_list}: missing column(s) {', '.join(missing)}")
    by_split: dict[str, list] = {split: [] for split in SPLIT_FRACTIONS}
    for row in table.to_dict("records"):
      by_split[readers.patient_split(row["subject_id"].strip(), SPLIT_FRACTIONS)].append(row)
    return {split: self._generate_examples(split, rows, root, patients)
            for split, rows in readers.nonempty_splits("mimic_iv_ecg", by_split).items()}

  def _generate_examples(self, split: str, rows: list, root: str,
                         patients: dict) -> Iterator[tuple[str, dict]]:
    yield from self.examples_from(split, rows, operator.itemgetter("study_id"),
                                  lambda row: self._load(row, root, patients))

  def _load(self, row: dict, root: str, patients: dict) -> dict:
    subject = row["subject_id"].strip()
    anchor = patients.get(subject)
    path = os.path.join(root, row["path"].strip())
    raw = readers.read_wfdb(path)
    return {"ecg_id": row["study_id"].strip(), "patient_id": subject,
            "age": age_at(row["ecg_time"], anchor),
            "sex": anchor[0] if anchor else records.SEX_UNKNOWN,
            "ecg": readers.record_for(raw, self.builder_config, path, expected_rate=SOURCE_RATE)}
