"""``ptbxl``: PTB-XL (PhysioNet), 21,799 10-s 12-lead ECGs of 18,869 patients, from a manual dir.

Reads ``ptbxl_database.csv``, ``scp_statements.csv`` and the 500 Hz WFDB records
(``records500/``, the ``filename_hr`` column). Splits follow the recommended stratified folds,
which keep each patient in one fold: folds 1-8 ``train``, 9 ``validation``, 10 ``test``.

Label conventions converted to the project's:
* ``sex``: PTB-XL codes 0 male, 1 female; stored as 0 female, 1 male.
* ``age``: PTB-XL writes 300 for patients older than 89 (anonymisation); stored as 90, the
  lower bound of what is known, which keeps them in the oldest age band.
* ``diagnostic_superclass``: multi-hot over ``SUPERCLASSES`` from the diagnostic SCP codes of the
  record (any likelihood, as PTB-XL's own example does); -1 everywhere when
  ``scp_statements.csv`` is absent. PTB-XL has no mPCWP: ``pcwp`` is NaN.
"""

from __future__ import annotations

import ast
import math
import os
from typing import Any, Iterator, Optional

import numpy as np
import pandas as pd
import tensorflow_datasets as tfds

from ssldml_jax.data import readers, records

SUPERCLASSES = ("NORM", "MI", "STTC", "CD", "HYP")
SOURCE_RATE = 500
FOLD_SPLITS = {**{fold: "train" for fold in range(1, 9)}, 9: "validation", 10: "test"}
# PTB-XL's code for 'older than 89' and the age stored in its place.
ANONYMISED_AGE, OLDEST_AGE = 300.0, 90.0


def convert_sex(value: Any) -> int:
  """PTB-XL sex (0 male, 1 female) as ours (0 female, 1 male); empty is unknown."""
  code = readers.parse_float(value)
  if math.isnan(code):
    return records.SEX_UNKNOWN
  if code not in (0.0, 1.0):
    raise ValueError(f"sex code {value!r}, PTB-XL uses 0 (male) or 1 (female)")
  return records.SEX_MALE if code == 0.0 else records.SEX_FEMALE


def convert_age(value: Any) -> float:
  age = readers.parse_float(value)
  return OLDEST_AGE if age == ANONYMISED_AGE else age


def diagnostic_classes(path: Optional[str]) -> Optional[dict[str, str]]:
  """SCP code -> diagnostic superclass, from ``scp_statements.csv`` (None when absent)."""
  if path is None:
    return None
  table = pd.read_csv(path, index_col=0, dtype=str, keep_default_na=False)
  for column in ("diagnostic", "diagnostic_class"):
    if column not in table.columns:
      raise readers.SourceError(f"{path}: no column {column!r}")
  diagnostic = table[table["diagnostic"].map(lambda v: readers.parse_float(v) == 1.0)]
  return {code.strip(): cls.strip() for code, cls in diagnostic["diagnostic_class"].items()
          if cls.strip() in SUPERCLASSES}


def superclass_vector(scp_codes: str, classes: Optional[dict[str, str]]) -> np.ndarray:
  """Multi-hot int32 over ``SUPERCLASSES`` of a ``scp_codes`` cell ("{'NORM': 100.0, ...}")."""
  if classes is None:
    return np.full(len(SUPERCLASSES), -1, np.int32)
  try:
    codes = ast.literal_eval(scp_codes) if scp_codes.strip() else {}
  except (SyntaxError, ValueError):
    codes = None
  if not isinstance(codes, dict):
    raise ValueError(f"scp_codes {scp_codes!r} is not a dictionary")
  found = {classes[c] for c in codes if c in classes}
  return np.array([cls in found for cls in SUPERCLASSES], np.int32)


def fold_split(value: Any) -> Optional[str]:
  """The split of a ``strat_fold`` cell; None for anything but 1-10."""
  try:
    return FOLD_SPLITS.get(int(str(value).strip()))
  except ValueError:
    return None


def _int_id(value: Any, column: str) -> str:
  """PTB-XL ids are integers that pandas may have written as floats ('15709.0')."""
  number = readers.parse_float(value)
  if math.isnan(number) or number != int(number):
    raise ValueError(f"{column} {value!r} is not an integer id")
  return str(int(number))


