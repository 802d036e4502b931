"""ECG record conventions shared by every dataset builder: lead order, units, checks, resampling.

A record is stored as int16 microvolts, time-major ``(T, 12)`` in ``LEADS`` order, and reaches
models as float32 millivolts. Every builder runs ``validate_ecg`` on each record and keeps a
``BuildReport``: bad records are reported with their id and skipped (or raise in strict mode),
never silently dropped.
"""

from __future__ import annotations

import dataclasses
import json
import math
from fractions import Fraction
from typing import Optional, Sequence

import numpy as np
import scipy.signal

from ssldml_jax import atomic

LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
NUM_LEADS = len(LEADS)
INT16_MAX_UV = np.iinfo(np.int16).max  # 32.767 mV: far above any physiological ECG amplitude.
# Limits for `validate_ecg`. A lead whose peak-to-peak amplitude is below FLAT_UV is treated as
# disconnected; |x| above MAX_ABS_MV is a saturated or mis-scaled recording.
FLAT_UV = 10.0
MAX_ABS_MV = 30.0

SEX_FEMALE, SEX_MALE, SEX_UNKNOWN = 0, 1, -1


class BadRecordError(ValueError):
  """Raised in strict mode, or by a builder, for a record that fails validation."""


def canonical_lead_order(names: Sequence[str]) -> np.ndarray:
  """Indices that reorder a record's leads into ``LEADS``; names are matched case-insensitively.

  Raises ``BadRecordError`` naming the missing leads.
  """
  lookup = {n.strip().lower(): i for i, n in enumerate(names)}
  missing = [lead for lead in LEADS if lead.lower() not in lookup]
  if missing:
    raise BadRecordError(f"missing lead(s) {', '.join(missing)} (has {', '.join(names)})")
  return np.array([lookup[lead.lower()] for lead in LEADS])


def validate_ecg(ecg_mv: np.ndarray, *, expected_length: Optional[int] = None) -> list[str]:
  """Returns the problems found in one float record ``(T, 12)`` in millivolts; empty if good."""
  ecg_mv = np.asarray(ecg_mv)
  if ecg_mv.ndim != 2 or ecg_mv.shape[1] != NUM_LEADS:
    return [f"shape {ecg_mv.shape}, expected (T, {NUM_LEADS})"]
  problems = []
  if expected_length is not None and ecg_mv.shape[0] != expected_length:
    problems.append(f"length {ecg_mv.shape[0]} samples, expected {expected_length}")
  finite = np.isfinite(ecg_mv)
  if not finite.all():
    bad = [LEADS[i] for i in np.flatnonzero(~finite.all(axis=0))]
    problems.append(f"non-finite values (NaN/inf) in lead(s) {', '.join(bad)}")
    return problems
  if ecg_mv.shape[0] == 0:
    return problems + ["empty signal"]
  peak_to_peak_uv = np.ptp(ecg_mv, axis=0) * 1000.0
  flat = [LEADS[i] for i in np.flatnonzero(peak_to_peak_uv < FLAT_UV)]
  if flat:
    problems.append(f"flat lead(s) {', '.join(flat)} (peak-to-peak < {FLAT_UV:g} uV)")
  peak = float(np.abs(ecg_mv).max())
  if peak > MAX_ABS_MV:
    problems.append(f"amplitude {peak:.1f} mV exceeds {MAX_ABS_MV:g} mV (saturated or mis-scaled)")
  return problems


def validate_labels(*, age: float = math.nan, sex: int = SEX_UNKNOWN,
                    pcwp: float = math.nan) -> list[str]:
  """Problems with an example's labels; NaN / SEX_UNKNOWN mean 'not known' and are fine."""
  problems = []
  if not (math.isnan(age) or 0.0 <= age <= 120.0):
    problems.append(f"impossible age {age}")
  if sex not in (SEX_FEMALE, SEX_MALE, SEX_UNKNOWN):
    problems.append(f"sex code {sex}, expected 0 (female), 1 (male) or -1 (unknown)")
  if not (math.isnan(pcwp) or 0.0 <= pcwp <= 70.0):
    problems.append(f"impossible mPCWP {pcwp} mmHg (allowed 0-70)")
  return problems


