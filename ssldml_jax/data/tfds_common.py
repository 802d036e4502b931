"""What every ECG dataset builder shares: TFDS features, config, checked examples, build report.

A builder subclasses ``EcgBuilder``, gives its ``BUILDER_CONFIGS`` (``EcgBuilderConfig`` or a
subclass, which fix the sampling rate and duration of the stored records) and a ``DESCRIPTION``,
and writes ``_split_generators`` / ``_generate_examples`` that turn its source records into
examples with ``make_example`` (a record already in memory) or ``example_from`` (a record that
still has to be read and may fail; ``examples_from`` for a list of them). Both validate the
record, convert it to int16 microvolts and keep the ``BuildReport``, so no builder can silently
drop or silently keep a bad record.

Builds are atomic: TFDS writes into ``<config dir>/incomplete.*`` and renames it to the version
directory only after every split and ``dataset_info.json`` are written; the build report is
written inside that temporary directory too, so ``build_report.json`` exists exactly when the
dataset does. An exception removes the temporary directory; a killed process can leave one
behind, which nothing reads (``is_prepared`` looks only at the version directory) and the next
build ignores.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import json
import math
import os
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module
from tensorflow_datasets.core import file_adapters

from ssldml_jax import atomic
from ssldml_jax.data import records

REPORT_FILENAME = "build_report.json"
UNITS = "int16 microvolts (divide by 1000 for millivolts)"
# One record per chunk (random access) compressed with zstd level 1. TFDS's own array_record
# writer leaves the compression at brotli, which on ECG records is no smaller but writes about
# 7x and reads about 3x slower; readers need no option, the chunks say how they are compressed.
ARRAY_RECORD_OPTIONS = "group_size:1,zstd:1"


def ecg_features(num_samples: int) -> tfds.features.FeaturesDict:
  """The features of every ECG dataset: one 12-lead record with its ids and labels.

  The signal is stored as raw int16 bytes rather than TFDS's default integer list: records are
  about 3x smaller and both writing and reading are an order of magnitude faster.
  """
  return tfds.features.FeaturesDict({
      "ecg": tfds.features.Tensor(shape=(num_samples, records.NUM_LEADS), dtype=np.int16,
                                  encoding=tfds.features.Encoding.BYTES,
                                  doc=f"time-major (T, 12), leads {', '.join(records.LEADS)}; "
                                      + UNITS),
      "ecg_id": tfds.features.Text(doc="unique id of the recording"),
      "patient_id": tfds.features.Text(doc="splits never share a patient"),
      "age": tfds.features.Scalar(dtype=np.float32, doc="years; NaN unknown"),
      "sex": tfds.features.Scalar(dtype=np.int32, doc="0 female, 1 male, -1 unknown"),
      "pcwp": tfds.features.Scalar(dtype=np.float32,
                                   doc="mean PCWP, mmHg; NaN unknown or unlabeled"),
      "sampling_rate": tfds.features.Scalar(dtype=np.int32, doc="Hz"),
  })


@dataclasses.dataclass(eq=False)
class EcgBuilderConfig(tfds.core.BuilderConfig):
  """A named variant of a dataset; every record of it has ``num_samples`` samples at this rate."""
  sampling_rate: int = 250
  duration_s: float = 10.0

  @property
  def num_samples(self) -> int:
    return int(round(self.sampling_rate * self.duration_s))


class EcgBuilder(tfds.core.GeneratorBasedBuilder, abc.ABC):
  """Base of every ECG builder: array_record files, per-record checks and a build report.

  ``strict=True`` turns the first bad record into a ``records.BadRecordError`` (the build then
  leaves nothing behind); otherwise bad records are reported, counted and skipped.
  """

  DESCRIPTION = ""
  HOMEPAGE = ""
  CITATION = ""

  def __init__(self, *, strict: bool = False, **kwargs: Any):
    # array_record is the only format grain can read without TensorFlow.
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)
    self.strict = strict
    self.report = self._new_report()

  # --- DatasetInfo -------------------------------------------------------------------------

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f"{self.DESCRIPTION}\n\nLeads (time-major, in this order): "
                     f"{', '.join(records.LEADS)}. Signal: {UNITS}, {config.sampling_rate} Hz, "
                     f"{config.num_samples} samples."),
        features=ecg_features(config.num_samples),
        homepage=self.HOMEPAGE or None,
        citation=self.CITATION or None,
        metadata=tfds.core.MetadataDict(leads=list(records.LEADS), units=UNITS,
                                        sampling_rate=int(config.sampling_rate),
                                        num_samples=int(config.num_samples)),
    )

  # --- Per-record path -----------------------------------------------------------------------

  def make_example(self, split: str, record: Mapping[str, Any]) -> Optional[tuple[str, dict]]:
    """Checks one record and returns ``(key, example)``, or ``None`` after reporting it.

    ``record`` holds ``ecg`` (float millivolts, ``(T, 12)`` in ``records.LEADS`` order),
    ``ecg_id``, ``patient_id`` and optionally ``age``, ``sex``, ``pcwp`` (NaN / -1 unknown) and
    ``sampling_rate`` (Hz; a record at another rate than the config's is resampled to it).
    """
    record_id = str(record.get("ecg_id", "")) or "<missing ecg_id>"
    try:
      example, problems = self._checked_example(split, record)
    except KeyError as e:
      example, problems = None, [f"missing field {e}"]
    except (TypeError, ValueError) as e:  # A field that is not a number / array at all.
      example, problems = None, [f"unreadable field ({e})"]
    if problems:
      self.report.reject(split, record_id, problems)
      return None
    self._seen_ids.add(example["ecg_id"])
    self._patient_split.setdefault(example["patient_id"], split)
    self.report.count(split)
    return example["ecg_id"], example

  def example_from(self, split: str, record_id: str,
                   load: Callable[[], Mapping[str, Any]]) -> Optional[tuple[str, dict]]:
    """``make_example(split, load())``, where a failure to read the record is reported as bad."""
    try:
      record = load()
    except (records.BadRecordError, OSError, ValueError, KeyError) as e:
      self.report.reject(split, record_id, [f"cannot read: {e}"])
      return None
    return self.make_example(split, record)

  def examples_from(self, split: str, items: Iterable[Any], record_id: Callable[[Any], str],
                    load: Callable[[Any], Mapping[str, Any]]) -> Iterator[tuple[str, dict]]:
    """``example_from`` of every item: ``(key, example)`` of the good ones, the others reported.

    ``record_id(item)`` names the record in the report; ``load(item)`` reads it.
    """
    for item in items:
      result = self.example_from(split, record_id(item), lambda: load(item))
      if result is not None:
        yield result

  def _checked_example(self, split: str, record: Mapping[str, Any]) -> tuple[dict, list[str]]:
    config = self.builder_config
    ecg_id = str(record.get("ecg_id", ""))
    patient_id = str(record.get("patient_id", ""))
    problems = []
    if not ecg_id:
      problems.append("empty ecg_id")
    elif ecg_id in self._seen_ids:
      problems.append("duplicate ecg_id")
    if not patient_id:
      problems.append("empty patient_id")
    elif self._patient_split.get(patient_id, split) != split:
      problems.append(f"patient {patient_id} is already in split "
                      f"{self._patient_split[patient_id]!r} (splits must be patient-disjoint)")
    ecg = np.asarray(record["ecg"], np.float64)
    rate = float(record.get("sampling_rate", config.sampling_rate))
    if not (math.isfinite(rate) and rate > 0):
      problems.append(f"sampling rate {rate} Hz is unknown or invalid")
    elif ecg.ndim == 2 and ecg.shape[0] and rate != config.sampling_rate:
      ecg = records.resample(ecg, rate, config.sampling_rate)
    problems += records.validate_ecg(ecg, expected_length=config.num_samples)
    age = float(record.get("age", math.nan))
    sex = int(record.get("sex", records.SEX_UNKNOWN))
    pcwp = float(record.get("pcwp", math.nan))
    problems += records.validate_labels(age=age, sex=sex, pcwp=pcwp)
    if problems:
      return {}, problems
    ecg_uv, clipped = records.mv_to_int16_uv(ecg)
    self.report.clipped_samples += clipped
    return {"ecg": ecg_uv, "ecg_id": ecg_id, "patient_id": patient_id, "age": np.float32(age),
            "sex": np.int32(sex), "pcwp": np.float32(pcwp),
            "sampling_rate": np.int32(config.sampling_rate)}, []

  # --- Build ----------------------------------------------------------------------------------

  def _new_report(self) -> records.BuildReport:
    self._seen_ids: set[str] = set()
    self._patient_split: dict[str, str] = {}
    return records.BuildReport(dataset=self.info.full_name, strict=self.strict)

  def _download_and_prepare(self, dl_manager, download_config=None) -> None:
    # ``self.data_dir`` is the temporary ``incomplete.*`` directory here, so the report is
    # renamed into place together with the records.
    self.report = self._new_report()
    partial = os.path.normpath(os.fspath(self.data_dir))
    try:
      with _zstd_array_record_writer():
        super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
      self.report.write(os.path.join(partial, REPORT_FILENAME))
    except Exception as e:
      if isinstance(e, atomic.DiskFullError) or not atomic.is_no_space(e):
        raise
      # TFDS removes the temporary directory when this propagates.
      raise atomic.disk_full(
          e, f"dataset {self.info.full_name}", os.path.dirname(partial),
          needed=atomic.directory_size(partial), at_least=True,
          after="the partial build is removed; free some space and build again") from None

  @abc.abstractmethod
  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
    ...

  @abc.abstractmethod
  def _generate_examples(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, dict]]:
    ...


class _ZstdArrayRecordAdapter(file_adapters.ArrayRecordFileAdapter):
  """TFDS's array_record adapter, writing with ``ARRAY_RECORD_OPTIONS``."""

  @classmethod
  def write_examples(cls, path: Any, iterator: Iterable[tuple[Any, bytes]]) -> None:
    writer = array_record_module.ArrayRecordWriter(os.fspath(path), ARRAY_RECORD_OPTIONS)
    try:
      for _, serialized in iterator:
        writer.write(serialized)
    finally:
      writer.close()


@contextlib.contextmanager
def _zstd_array_record_writer() -> Iterator[None]:
  """Makes TFDS write array_record files with ``ARRAY_RECORD_OPTIONS`` for one build."""
  formats = file_adapters.ADAPTER_FOR_FORMAT
  original = formats[file_adapters.FileFormat.ARRAY_RECORD]
  formats[file_adapters.FileFormat.ARRAY_RECORD] = _ZstdArrayRecordAdapter
  try:
    yield
  finally:
    formats[file_adapters.FileFormat.ARRAY_RECORD] = original


def read_build_report(builder: tfds.core.DatasetBuilder) -> Optional[dict]:
  """The report written by the build of ``builder``'s dataset, or ``None`` if there is none."""
  path = os.path.join(os.fspath(builder.data_dir), REPORT_FILENAME)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)
