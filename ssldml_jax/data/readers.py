"""Readers of the ECG file formats that real datasets come in, and the steps that make them records.

Every reader returns a ``RawEcg``: the signal in millivolts, in the file's own lead order, with the
lead names and sampling rate the file declares. ``to_record`` then puts the leads in ``LEADS``
order, resamples to the builder's rate, optionally band-passes and cuts the record to its fixed
length; ``EcgBuilder.example_from`` validates it and stores it as int16. Anything wrong with a
file raises ``BadRecordError`` with a sentence that names the file, so that a builder can report
the record and go on (or stop, in strict mode); ``SourceError`` is for the source as a whole (no
manual dir, a missing table or column) and stops the build before any record is read.

Also here, shared by the builders: their base class ``SourceBuilder`` (the rate configs they all
offer, the way to their files), a patient split from a hash of the patient id, and parsers for the
CSV cells they read.

Length policy (one rule for every dataset): a record must cover the builder's duration at its
declared rate, else it is rejected as too short; a longer record keeps its first ``duration``
seconds (``crop='first'``, the default, since a 10 s ECG is the clinical unit and devices write
the rhythm from its start) or its central ones (``crop='centre'``).
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import hashlib
import math
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds

from ssldml_jax.data import records
from ssldml_jax.data.records import BadRecordError
from ssldml_jax.data.tfds_common import EcgBuilder, EcgBuilderConfig

# Millivolts per unit, for the unit spellings WFDB headers and hospital exports use.
_MV_PER_UNIT = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "microvolt": 1e-3,
                "microvolts": 1e-3, "v": 1e3, "volt": 1e3, "volts": 1e3, "millivolt": 1.0,
                "millivolts": 1.0}
# Attribute names under which HDF5 exports store the sampling rate and the unit.
_RATE_ATTRS = ("sampling_rate", "sampling_frequency", "sample_rate", "fs")
_UNIT_ATTRS = ("units", "unit")
_LEAD_ATTRS = ("leads", "lead_names", "sig_name")
CROPS = ("first", "centre")


class SourceError(BadRecordError):
  """The source files as a whole are unusable (missing manual dir, table or column)."""


def manual_dir(dl_manager: Any, dataset: str, instructions: str) -> str:
  """The build's ``--manual_dir``, or a one-line error saying what to download and where."""
  try:
    return os.fspath(dl_manager.manual_dir)
  except AssertionError as e:  # TFDS's way of saying: no manual dir, or an empty one.
    reason = str(e).split(". Create it")[0].splitlines()[0].strip().rstrip(".")
    raise SourceError(f"{dataset} is built from downloaded files: {reason.lower()} "
                      f"(--manual_dir=DIR). {instructions}") from None


@dataclasses.dataclass(eq=False)
class SourceConfig(EcgBuilderConfig):
  """Config of a builder over real recordings: the stored rate and duration, plus how to get there.

  ``crop`` picks the kept window of a longer recording (``first`` or ``centre`` seconds);
  ``bandpass`` ``(low_hz, high_hz)`` filters at the stored rate before the crop (None: raw, the
  default, since the input pipeline can band-pass at load time and a stored filter cannot be
  undone).
  """
  crop: str = "first"
  bandpass: Optional[tuple[float, float]] = None


def rate_configs(config_class: type = SourceConfig) -> list:
  """The variants every real-data builder offers: ``default`` (250 Hz, the paper) and ``500hz``."""
  return [config_class(name="default", description="250 Hz, 10 s (the paper's input).",
                       sampling_rate=250),
          config_class(name="500hz", description="500 Hz, 10 s.", sampling_rate=500)]