class Ptbxl(readers.SourceBuilder):
  """PTB-XL at the config's rate, with age, sex and diagnostic superclasses."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download PTB-XL from https://physionet.org/content/ptb-xl/ (the zip, or `wget -r -N -c "
      "-np https://physionet.org/files/ptb-xl/1.0.3/`) and pass the folder that holds "
      "ptbxl_database.csv, scp_statements.csv and records500/ as --manual_dir.")
  DESCRIPTION = ("PTB-XL: 10-s 12-lead ECGs (Wagner et al., Sci. Data 2020) from the 500 Hz WFDB "
                 "records. Splits by the recommended patient-wise strat_fold: 1-8 train, 9 "
                 "validation, 10 test. No mPCWP (pcwp NaN); diagnostic_superclass is multi-hot "
                 "over " + "/".join(SUPERCLASSES) + " (-1: unknown).")
  HOMEPAGE = "https://physionet.org/content/ptb-xl/"
  CITATION = ("Wagner P, Strodthoff N, Bousseljot R-D, et al. PTB-XL, a large publicly available "
              "electrocardiography dataset. Scientific Data 7, 154 (2020).")

  def _info(self) -> tfds.core.DatasetInfo:
    info = super()._info()
    features = dict(info.features.items())
    features["diagnostic_superclass"] = tfds.features.Tensor(
        shape=(len(SUPERCLASSES),), dtype=np.int32,
        doc="multi-hot over " + ", ".join(SUPERCLASSES) + "; -1 unknown")
    metadata = info.metadata
    # The names of the multi-hot entries, for probe targets (reader.label_features).
    metadata["classes"] = {"diagnostic_superclass": list(SUPERCLASSES)}
    return tfds.core.DatasetInfo(builder=self, description=info.description,
                                 features=tfds.features.FeaturesDict(features),
                                 homepage=info.homepage, citation=info.citation,
                                 metadata=metadata)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
    database, root = self.source_table(dl_manager, "ptbxl_database.csv")
    classes = diagnostic_classes(readers.find_source(root, "scp_statements.csv", required=False))
    table = pd.read_csv(database, dtype=str, keep_default_na=False)
    missing = [c for c in ("ecg_id", "patient_id", "age", "sex", "strat_fold", "filename_hr",
                           "scp_codes") if c not in table.columns]
    if missing:
      raise readers.SourceError(f"{database}: missing column(s) {', '.join(missing)}")
    by_split: dict[str, list] = {split: [] for split in ("train", "validation", "test")}
    for row in table.to_dict("records"):
      split = fold_split(row["strat_fold"])
      if split is None:
        self.report.reject("unassigned", row["ecg_id"],
                           [f"strat_fold {row['strat_fold']!r} is not 1-10"])
        continue
      by_split[split].append(row)
    return {split: self._generate_examples(split, split_rows, root, classes)
            for split, split_rows in readers.nonempty_splits("ptbxl", by_split).items()}

  def _generate_examples(self, split: str, rows: list, root: str,
                         classes: Optional[dict[str, str]]) -> Iterator[tuple[str, dict]]:
    for row in rows:
      # ``example_from`` keeps the shared features only; the loaded record keeps ours.
      loaded: dict = {}

      def load(row=row, loaded=loaded) -> dict:
        loaded.update(self._load(row, root, classes))
        return loaded

      result = self.example_from(split, row["ecg_id"], load)
      if result is not None:
        key, example = result
        example["diagnostic_superclass"] = loaded["diagnostic_superclass"]
        yield key, example

  def _load(self, row: dict, root: str, classes: Optional[dict[str, str]]) -> dict:
    # Labels first: a bad cell is cheaper to find than a record to read.
    record = {"ecg_id": _int_id(row["ecg_id"], "ecg_id"),
              "patient_id": _int_id(row["patient_id"], "patient_id"),
              "age": convert_age(row["age"]), "sex": convert_sex(row["sex"]),
              "diagnostic_superclass": superclass_vector(row["scp_codes"], classes)}
    path = os.path.join(root, row["filename_hr"])
    raw = readers.read_wfdb(path)
    record["ecg"] = readers.record_for(raw, self.builder_config, path, expected_rate=SOURCE_RATE)
    return record
