"""Stored ECG records read back: the one decoder behind every reader of a TFDS split.

A record of ``tfds_common.ecg_features`` decodes to ``ecg`` (T, 12) int16 microvolts as stored,
``ecg_id`` / ``patient_id`` text, ``pcwp`` / ``age`` float32 (NaN unknown), ``sex`` int32 (-1
unknown) and ``sampling_rate`` (Hz of the stored ECG). ``Records`` gives a split's records by
index: the input pipeline reads through it, and ``read_labels`` (the label columns of a split, e.g.
for the cohort table) and ``first_ecg`` (an example page) read through it too, so every part of
the project sees the same values.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Optional

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from ssldml_jax.data import integrity, records

LABEL_FIELDS = ("ecg_id", "patient_id", "pcwp", "age", "sex")
# Stored features that are no label: the signal, its rate and the ids.
_NOT_LABELS = ("ecg", "sampling_rate", "ecg_id", "patient_id")


def parse_example(raw: bytes, shape: tuple[int, int]) -> dict:
  """Decodes one stored ``tf.train.Example`` of ``tfds_common.ecg_features``.

  About twice as fast as TFDS's generic NumPy decoder (``from_tfds``), which matters at thousands
  of ECGs per second on a small host; the tests check that both decoders agree.
  """
  feature = tf_example_pb2.Example.FromString(raw).features.feature
  return {
      "ecg": np.frombuffer(feature["ecg"].bytes_list.value[0], np.int16).reshape(shape),
      "ecg_id": feature["ecg_id"].bytes_list.value[0].decode("utf-8"),
      "patient_id": feature["patient_id"].bytes_list.value[0].decode("utf-8"),
      "pcwp": np.float32(feature["pcwp"].float_list.value[0]),
      "age": np.float32(feature["age"].float_list.value[0]),
      "sex": np.int32(feature["sex"].int64_list.value[0]),
      "sampling_rate": int(feature["sampling_rate"].int64_list.value[0]),
  }


def from_tfds(record: dict) -> dict:
  """A record decoded by TFDS itself, in the fields and types of ``parse_example``."""
  return {"ecg": record["ecg"], "ecg_id": _text(record["ecg_id"]),
          "patient_id": _text(record["patient_id"]), "pcwp": np.float32(record["pcwp"]),
          "age": np.float32(record["age"]), "sex": np.int32(record["sex"]),
          "sampling_rate": int(record["sampling_rate"])}


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def stored_format(builder: tfds.core.DatasetBuilder) -> tuple[int, int]:
  """(sampling rate, samples) of the records as stored."""
  num_samples = int(builder.info.features["ecg"].shape[0])
  rate = (builder.info.metadata or {}).get("sampling_rate")
  if rate is None:
    config = builder.builder_config
    rate = getattr(config, "sampling_rate", None)
  if rate is None:
    raise ValueError(f"{builder.info.full_name}: no sampling_rate in its metadata or config")
  return int(rate), num_samples


class Records:
  """A split's records, decoded, optionally a subset of their indices, with a path-free repr.

  grain stores ``repr(source)`` in the iterator state and checks it on restore, so the repr names
  the dataset and subset but not the directory: a checkpoint survives moving the data.
  """

  def __init__(self, builder: tfds.core.DatasetBuilder, split: str,
               indices: Optional[np.ndarray] = None, subset: str = "all"):
    """A damaged split raises ``integrity.DamagedDataError`` here."""
    self._name, self._split = builder.info.full_name, split
    self._indices, self._subset = indices, subset
    integrity.check_dataset(builder, split)
    self._rate, _ = stored_format(builder)
    ecg = builder.info.features["ecg"]
    if getattr(ecg, "_encoding", None) == tfds.features.Encoding.BYTES:
      self._source = builder.as_data_source(
          split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
      self._decode = functools.partial(parse_example, shape=tuple(ecg.shape))
    else:  # A dataset written by another tool: TFDS's generic (slower) decoder.
      self._source = builder.as_data_source(split)
      self._decode = from_tfds
    self._builder = builder

  def subset(self, indices: np.ndarray, name: str) -> "Records":
    """The records ``indices`` (of the whole split, not of this subset) named ``name``: a copy
    that shares this one's open, checked source."""
    out = copy.copy(self)
    out._indices, out._subset = indices, name
    return out

  def __len__(self) -> int:
    return len(self._source) if self._indices is None else len(self._indices)

  def __getitem__(self, index: int) -> dict:
    if self._indices is not None:
      index = int(self._indices[index])
    try:
      record = self._decode(self._source[index])
    except Exception as e:  # pylint: disable=broad-except  # Any failure here is damage.
      raise integrity.damaged_record(self._builder, self._split, index, e) from None
    if record["sampling_rate"] != self._rate:
      raise integrity.damaged_record(
          self._builder, self._split, index, f"({record['ecg_id']}) is at "
          f"{record['sampling_rate']} Hz, but the dataset's rate is {self._rate} Hz")
    return record

  def __repr__(self) -> str:
    return f"Records({self._name}, split={self._split}, subset={self._subset}, n={len(self)})"


