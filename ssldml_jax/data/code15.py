"""``code15``: CODE-15% (Zenodo), 345,779 12-lead ECGs of 233,770 patients, from a manual dir.

Reads ``exams.csv`` (``exam_id``, ``age``, ``is_male``, ``patient_id``) and every
``exams_part*.hdf5`` beside it (datasets ``exam_id`` (N,) and ``tracings`` (N, 4096, 12): 400 Hz,
millivolts, leads in the project's order). Exams of 10 s (4000 samples) and 7 s (2800) are
zero-padded, centred, to 4096 samples; the padding is trimmed (``readers.trim_zero_padding``)
before resampling. With the 10 s configs the 7 s exams are reported as too short and skipped
(about a third of them in the published data); ``code15/7s`` stores 7 s of every exam instead.

An exam is located by its ``exam_id`` inside the HDF5 files, not by ``trace_file``. Exams in a
file but not in ``exams.csv`` (no patient, so no split), all-zero tracings and csv rows whose exam
is missing from its file are reported one by one; csv rows whose ``trace_file`` was not
downloaded are reported together in one entry, so a build from some parts works and says so.

Splits: patients by a hash of ``patient_id`` (``readers.patient_split``): 80% ``train``, 10%
``validation``, 10% ``test``. No mPCWP: ``pcwp`` is NaN.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Iterator

import h5py
import numpy as np
import pandas as pd
import tensorflow_datasets as tfds

from ssldml_jax.data import readers, records

SOURCE_RATE = 400
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
CSV_COLUMNS = ("exam_id", "age", "is_male", "patient_id")


def _part_number(path: str) -> int:
  match = re.search(r"exams_part(\d+)\.hdf5$", path)
  return int(match.group(1)) if match else -1


def exam_key(value) -> str:
  """Exam ids as the csv and the HDF5 ``exam_id`` both spell them (integers)."""
  number = float(value)
  if number != int(number):
    raise ValueError(f"exam_id {value!r} is not an integer")
  return str(int(number))


class Code15(readers.SourceBuilder):
  """CODE-15% at the config's rate, padding trimmed, split by a hash of the patient."""

  BUILDER_CONFIGS = readers.rate_configs() + [
      readers.SourceConfig(name="7s", description="250 Hz, 7 s: every exam, 10 s ones cut.",
                           sampling_rate=250, duration_s=7.0)]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download CODE-15% from https://zenodo.org/records/4916206 (exams.csv and the "
      "exams_part{0..17}.zip archives), unzip the archives and pass the folder that holds "
      "exams.csv and exams_part*.hdf5 as --manual_dir.")
  HOMEPAGE = "https://zenodo.org/records/4916206"
  DESCRIPTION = ("CODE-15%: 12-lead ECGs from the Telehealth Network of Minas Gerais, Brazil "
                 "(Ribeiro et al.), 400 Hz, centred zero padding trimmed, resampled. Patients "
                 "split 80/10/10 into train/validation/test by SHA-256 of patient_id. No mPCWP "
                 "(pcwp NaN).")
  CITATION = ("Ribeiro AH, Paixao GMM, Lima EM, et al. CODE-15%: a large scale annotated dataset "
              "of 12-lead ECGs. Zenodo (2021). doi:10.5281/zenodo.4916206.")

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
    exams_csv, root = self.source_table(dl_manager, "exams.csv")
    files = sorted(glob.glob(os.path.join(glob.escape(root), "exams_part*.hdf5")),
                   key=_part_number)
    if not files:
      raise readers.SourceError(f"no exams_part*.hdf5 in {root} (unzip the downloaded "
                                f"exams_part*.zip archives there)")
    table = pd.read_csv(exams_csv, dtype=str, keep_default_na=False)
    missing = [c for c in CSV_COLUMNS if c not in table.columns]
    if missing:
      raise readers.SourceError(f"{exams_csv}: missing column(s) {', '.join(missing)}")
    meta = {}
    for row in table.to_dict("records"):
      try:
        meta[exam_key(row["exam_id"])] = row
      except ValueError as e:
        self.report.reject("unassigned", row["exam_id"], [f"exams.csv: {e}"])
    by_split: dict[str, list] = {split: [] for split in SPLIT_FRACTIONS}
    found = set()
    for path in files:
      try:
        with h5py.File(path, "r") as f:
          ids = np.asarray(f["exam_id"][()]).reshape(-1)
      except Exception as e:  # A broken part is reported, the others are built.
        self.report.reject("unassigned", os.path.basename(path),
                           [f"unreadable HDF5 file ({type(e).__name__}: {e})"])
        continue
      for index, exam in enumerate(exam_key(i) for i in ids):
        row = meta.get(exam)
        if row is None:
          self.report.reject("unassigned", exam,
                             [f"in {os.path.basename(path)} but not in exams.csv"])
          continue
        found.add(exam)
        split = readers.patient_split(row["patient_id"].strip(), SPLIT_FRACTIONS)
        by_split[split].append((path, index, row))
    self._report_unfound(meta, found, {os.path.basename(p) for p in files})
    return {split: self._generate_examples(split, items)
            for split, items in readers.nonempty_splits("code15", by_split).items()}

  def _report_unfound(self, meta: dict, found: set, present: set) -> None:
    """csv rows without a tracing: one by one if their file is here, else together."""
    absent_files, absent = set(), 0
    for exam, row in meta.items():
      if exam in found:
        continue
      trace_file = row.get("trace_file", "").strip()
      if trace_file in present:
        self.report.reject("unassigned", exam, [f"not found in {trace_file}"])
      else:
        absent += 1
        absent_files.add(trace_file or "<no trace_file>")
    if absent:
      self.report.reject("unassigned", f"{absent} exams.csv rows",
                         [f"their trace files were not downloaded: "
                          f"{', '.join(sorted(absent_files, key=_part_number))}"])

  def _generate_examples(self, split: str, items: list) -> Iterator[tuple[str, dict]]:
    handles: dict[str, h5py.File] = {}
    try:
      for path, index, row in items:
        if path not in handles:
          handles[path] = h5py.File(path, "r")
        where = f"{os.path.basename(path)}[{index}]"
        result = self.example_from(split, exam_key(row["exam_id"]),
                                   lambda: self._load(handles[path], index, row, where))
        if result is not None:
          yield result
    finally:
      for handle in handles.values():
        handle.close()

  def _load(self, f: h5py.File, index: int, row: dict, where: str) -> dict:
    record = {"ecg_id": exam_key(row["exam_id"]), "patient_id": row["patient_id"].strip(),
              "age": readers.parse_float(row["age"]), "sex": readers.parse_sex(row["is_male"])}
    tracing = readers.trim_zero_padding(np.asarray(f["tracings"][index], np.float64))
    if tracing.shape[0] == 0:
      raise records.BadRecordError(f"{where}: all-zero tracing (no signal)")
    raw = readers.RawEcg(tracing, records.LEADS, float(SOURCE_RATE))
    record["ecg"] = readers.record_for(raw, self.builder_config, where)
    return record