class SourceBuilder(EcgBuilder):
  """Base of the builders over downloaded recordings, read from ``--manual_dir``.

  It gives them their first release and the ``rate_configs`` (a builder may offer others); a
  builder whose records change gives its own ``VERSION`` and ``RELEASE_NOTES``. Subclasses set
  ``MANUAL_DOWNLOAD_INSTRUCTIONS`` (said when the files are missing) and write
  ``_split_generators`` / ``_generate_examples``.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = rate_configs()
  DEFAULT_BUILDER_CONFIG_NAME = "default"

  def source_dir(self, dl_manager: Any) -> str:
    """The build's ``--manual_dir``, or a one-line error naming this dataset (``manual_dir``)."""
    return manual_dir(dl_manager, self.name, self.MANUAL_DOWNLOAD_INSTRUCTIONS)

  def source_table(self, dl_manager: Any, name: str) -> tuple[str, str]:
    """``(path, folder)`` of the dataset's table ``name`` in the manual dir or one folder below
    it (``find_source``); the paths of the records are relative to that folder."""
    path = find_source(self.source_dir(dl_manager), name)
    return path, os.path.dirname(path)


def find_source(manual_dir: str, name: str, *, required: bool = True) -> Optional[str]:
  """``manual_dir/name``, or ``manual_dir/*/name`` when the download kept its top folder.

  PhysioNet and Zenodo archives unpack into a versioned folder; accepting one level of it saves
  the user a move. Several candidates, or none when ``required``, is an error naming them.
  """
  direct = os.path.join(manual_dir, name)
  if os.path.exists(direct):
    return direct
  nested = sorted(glob.glob(os.path.join(glob.escape(manual_dir), "*", name)))
  if len(nested) == 1:
    return nested[0]
  if len(nested) > 1:
    raise SourceError(f"{name} found in several folders of {manual_dir}: "
                      f"{', '.join(nested)}; point --manual_dir at one of them")
  if required:
    raise SourceError(f"{name} not found in {manual_dir} (nor one folder below it); "
                      f"see the README for what to download")
  return None


@dataclasses.dataclass(frozen=True)
class RawEcg:
  """One recording as a file holds it: ``signal`` (T, C) float64 millivolts in ``leads`` order."""
  signal: np.ndarray
  leads: tuple[str, ...]
  rate: float  # Hz; NaN when the file does not say.


def mv_per_unit(unit: str, where: str) -> float:
  """Scale from a unit name to millivolts; unknown units are an error naming ``where``."""
  key = str(unit).strip().lower()
  if key not in _MV_PER_UNIT:
    raise BadRecordError(f"{where}: unknown signal unit {unit!r} (expected mV, uV or V)")
  return _MV_PER_UNIT[key]


def read_wfdb(record_path: str) -> RawEcg:
  """Reads a WFDB record (``record_path`` without the ``.hea``/``.dat`` extension)."""
  import wfdb  # Imported here: only WFDB builders pay for it.
  if not os.path.isfile(record_path + ".hea"):
    raise BadRecordError(f"{record_path}.hea: no such file")
  try:
    record = wfdb.rdrecord(record_path, physical=True)
  except Exception as e:  # wfdb raises many types for broken files; all mean 'unreadable'.
    raise BadRecordError(f"{record_path}: unreadable WFDB record ({type(e).__name__}: {e})") from e
  if record.p_signal is None:
    raise BadRecordError(f"{record_path}: WFDB record has no signal")
  signal = np.asarray(record.p_signal, np.float64)
  if signal.ndim != 2 or signal.shape[1] != len(record.sig_name):
    raise BadRecordError(f"{record_path}: signal shape {signal.shape} does not match its "
                         f"{len(record.sig_name)} lead names")
  units = record.units or ["mV"] * signal.shape[1]
  scale = np.array([mv_per_unit(u, record_path) for u in units])
  return RawEcg(signal * scale, tuple(record.sig_name), float(record.fs))


def read_npy(path: str, *, rate: float = math.nan, leads: Sequence[str] = records.LEADS,
             units: str = "mV") -> RawEcg:
  """Reads a ``.npy`` array of shape (T, C) or (C, T), C = len(leads), in ``units``.

  The axis of length C is taken as the lead axis; a square (C, C) array is read as time-major.
  """
  if not os.path.isfile(path):
    raise BadRecordError(f"{path}: no such file")
  try:
    array = np.load(path, allow_pickle=False)
  except Exception as e:
    raise BadRecordError(f"{path}: unreadable .npy file ({type(e).__name__}: {e})") from e
  return RawEcg(_time_major(array, len(leads), path) * mv_per_unit(units, path),
                tuple(leads), float(rate))


