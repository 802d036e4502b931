"""ECG files and stored splits as the input of ``predict``: what a path holds, and each ECG made
into a record exactly as a dataset build makes one.

A path (``list_inputs``) is

- a WFDB record: its ``.hea`` file, or the record path without extension;
- an HDF5 file (``.h5``, ``.hdf5``): one 2-D array, or the per-lead layout ``ecg/<date>/<lead>``
  of ``readers.read_hdf5``, where every recording of the file is one ECG (id ``<file>/<date>``);
- a NumPy file (``.npy``): one (T, 12) or (12, T) array in millivolts, leads in ``leads`` order;
- a folder: every such file below it, in sorted order (a WFDB record's signal files go with its
  header; other files are counted and named in one line, never read);
- ``dataset:NAME/CONFIG:SPLIT`` (e.g. ``dataset:ecg_synth/tiny:test``): every record of a built
  split in the data directory, its id the record's ``ecg_id``.

An ECG's id is its path relative to the folder given (or its file name) without extension. Files
carry their sampling rate (WFDB header, HDF5 attribute); a ``.npy`` file, or an HDF5 file that
does not say, takes ``default_rate``, and without one it is an error (unknown sampling rate).

``as_record`` turns one recording into a stored record, as a build does (``readers.to_record``:
leads by name into ``records.LEADS`` order, resampled to the stored rate, cut to its length; then
``records.validate_ecg`` and int16 microvolts); ``records.model_input`` then gives the encoder's
input, as the input pipeline does. Every problem is a ``BadRecordError`` naming the file.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable, Optional, Sequence

import numpy as np

from ssldml_jax.data import readers, records
from ssldml_jax.data.records import BadRecordError

DATASET_PREFIX = "dataset:"
WFDB_EXT, HDF5_EXTS, NPY_EXT = ".hea", (".h5", ".hdf5"), ".npy"
EXTENSIONS = (WFDB_EXT,) + HDF5_EXTS + (NPY_EXT,)


@dataclasses.dataclass(frozen=True)
class RecordFormat:
  """The records an encoder was fit on: ``num_samples`` at ``stored_rate`` Hz (the window
  ``crop`` of a longer recording, band-passed at build time by ``build_bandpass``), fed to the
  model at ``model_rate`` Hz, band-passed by ``bandpass``."""
  stored_rate: int
  num_samples: int
  model_rate: int
  crop: str = "first"
  build_bandpass: Optional[tuple] = None
  bandpass: Optional[tuple] = None
  leads: tuple = records.LEADS


@dataclasses.dataclass(frozen=True)
class Item:
  """One ECG of an input: ``ecg_id``, the file or split it comes from, and how to read it."""
  ecg_id: str
  source: str
  read: Callable[[], readers.RawEcg]


def as_record(raw: readers.RawEcg, fmt: RecordFormat, where: str) -> np.ndarray:
  """``(num_samples, 12)`` int16 microvolts, as a build would store ``raw`` (module doc)."""
  ecg = readers.to_record(raw, rate=fmt.stored_rate, num_samples=fmt.num_samples, crop=fmt.crop,
                          bandpass=fmt.build_bandpass, where=where)
  problems = records.validate_ecg(ecg, expected_length=fmt.num_samples)
  if problems:
    raise BadRecordError(f"{where}: {'; '.join(problems)}")
  return records.mv_to_int16_uv(ecg)[0]


def list_inputs(paths: Sequence[str], *, default_rate: float = math.nan,
                leads: Sequence[str] = records.LEADS, data_dir: Optional[str] = None,
                log: Callable[[str], None] = print) -> list[Item]:
  """Every ECG of ``paths`` (module docstring), in order. A path that cannot be listed gives
  one item whose ``read`` raises the reason, so it is reported like any bad file."""
  items: list[Item] = []
  for path in paths:
    if path.startswith(DATASET_PREFIX):
      items += _dataset_items(path, data_dir)
    elif os.path.isdir(path):
      items += _folder_items(path, default_rate, leads, log)
    else:
      items += _file_items(path, os.path.basename(path), default_rate, leads)
  return items


def _failing(ecg_id: str, source: str, reason: str) -> Item:
  def read() -> readers.RawEcg:
    raise BadRecordError(reason)
  return Item(ecg_id, source, read)


def _strip(name: str) -> str:
  for ext in EXTENSIONS:
    if name.lower().endswith(ext):
      return name[:-len(ext)]
  return name


def _file_items(path: str, name: str, rate: float, leads: Sequence[str]) -> list[Item]:
  lower = path.lower()
  ecg_id = _strip(name)
  if lower.endswith(WFDB_EXT) or (not os.path.exists(path)
                                  and os.path.isfile(path + WFDB_EXT)):
    record = path[:-len(WFDB_EXT)] if lower.endswith(WFDB_EXT) else path
    return [Item(ecg_id, record, lambda: readers.read_wfdb(record))]
  if not os.path.exists(path):
    return [_failing(ecg_id, path, f"{path}: no such file or folder")]
  if lower.endswith(NPY_EXT):
    return [Item(ecg_id, path, lambda: readers.read_npy(path, rate=rate, leads=leads))]
  if lower.endswith(HDF5_EXTS):
    return _hdf5_items(path, ecg_id, rate, leads)
  return [_failing(ecg_id, path, f"{path}: not an ECG file ({', '.join(EXTENSIONS)} or a "
                                 "folder of them)")]


def _hdf5_items(path: str, ecg_id: str, rate: float, leads: Sequence[str]) -> list[Item]:
  """One item per recording of an ``ecg/<date>/<lead>`` file, else one for the file."""
  import h5py  # Only when an HDF5 file is read.

  try:
    with h5py.File(path, "r") as f:
      group = f.get("ecg")
      keys = sorted(group.keys()) if isinstance(group, h5py.Group) else []
  except Exception:  # pylint: disable=broad-except  # read_hdf5 says why, as for any bad file.
    keys = []

  def read(key: Optional[str]) -> readers.RawEcg:
    raw = readers.read_hdf5(path, key=key, leads=leads)
    # The default rate is for files that do not say theirs; a file's own attribute wins.
    return raw if math.isfinite(raw.rate) else dataclasses.replace(raw, rate=rate)

  if len(keys) < 2:
    return [Item(ecg_id, path, lambda: read(None))]
  return [Item(f"{ecg_id}/{k}", path, (lambda k=k: read(f"ecg/{k}"))) for k in keys]


def _folder_items(folder: str, rate: float, leads: Sequence[str],
                  log: Callable[[str], None]) -> list[Item]:
  items, ignored = [], []
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    headers = {n[:-len(WFDB_EXT)] for n in files if n.lower().endswith(WFDB_EXT)}
    for name in sorted(files):
      path = os.path.join(root, name)
      relative = os.path.relpath(path, folder)
      if name.lower().endswith(EXTENSIONS):
        items += _file_items(path, relative, rate, leads)
      elif name.split(".")[0] not in headers:  # not a WFDB record's signal or annotation file
        ignored.append(relative)
  if ignored:
    log(f"{folder}: {len(ignored)} file(s) of other types not read (e.g. {ignored[0]}); ECG "
        f"files are {', '.join(EXTENSIONS)}")
  if not items:
    log(f"{folder}: no ECG file found")
  return items


def _dataset_items(spec: str, data_dir: Optional[str]) -> list[Item]:
  """The records of ``dataset:NAME/CONFIG:SPLIT`` (module docstring)."""
  from ssldml_jax.data import build, reader  # TFDS only for a dataset input.

  name, _, split = spec[len(DATASET_PREFIX):].rpartition(":")
  if not name or not split:
    return [_failing(spec, spec, f"{spec}: write a dataset split as "
                                 f"{DATASET_PREFIX}NAME/CONFIG:SPLIT, e.g. "
                                 f"{DATASET_PREFIX}ecg_synth/tiny:test")]
  try:
    builder = build.ensure_built(name, data_dir, build_if_missing=False)
  except (build.DatasetError, BadRecordError) as e:
    return [_failing(spec, spec, f"{spec}: {e}")]
  if split not in builder.info.splits:
    return [_failing(spec, spec, f"{spec}: {name} has no split {split!r} (has "
                                 f"{', '.join(sorted(builder.info.splits))})")]
  ids = reader.read_features(builder, split, ())["ecg_id"]
  source = reader.Records(builder, split)

  def read(i: int) -> readers.RawEcg:
    record = source[i]
    return readers.RawEcg(record["ecg"].astype(np.float64) / 1000.0, records.LEADS,
                          float(record["sampling_rate"]))

  return [Item(str(ecg_id), spec, (lambda i=i: read(i))) for i, ecg_id in enumerate(ids)]
