"""``cohort``: a hospital's own ECGs and catheterisation labels, described by CSV files.

The manual dir holds a **manifest** (one row per ECG) and, optionally, a **labels** table (one row
per right-heart catheterisation); paths in them are relative to the manual dir.

Manifest columns (names can be remapped, see ``CohortConfig.columns``):
  ``path`` (required) WFDB record (``.hea``/``.dat``/no extension), HDF5 (``.h5``/``.hdf5``) or
  ``.npy`` file; ``patient_id`` (required); ``ecg_time`` (ISO date-time; required to join labels,
  and picks the recording in an HDF5 file with several); optional ``ecg_id`` (default: the
  path), ``age``, ``sex`` (F/M, female/male or 0/1 = female/male), ``sampling_rate`` (Hz; for files
  that do not carry one), ``hdf5_key`` (the group or dataset of the recording), ``pcwp`` (mmHg,
  takes precedence over the labels table) and ``split``.
Labels columns: ``patient_id``, ``cath_time``, ``pcwp`` (``CohortConfig.pcwp_column``); other
  pressures may be there and are ignored.

Joining: an ECG takes the mPCWP of its patient's catheterisation nearest in time, if that is at
most ``max_gap_hours`` away (either side). Ties go to the earlier catheterisation (the one
measured before the ECG when they straddle it), then to the earlier row of the labels file.

Files: leads are matched by name, case-insensitively (WFDB signal names; HDF5 dataset names of
the ``ecg/<date>/<lead>`` layout or a ``leads`` attribute; ``CohortConfig.leads`` for ``.npy``);
a missing lead is a bad record naming the file. The rate is the file's (WFDB header, HDF5
``sampling_rate``/``fs`` attribute), else the manifest's, else ``CohortConfig.source_rate``; a
manifest rate that contradicts the file is a bad record (wrong rate).

Splits: the manifest's ``split`` column if present; otherwise, by patient, patients with no
labeled ECG go to ``unlabeled`` (the pretraining pool, as in the paper; ``unlabeled_split``) and
the others to ``train``/``validation``/``test`` by a hash of the patient id
(``readers.patient_split``, ``split_fractions``).

Settings: the ``CohortConfig`` fields below, from a builder config in Python, or from a
``cohort.json`` object in the manual dir, e.g.
``{"manifest": "export/ecgs.csv", "labels": "export/caths.csv", "max_gap_hours": 48}``.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import math
import operator
import os
import re
from typing import Iterator, Optional

import pandas as pd
import tensorflow_datasets as tfds

from ssldml_jax.data import readers, records

SETTINGS_FILE = "cohort.json"
MANIFEST_COLUMNS = ("path", "patient_id", "ecg_time", "ecg_id", "age", "sex", "sampling_rate",
                    "hdf5_key", "pcwp", "split")
LABEL_COLUMNS = ("patient_id", "cath_time")
HDF5_EXTENSIONS = (".h5", ".hdf5", ".hdf")
# Settings fixed by the builder config name (they shape the stored records), not by cohort.json.
_NOT_SETTINGS = ("name", "version", "release_notes", "supported_versions", "description", "tags",
                 "sampling_rate", "duration_s")


_NUMBER = (int, float)
# The JSON types each cohort.json key takes.
_SETTING_KINDS = {"manifest": str, "labels": (str, type(None)), "max_gap_hours": _NUMBER,
                  "pcwp_column": str, "source_rate": _NUMBER + (type(None),), "units": str,
                  "leads": list, "columns": dict, "split_fractions": list, "unlabeled_split": bool,
                  "crop": str, "bandpass": (list, type(None))}


@dataclasses.dataclass(eq=False)
class CohortConfig(readers.SourceConfig):
  """Where the cohort's tables are and how to read them (see the module docstring)."""
  manifest: str = "manifest.csv"
  labels: Optional[str] = "labels.csv"  # None: no labels table; the default name may be absent.
  max_gap_hours: float = 24.0
  pcwp_column: str = "pcwp"
  source_rate: Optional[float] = None   # Hz of files whose rate neither they nor the manifest give.
  units: str = "mV"                     # of .npy / HDF5 arrays without a ``units`` attribute.
  leads: tuple = records.LEADS          # column order of .npy / HDF5 2-D arrays without names.
  columns: dict = dataclasses.field(default_factory=dict)  # our column name -> the file's.
  split_fractions: tuple = (("train", 0.8), ("validation", 0.1), ("test", 0.1))
  unlabeled_split: bool = True