def read_hdf5(path: str, *, key: Optional[str] = None, date: Optional[Any] = None,
              rate: float = math.nan, leads: Sequence[str] = records.LEADS,
              units: str = "mV") -> RawEcg:
  """Reads one ECG from an HDF5 file, in either of two layouts.

  * Per-lead arrays ``ecg/<date>/<lead>`` (a hospital export): the group of one recording holds
    one 1-D dataset per lead, named by the lead. The group is ``key`` when given, else the only
    child of ``ecg``, else the child whose name is ``date`` (a string, or a datetime matched
    against names that parse as dates or date-times).
  * One 2-D dataset (T, C) or (C, T) at ``key``; lead names from its ``leads`` attribute, else
    ``leads``.

  Sampling rate and unit come from attributes (``sampling_rate``/``fs``, ``units``) on the
  dataset, its group or the file, else from ``rate`` and ``units``. A file that declares a rate
  different from a given ``rate`` is an error: the two sources disagree about the recording.
  """
  import h5py  # Imported here: only HDF5 builders pay for it.
  if not os.path.isfile(path):
    raise BadRecordError(f"{path}: no such file")
  try:
    with h5py.File(path, "r") as f:
      node = _hdf5_node(f, path, key, date)
      where = f"{path}:{node.name}"
      if isinstance(node, h5py.Dataset):
        array = np.asarray(node[()])
        names = _attr(node, _LEAD_ATTRS)
        names = tuple(str(n.decode() if isinstance(n, bytes) else n) for n in names) \
            if names is not None else tuple(leads)
        signal = _time_major(array, len(names), where)
        owner = node
      else:
        names, columns = [], []
        for name, child in node.items():
          if not isinstance(child, h5py.Dataset):
            continue
          names.append(name)
          columns.append(np.asarray(child[()]).reshape(-1))
        if not columns:
          raise BadRecordError(f"{where}: group holds no lead arrays")
        lengths = {n: len(c) for n, c in zip(names, columns)}
        if len(set(lengths.values())) != 1:
          raise BadRecordError(f"{where}: lead arrays differ in length "
                               f"({', '.join(f'{n}={k}' for n, k in lengths.items())})")
        signal, names = np.stack(columns, axis=1), tuple(names)
        owner = next(c for c in node.values() if isinstance(c, h5py.Dataset))
      file_rate = _attr_up(owner, _RATE_ATTRS)
      file_units = _attr_up(owner, _UNIT_ATTRS)
  except BadRecordError:
    raise
  except Exception as e:  # h5py raises OSError/KeyError/... for broken files.
    raise BadRecordError(f"{path}: unreadable HDF5 file ({type(e).__name__}: {e})") from e
  if file_units is not None:
    units = file_units.decode() if isinstance(file_units, bytes) else str(file_units)
  if file_rate is not None:
    file_rate = float(np.asarray(file_rate).reshape(-1)[0])
    if not math.isnan(rate) and not math.isclose(file_rate, rate):
      raise BadRecordError(f"{where}: file says {file_rate:g} Hz but {rate:g} Hz was given "
                           f"(wrong rate)")
    rate = file_rate
  return RawEcg(np.asarray(signal, np.float64) * mv_per_unit(units, where), names, float(rate))


def _hdf5_node(f: Any, path: str, key: Optional[str], date: Optional[Any]) -> Any:
  """The group or dataset of one recording (see ``read_hdf5``)."""
  if key:
    if key not in f:
      raise BadRecordError(f"{path}: no HDF5 object {key!r}")
    return f[key]
  if "ecg" not in f:
    raise BadRecordError(f"{path}: no 'ecg' group and no HDF5 key given "
                         f"(top level has {', '.join(f.keys()) or 'nothing'})")
  group = f["ecg"]
  if not hasattr(group, "keys"):
    return group
  children = list(group.keys())
  if len(children) == 1:
    return group[children[0]]
  matches = [c for c in children if _same_time(c, date)] if date is not None else []
  if len(matches) == 1:
    return group[matches[0]]
  reason = (f"{len(matches)} match {date}" if date is not None else "no ECG date was given")
  raise BadRecordError(f"{path}: 'ecg' holds {len(children)} recordings "
                       f"({', '.join(children[:5])}{'...' if len(children) > 5 else ''}); "
                       f"{reason}")