def mv_to_int16_uv(ecg_mv: np.ndarray) -> tuple[np.ndarray, int]:
  """Float millivolts to int16 microvolts; returns the array and how many samples were clipped."""
  uv = np.rint(np.asarray(ecg_mv, np.float64) * 1000.0)
  clipped = int(np.count_nonzero(np.abs(uv) > INT16_MAX_UV))
  return np.clip(uv, -INT16_MAX_UV, INT16_MAX_UV).astype(np.int16), clipped


def int16_uv_to_mv(ecg_uv: np.ndarray) -> np.ndarray:
  return np.asarray(ecg_uv, np.float32) * np.float32(1e-3)


def resample(ecg: np.ndarray, rate_in: float, rate_out: float, axis: int = 0) -> np.ndarray:
  """Polyphase resampling along ``axis`` (anti-aliased); identity when the rates are equal."""
  if rate_in == rate_out:
    return ecg
  ratio = Fraction(rate_out / rate_in).limit_denominator(1000)
  # padtype="line": the filter sees the signal's trend beyond its ends, not zeros, so a baseline
  # offset does not bend the first and last samples (about 0.2 mV for 500 -> 250 Hz otherwise).
  return scipy.signal.resample_poly(ecg, ratio.numerator, ratio.denominator, axis=axis,
                                    padtype="line")


def model_input(ecg_uv: np.ndarray, stored_rate: float, rate: float,
                band: Optional[Sequence[float]] = None) -> np.ndarray:
  """Stored int16 microvolt records ``(..., T, 12)`` as a model sees them: float32 millivolts,
  resampled along time from ``stored_rate`` to ``rate`` Hz and band-passed when ``band`` is
  ``(low_hz, high_hz)``. The input pipeline and ``predict`` both call it, so an ECG file meets
  an encoder exactly as the records of its dataset did."""
  axis = np.ndim(ecg_uv) - 2
  # int16 -> float32 is exact; one pass over the batch.
  ecg = np.multiply(ecg_uv, np.float32(1e-3), dtype=np.float32)
  # Whole batches along time in one vectorised call instead of one per record.
  if stored_rate != rate:
    ecg = resample(ecg, stored_rate, rate, axis=axis)
  if band is not None:
    ecg = bandpass(ecg, rate, float(band[0]), float(band[1]), axis=axis)
  return np.asarray(ecg, np.float32)


def bandpass(ecg: np.ndarray, rate: float, low_hz: float, high_hz: float,
             axis: int = 0) -> np.ndarray:
  """Zero-phase Butterworth band-pass (order 2 per direction)."""
  nyquist = rate / 2.0
  if not 0.0 < low_hz < high_hz < nyquist:
    raise ValueError(f"band-pass ({low_hz}, {high_hz}) Hz must lie inside (0, {nyquist}) Hz")
  sos = scipy.signal.butter(2, [low_hz, high_hz], btype="bandpass", fs=rate, output="sos")
  return scipy.signal.sosfiltfilt(sos, ecg, axis=axis)


@dataclasses.dataclass
class BuildReport:
  """Counts and messages of one dataset build, written beside the dataset as JSON."""
  dataset: str
  strict: bool = False
  examples_written: dict = dataclasses.field(default_factory=dict)   # split -> count
  skipped: list = dataclasses.field(default_factory=list)            # {split, id, problems}
  clipped_samples: int = 0

  def count(self, split: str) -> None:
    self.examples_written[split] = self.examples_written.get(split, 0) + 1

  def reject(self, split: str, record_id: str, problems: Sequence[str]) -> None:
    """Records a bad record; raises in strict mode. The message always names the record."""
    message = f"{self.dataset} [{split}] record {record_id}: {'; '.join(problems)}"
    if self.strict:
      raise BadRecordError(message + " (strict mode: rebuild without --strict to skip it)")
    self.skipped.append({"split": split, "id": str(record_id), "problems": list(problems)})
    print(f"skipping {message}", flush=True)

  def summary(self) -> str:
    written = ", ".join(f"{k}: {v}" for k, v in sorted(self.examples_written.items()))
    return (f"{self.dataset}: wrote {written or 'nothing'}; skipped {len(self.skipped)} bad "
            f"record(s); clipped {self.clipped_samples} sample(s) to the int16 range")

  def write(self, path: str) -> None:
    atomic.write_text(path, json.dumps(dataclasses.asdict(self), indent=1))