def load_settings(config: CohortConfig, manual_dir: str) -> CohortConfig:
  """``config`` updated by ``manual_dir/cohort.json`` when it exists; bad keys name the file."""
  path = os.path.join(manual_dir, SETTINGS_FILE)
  if not os.path.isfile(path):
    return config
  try:
    with open(path) as f:
      settings = json.load(f)
  except (OSError, ValueError) as e:
    raise readers.SourceError(f"{path}: not a JSON object ({e})") from None
  if not isinstance(settings, dict):
    raise readers.SourceError(f"{path}: not a JSON object")
  allowed = sorted(f.name for f in dataclasses.fields(CohortConfig) if f.name not in _NOT_SETTINGS)
  for key in settings:
    if key in ("sampling_rate", "duration_s"):
      raise readers.SourceError(f"{path}: {key!r} is set by the config name (cohort/default: "
                                f"250 Hz, cohort/500hz: 500 Hz), not here")
    if key not in allowed:
      raise readers.SourceError(f"{path}: unknown key {key!r} (allowed: {', '.join(allowed)})")
    kinds = _SETTING_KINDS[key]
    if not isinstance(settings[key], kinds) or isinstance(settings[key], bool) != (kinds == bool):
      names = " or ".join(k.__name__.replace("NoneType", "null") for k in
                          (kinds if isinstance(kinds, tuple) else (kinds,)))
      raise readers.SourceError(f"{path}: {key!r} must be {names}, got {settings[key]!r}")
  for key in ("leads", "split_fractions", "bandpass"):
    if isinstance(settings.get(key), list):
      settings[key] = tuple(tuple(v) if isinstance(v, list) else v for v in settings[key])
  config = dataclasses.replace(config, **settings)
  try:
    check_config(config, path)
  except (TypeError, ValueError) as e:  # e.g. split_fractions not a list of [name, fraction].
    if isinstance(e, records.BadRecordError):
      raise
    raise readers.SourceError(f"{path}: malformed setting ({e})") from None
  return config


def check_config(config: CohortConfig, where: str) -> None:
  fractions = dict(config.split_fractions)
  if not fractions or any(f < 0 for f in fractions.values()) or \
      not math.isclose(sum(fractions.values()), 1.0):
    raise readers.SourceError(f"{where}: split_fractions {config.split_fractions!r} must be "
                              f"non-negative and sum to 1")
  if not config.max_gap_hours >= 0:
    raise readers.SourceError(f"{where}: max_gap_hours must be >= 0")
  if config.crop not in readers.CROPS:
    raise readers.SourceError(f"{where}: crop {config.crop!r} must be one of "
                              f"{', '.join(readers.CROPS)}")
  readers.mv_per_unit(config.units, f"{where}: units")
  if config.bandpass is not None and not (
      len(config.bandpass) == 2
      and 0 < config.bandpass[0] < config.bandpass[1] < config.sampling_rate / 2):
    raise readers.SourceError(f"{where}: bandpass {config.bandpass!r} must be (low_hz, high_hz) "
                              f"inside (0, {config.sampling_rate / 2:g}) Hz")


def read_table(path: str, required: tuple, columns: dict, what: str) -> list[dict]:
  """Rows of a CSV as dicts of stripped strings, with the user's column names mapped to ours."""
  table = pd.read_csv(path, dtype=str, keep_default_na=False)
  table = table.rename(columns={theirs: ours for ours, theirs in columns.items()})
  missing = [c for c in required if c not in table.columns]
  if missing:
    raise readers.SourceError(f"{path}: {what} lacks column(s) {', '.join(missing)} "
                              f"(has {', '.join(table.columns)}; map names with 'columns')")
  return [{k: str(v).strip() for k, v in row.items()} for row in table.to_dict("records")]