def _same_time(name: str, when: Any) -> bool:
  """Whether an HDF5 group name denotes ``when`` (a string or a datetime)."""
  if isinstance(when, str):
    if name == when:
      return True
    when = parse_datetime(when)
    if when is None:
      return False
  parsed = parse_datetime(name)
  if parsed is None:
    return False
  if len(name.strip()) <= 10:  # A date-only name matches any time on that day.
    return parsed.date() == when.date()
  return parsed == when


def _attr(node: Any, names: Sequence[str]) -> Optional[Any]:
  for name in names:
    if name in node.attrs:
      return node.attrs[name]
  return None


def _attr_up(node: Any, names: Sequence[str]) -> Optional[Any]:
  """The first of ``names`` found on ``node`` or any of its parents up to the file."""
  while True:
    value = _attr(node, names)
    if value is not None or node.name == "/":
      return value
    node = node.parent


def _time_major(array: np.ndarray, num_leads: int, where: str) -> np.ndarray:
  if array.ndim != 2 or num_leads not in array.shape:
    raise BadRecordError(f"{where}: array of shape {array.shape}, expected (T, {num_leads}) "
                         f"or ({num_leads}, T)")
  if not np.issubdtype(array.dtype, np.number):
    raise BadRecordError(f"{where}: array of non-numeric dtype {array.dtype}")
  return array if array.shape[1] == num_leads else array.T


def trim_zero_padding(signal: np.ndarray) -> np.ndarray:
  """Removes centred zero padding (rows where every lead is exactly 0) from both ends.

  The same number of rows is cut from each end, the smaller of the two all-zero runs, so that a
  recording whose own first or last sample happens to be zero on every lead keeps its length.
  """
  nonzero = np.flatnonzero(np.any(signal != 0, axis=1))
  if nonzero.size == 0:
    return signal[:0]
  pad = min(int(nonzero[0]), signal.shape[0] - 1 - int(nonzero[-1]))
  return signal[pad:signal.shape[0] - pad]


def to_record(raw: RawEcg, *, rate: float, num_samples: int, crop: str = "first",
              bandpass: Optional[Sequence[float]] = None, where: str = "") -> np.ndarray:
  """Turns a ``RawEcg`` into a float (num_samples, 12) millivolt record in ``LEADS`` order.

  Raises ``BadRecordError`` (prefixed by ``where``) for a missing lead, an unknown or
  non-positive rate, or a recording shorter than ``num_samples / rate`` seconds. Resampling and
  filtering run on the whole recording before the crop, so the kept window has no edge effects
  of its own.
  """
  prefix = f"{where}: " if where else ""
  if crop not in CROPS:
    raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
  try:
    order = records.canonical_lead_order(raw.leads)
  except BadRecordError as e:
    raise BadRecordError(prefix + str(e)) from None
  if not (raw.rate > 0 and math.isfinite(raw.rate)):
    raise BadRecordError(f"{prefix}unknown sampling rate {raw.rate!r} Hz")
  signal = np.asarray(raw.signal, np.float64)[:, order]
  seconds = num_samples / rate
  if signal.shape[0] < seconds * raw.rate - 1e-6 or signal.shape[0] < 2:
    raise BadRecordError(f"{prefix}{signal.shape[0]} samples at {raw.rate:g} Hz = "
                         f"{signal.shape[0] / raw.rate:.2f} s, shorter than the {seconds:g} s "
                         f"wanted (wrong length)")
  if not np.isfinite(signal).all():
    bad = [records.LEADS[i] for i in np.flatnonzero(~np.isfinite(signal).all(axis=0))]
    raise BadRecordError(f"{prefix}non-finite values (NaN/inf) in lead(s) {', '.join(bad)}")
  signal = records.resample(signal, raw.rate, rate)
  if bandpass is not None:
    signal = records.bandpass(signal, rate, float(bandpass[0]), float(bandpass[1]))
  if signal.shape[0] < num_samples:  # A rate ratio rounded by `resample` can lose a sample.
    signal = np.pad(signal, ((0, num_samples - signal.shape[0]), (0, 0)), mode="edge")
  start = 0 if crop == "first" else (signal.shape[0] - num_samples) // 2
  return signal[start:start + num_samples]