def read_labels(builder: tfds.core.DatasetBuilder, split: str) -> dict[str, np.ndarray]:
  """``LABEL_FIELDS`` of every record of ``split`` in record order: ids as unicode arrays,
  ``pcwp`` / ``age`` float32 (NaN unknown), ``sex`` int32 (-1 unknown)."""
  source = Records(builder, split)
  # Columns built while reading: a decoded record's ECG keeps its raw bytes alive.
  columns: dict[str, list] = {key: [] for key in LABEL_FIELDS}
  for i in range(len(source)):
    record = source[i]
    for key, column in columns.items():
      column.append(record[key])
  dtypes = {"ecg_id": str, "patient_id": str, "pcwp": np.float32, "age": np.float32,
            "sex": np.int32}
  return {key: np.asarray(columns[key], dtypes[key]) for key in LABEL_FIELDS}


def label_features(builder: tfds.core.DatasetBuilder) -> dict[str, tuple]:
  """The stored features that can hold labels (numbers, one or a vector per ECG) by name:
  ``(shape, numpy dtype, entry names)``; the names of a vector's entries come from the
  dataset's ``metadata['classes'][name]`` when it has them, else ``()``."""
  classes = dict((builder.info.metadata or {}).get("classes", {}) or {})
  out = {}
  for name, feature in builder.info.features.items():
    shape, dtype = tuple(getattr(feature, "shape", (None,))), getattr(feature, "np_dtype", None)
    if (name in _NOT_LABELS or dtype is None or len(shape) > 1 or None in shape
        or not (np.issubdtype(dtype, np.number) or dtype == np.bool_)):
      continue
    out[name] = (shape, np.dtype(dtype), tuple(classes.get(name, ())))
  return out


def read_features(builder: tfds.core.DatasetBuilder, split: str,
                  names: tuple[str, ...]) -> dict[str, np.ndarray]:
  """``ecg_id`` and the label features ``names`` of every record of ``split``, in record order.

  Decodes those fields only (not the ECG), from the stored ``tf.train.Example`` s.
  """
  features = label_features(builder)
  missing = [n for n in names if n not in features]
  if missing:
    raise KeyError(f"{builder.info.full_name} has no label feature {', '.join(missing)} (has "
                   f"{', '.join(sorted(features))})")
  source = builder.as_data_source(split,
                                  deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  columns: dict[str, list] = {n: [] for n in ("ecg_id",) + tuple(names)}
  for i in range(len(source)):
    feature = tf_example_pb2.Example.FromString(source[i]).features.feature
    columns["ecg_id"].append(feature["ecg_id"].bytes_list.value[0].decode("utf-8"))
    for n in names:
      stored = feature[n]
      columns[n].append(stored.float_list.value if stored.HasField("float_list")
                        else stored.int64_list.value)
  out = {"ecg_id": np.asarray(columns["ecg_id"], str)}
  for n in names:
    shape, dtype, _ = features[n]
    out[n] = np.asarray(columns[n], np.float64 if dtype.kind == "f" else np.int64).astype(
        dtype).reshape((len(source),) + shape)
  return out


def first_ecg(builder: tfds.core.DatasetBuilder, split: str) -> Optional[dict]:
  """The first record of ``split`` as ``ecg_mv`` (T, 12) float32 millivolts, ``ecg_id`` and
  ``rate`` (Hz); None for an empty split."""
  source = Records(builder, split)
  if not len(source):
    return None
  record = source[0]
  return {"ecg_mv": records.int16_uv_to_mv(record["ecg"]), "ecg_id": record["ecg_id"],
          "rate": record["sampling_rate"]}