@dataclasses.dataclass(frozen=True)
class Cath:
  """One catheterisation of the labels table (``row``: its line number in the file)."""
  time: datetime.datetime
  pcwp: float
  row: int


def nearest_cath(caths: list[Cath], when: datetime.datetime,
                 max_gap_hours: float) -> Optional[Cath]:
  """The catheterisation nearest ``when`` within the gap; ties: earlier time, then earlier row."""
  best = None
  for cath in caths:
    gap = abs((cath.time - when).total_seconds()) / 3600.0
    if gap <= max_gap_hours:
      key = (gap, cath.time, cath.row)
      if best is None or key < best[0]:
        best = (key, cath)
  return None if best is None else best[1]


class Cohort(readers.SourceBuilder):
  """A hospital cohort from a manifest and a labels table (see the module docstring)."""

  BUILDER_CONFIGS = readers.rate_configs(CohortConfig)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Pass the folder that holds manifest.csv (and labels.csv, the ECG files, and optionally "
      "cohort.json) as --manual_dir; see the docstring of ssldml_jax/data/cohort.py.")
  DESCRIPTION = ("A hospital cohort: ECGs listed in a CSV manifest (WFDB, HDF5 or .npy files), "
                 "mPCWP joined from a catheterisation table by patient and nearest time. "
                 "Patient-disjoint splits; patients without a labeled ECG form 'unlabeled'.")

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
    manual_dir = self.source_dir(dl_manager)
    config = load_settings(self.builder_config, manual_dir)
    manifest_path = os.path.join(manual_dir, config.manifest)
    if not os.path.isfile(manifest_path):
      raise readers.SourceError(f"manifest {manifest_path} not found (set 'manifest' in "
                                f"{os.path.join(manual_dir, SETTINGS_FILE)})")
    rows = read_table(manifest_path, ("path", "patient_id"), config.columns, "the manifest")
    caths = self._read_labels(manual_dir, config)
    path_counts = collections.Counter(row["path"] for row in rows)
    items = [self._prepare_row(i, row, path_counts, caths, config) for i, row in enumerate(rows)]
    items = [item for item in items if item is not None]
    by_split = self._assign_splits(items, config, has_split=bool(rows) and "split" in rows[0])
    return {split: self._generate_examples(split, split_items, manual_dir, config)
            for split, split_items in readers.nonempty_splits("cohort", by_split).items()}

  def _read_labels(self, manual_dir: str, config: CohortConfig) -> Optional[dict]:
    """patient_id -> catheterisations; None without a labels table."""
    if config.labels is None:
      return None
    path = os.path.join(manual_dir, config.labels)
    if not os.path.isfile(path):
      if config.labels == CohortConfig.labels:
        return None  # The default name, not there: an unlabeled cohort.
      raise readers.SourceError(f"labels table {path} not found")
    rows = read_table(path, LABEL_COLUMNS + (config.pcwp_column,), config.columns,
                      "the labels table")
    caths: dict[str, list[Cath]] = {}
    for number, row in enumerate(rows, start=2):  # Row 1 is the header.
      problems = []
      when = readers.parse_datetime(row["cath_time"])
      if when is None:
        problems.append(f"unparsable cath_time {row['cath_time']!r}")
      try:
        pcwp = readers.parse_float(row[config.pcwp_column])
        if math.isnan(pcwp):
          problems.append(f"no {config.pcwp_column}")
      except ValueError:
        problems.append(f"unparsable {config.pcwp_column} {row[config.pcwp_column]!r}")
      if not row["patient_id"]:
        problems.append("empty patient_id")
      if problems:
        self.report.reject("labels", f"{config.labels} row {number}", problems)
      else:
        caths.setdefault(row["patient_id"], []).append(Cath(when, pcwp, number))
    return caths

  def _prepare_row(self, index: int, row: dict, path_counts: dict, caths: Optional[dict],
                   config: CohortConfig) -> Optional[dict]:
    """The row with its ``ecg_id`` and joined ``pcwp``; None (reported) if it cannot be joined."""
    ecg_id = row.get("ecg_id") or row["path"]
    if not row.get("ecg_id") and path_counts[row["path"]] > 1:
      ecg_id = f"{row['path']}@{row.get('ecg_time', '')}"  # Several recordings in one file.
    item = dict(row, ecg_id=ecg_id, manifest_row=index + 2)
    try:
      pcwp = readers.parse_float(row.get("pcwp", ""))
    except ValueError:
      self.report.reject("unassigned", ecg_id, [f"unparsable pcwp {row['pcwp']!r}"])
      return None
    if math.isnan(pcwp) and caths is not None:
      when = readers.parse_datetime(row.get("ecg_time", ""))
      if when is None:
        self.report.reject("unassigned", ecg_id, [
            f"ecg_time {row.get('ecg_time', '')!r} is not a date-time, so no label can be joined"])
        return None
      cath = nearest_cath(caths.get(row["patient_id"], []), when, config.max_gap_hours)
      pcwp = cath.pcwp if cath is not None else math.nan
    item["pcwp"] = pcwp
    return item

  def _assign_splits(self, items: list, config: CohortConfig, has_split: bool) -> dict:
    fractions = dict(config.split_fractions)
    labeled = {item["patient_id"] for item in items if not math.isnan(item["pcwp"])}
    by_split: dict[str, list] = {}
    if not has_split:
      names = (["unlabeled"] if config.unlabeled_split else []) + list(fractions)
      by_split = {name: [] for name in names}
    for item in items:
      if has_split:
        split = item["split"]
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", split):
          self.report.reject("unassigned", item["ecg_id"], [f"split {split!r} is not a name"])
          continue
      elif config.unlabeled_split and item["patient_id"] not in labeled:
        split = "unlabeled"
      else:
        split = readers.patient_split(item["patient_id"], fractions)
      by_split.setdefault(split, []).append(item)
    return by_split

  def _generate_examples(self, split: str, items: list, manual_dir: str,
                         config: CohortConfig) -> Iterator[tuple[str, dict]]:
    yield from self.examples_from(split, items, operator.itemgetter("ecg_id"),
                                  lambda item: self._load(item, manual_dir, config))

  def _load(self, item: dict, manual_dir: str, config: CohortConfig) -> dict:
    try:  # Labels first: a bad cell is cheaper to find than a record to read.
      age = readers.parse_float(item.get("age", ""))
      sex = readers.parse_sex(item.get("sex", ""))
    except ValueError as e:
      raise ValueError(f"manifest row {item['manifest_row']}: {e}") from None
    path = os.path.join(manual_dir, item["path"])
    raw = read_file(path, item, config)
    return {"ecg_id": item["ecg_id"], "patient_id": item["patient_id"], "age": age, "sex": sex,
            "pcwp": item["pcwp"], "ecg": readers.record_for(raw, config, path)}