def record_for(raw: RawEcg, config: SourceConfig, where: str,
               expected_rate: Optional[float] = None) -> np.ndarray:
  """``to_record`` with a builder config; ``expected_rate`` rejects a file at another rate.

  A dataset published at one rate (PTB-XL and MIMIC-IV-ECG at 500 Hz) holding a file at another
  is a wrong file (e.g. a 100 Hz PTB-XL record), not something to resample quietly.
  """
  if expected_rate is not None and not math.isclose(raw.rate, expected_rate):
    raise BadRecordError(f"{where}: sampling rate {raw.rate:g} Hz, expected {expected_rate:g} Hz "
                         f"(wrong rate)")
  return to_record(raw, rate=config.sampling_rate, num_samples=config.num_samples,
                   crop=config.crop, bandpass=config.bandpass, where=where)


def patient_split(patient_id: str, fractions: Mapping[str, float]) -> str:
  """Deterministic split of a patient from a hash of its id (the same on every machine and run).

  The first 8 bytes of SHA-256 of the id, as a fraction of 2**64, fall into consecutive
  intervals of ``fractions`` (in the mapping's order, summing to 1), so every ECG of one patient
  lands in the same split and adding patients never moves the others.
  """
  digest = hashlib.sha256(str(patient_id).encode("utf-8")).digest()
  u = int.from_bytes(digest[:8], "big") / 2.0**64
  total = 0.0
  for name, fraction in fractions.items():
    total += fraction
    if u < total:
      return name
  return list(fractions)[-1]


def nonempty_splits(dataset: str, by_split: Mapping[str, list]) -> dict[str, list]:
  """The splits that have records to read; an empty one is announced, not written.

  TFDS cannot write a split without examples, and a small cohort may leave one empty.
  """
  empty = [name for name, items in by_split.items() if not items]
  if empty:
    print(f"{dataset}: no records for split(s) {', '.join(empty)}; not written", flush=True)
  if len(empty) == len(by_split):
    raise SourceError(f"{dataset}: no records to build (see the messages above)")
  return {name: items for name, items in by_split.items() if items}


def parse_datetime(value: Any) -> Optional[datetime.datetime]:
  """A naive ``datetime`` from an ISO-like string (``T`` or space separated); None if empty."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return None
  if isinstance(value, datetime.datetime):
    return value
  text = str(value).strip()
  if not text or text.lower() in ("nan", "nat", "none"):
    return None
  try:
    parsed = datetime.datetime.fromisoformat(text.replace("/", "-"))
  except ValueError:
    return None
  return parsed.replace(tzinfo=None) if parsed.tzinfo is not None else parsed


def parse_float(value: Any) -> float:
  """A float from a CSV cell; empty cells are NaN; anything else unparsable raises ValueError."""
  if value is None:
    return math.nan
  text = str(value).strip()
  if not text or text.lower() in ("nan", "na", "n/a", "none", "null"):
    return math.nan
  return float(text)


def parse_sex(value: Any) -> int:
  """Our sex code (0 female, 1 male, -1 unknown) from the spellings exports use.

  Numbers are taken as our code already (0 female, 1 male); datasets with another convention
  convert before calling this.
  """
  text = "" if value is None else str(value).strip().lower()
  if text in ("", "nan", "na", "none", "unknown", "u", "-1"):
    return records.SEX_UNKNOWN
  if text in ("f", "female", "woman", "w", "0", "0.0", "false"):
    return records.SEX_FEMALE
  if text in ("m", "male", "man", "1", "1.0", "true"):
    return records.SEX_MALE
  raise ValueError(f"unrecognised sex {value!r} (expected F/M, female/male or 0/1)")