def read_file(path: str, item: dict, config: CohortConfig) -> readers.RawEcg:
  """The recording of one manifest row, with the rate resolved as the module docstring says."""
  try:
    rate = readers.parse_float(item.get("sampling_rate", ""))
  except ValueError:
    raise records.BadRecordError(f"{path}: manifest sampling_rate "
                                 f"{item['sampling_rate']!r} is not a number") from None
  extension = os.path.splitext(path)[1].lower()
  if extension == ".npy":
    raw = readers.read_npy(path, rate=rate, leads=config.leads, units=config.units)
  elif extension in HDF5_EXTENSIONS:
    raw = readers.read_hdf5(path, key=item.get("hdf5_key") or None,
                            date=item.get("ecg_time") or None, rate=rate, leads=config.leads,
                            units=config.units)
  else:
    record_path = path[:-len(extension)] if extension in (".hea", ".dat") else path
    raw = readers.read_wfdb(record_path)
    if not math.isnan(rate) and not math.isclose(rate, raw.rate):
      raise records.BadRecordError(f"{record_path}: header says {raw.rate:g} Hz but the manifest "
                                   f"says {rate:g} Hz (wrong rate)")
  if math.isnan(raw.rate) and config.source_rate:
    raw = dataclasses.replace(raw, rate=float(config.source_rate))
  return raw
