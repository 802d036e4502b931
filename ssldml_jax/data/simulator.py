"""The synthetic 12-lead ECG cohort: patients with heart disease, their mPCWP and their ECGs.

No patient data may ship with the project and the machine has no network, so the default dataset
is generated. A patient has a latent heart-failure phenotype (no heart failure, HFpEF, HFrEF;
``conditions``) that sets their age, sex, chronic mPCWP and ECG diagnoses (bundle-branch blocks,
LVH with or without strain, old infarcts, atrial fibrillation, first-degree AV block, low
voltage, frequent premature beats), with prevalences and mPCWP associations from the clinical
literature (sources in ``conditions``). Each of a patient's ECGs has its own mPCWP of the day
around the chronic one and is rendered by the cardiac dipole model (``dipole``), where each
condition appears through its diagnostic criterion, and where the mPCWP of the day also acts
through weak, noisy pathways (left-atrial abnormality: longer P wave, deeper terminal negative P
in V1; a faster rate; ventricular remodelling: wider QRS, higher voltage, flatter T). Age and sex
shape the signal too (QTc, voltage, axis, P duration), so subgroups differ. The label is
learnable from the signal, far from perfectly.

Randomness is drawn per patient and per ECG from ``SeedSequence((seed, split, patient))``, so the
output is bitwise identical for the same arguments whatever the chunk size.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterator, NamedTuple, Optional, Sequence

import numpy as np

from ssldml_jax.data import conditions, dipole, waves
from ssldml_jax.data.records import NUM_LEADS, SEX_FEMALE, SEX_MALE

PCWP_RANGE = (2.0, 50.0)
_PCWP_PATIENT_SHARE = 0.7    # fraction of a phenotype's log-mPCWP variance shared by the patient
AGE_RANGE = (18.0, 95.0)
CONDITIONS = conditions.CONDITIONS
PHENOTYPES = conditions.PHENOTYPES

TRUTH_KEYS = ("af", "conditions", "phenotype", "heart_rate_bpm", "p_duration_ms",
              "pr_interval_ms", "qrs_duration_ms", "qtc_ms", "qt_interval_ms",
              "p_terminal_v1_mv", "qrs_voltage_scale", "t_amplitude_scale", "sokolow_lyon_mv",
              "cornell_mv", "limb_qrs_mv", "qrs_axis_deg", "pvc_count", "pac_count",
              "heart_rotation_deg", "mains_hz")


def split_key(split: str) -> int:
  """A stable 32-bit number for a split name (Python's ``hash`` is salted per process)."""
  return int.from_bytes(hashlib.sha256(split.encode("utf-8")).digest()[:4], "little")


def num_samples(sampling_rate: int, duration_s: float) -> int:
  return int(round(sampling_rate * duration_s))


def _check_waveform_args(sampling_rate: int, duration_s: float) -> None:
  if not (isinstance(sampling_rate, (int, np.integer)) and sampling_rate >= 50):
    raise ValueError(f"sampling_rate must be an integer >= 50 Hz, got {sampling_rate!r}")
  if not (np.isfinite(duration_s) and 1.0 <= duration_s <= 600.0):
    raise ValueError(f"duration_s must lie in [1, 600] s, got {duration_s!r}")


class _Traits(NamedTuple):
  """A patient's own physiology: trait normals, condition uniforms and the site's mains."""
  normals: np.ndarray
  condition_u: np.ndarray
  mains_hz: float


def _draw_traits(rng: np.random.Generator) -> _Traits:
  return _Traits(rng.standard_normal(waves.PATIENT_NORMALS),
                 rng.random(conditions.NUM_CONDITIONS), 50.0 if rng.random() < 0.5 else 60.0)


def _render(traits: Sequence[_Traits], ecg_draws: Sequence[tuple], *, pcwp, age, sex, phenotype,
            forced: Optional[np.ndarray], rate: int, duration_s: float) -> tuple[np.ndarray, dict]:
  draws = dipole.stack_draws(np.stack([t.normals for t in traits]), ecg_draws)
  present = forced
  if present is None:
    present = conditions.draw(np.stack([t.condition_u for t in traits]), phenotype)
  mains = np.array([t.mains_hz for t in traits])
  ecg, truth = dipole.render(draws, pcwp=np.clip(pcwp, *PCWP_RANGE), age=age, sex=sex,
                             patient_conditions=present, rate=rate, duration_s=duration_s,
                             mains_hz=mains)
  truth["phenotype"] = np.asarray(phenotype, np.int32)
  return ecg, truth


def simulate_ecgs(rng: np.random.Generator, n: int, *, pcwp: np.ndarray, age: np.ndarray,
                  sex: np.ndarray, sampling_rate: int = 250, duration_s: float = 10.0,
                  conditions_present: Optional[Sequence[Sequence[str]]] = None
                  ) -> tuple[np.ndarray, dict]:
  """Simulates n ECGs of n distinct patients with the given mPCWP (mmHg), age (years), sex.

  The phenotype is drawn from its posterior given mPCWP, age and sex, and the conditions from
  the phenotype, as in the generated cohort; ``conditions_present`` (one collection of names
  from ``CONDITIONS`` per ECG, e.g. ``[("lbbb",), ()]``) fixes them instead. Returns (n, T, 12)
  float32 millivolts in ``LEADS`` order and a dict of ground-truth arrays of length n:
  'af' (bool: this ECG is in AF), 'conditions' ((n, len(CONDITIONS)) bool, what the ECG shows),
  'phenotype' (index into ``PHENOTYPES``), 'heart_rate_bpm', 'p_duration_ms', 'pr_interval_ms'
  (NaN in AF), 'qrs_duration_ms' (conducted beats), 'qtc_ms', 'qt_interval_ms',
  'p_terminal_v1_mv' (the left-atrial P component's peak in V1, negative when it points away;
  NaN in AF), 'qrs_voltage_scale', 't_amplitude_scale', 'sokolow_lyon_mv', 'cornell_mv' and
  'limb_qrs_mv' and 'qrs_axis_deg' (frontal plane; of the conducted beat's noise-free QRS),
  'pvc_count' and 'pac_count'
  (premature beats whose QRS starts inside the recording), 'heart_rotation_deg' ((n, 3),
  degrees about the x (leftward), y (inferior) and z (anterior) axes; z turns the frontal-plane
  axis), 'mains_hz'.
  """
  _check_waveform_args(sampling_rate, duration_s)
  pcwp = np.asarray(pcwp, np.float64).reshape(-1)
  age = np.asarray(age, np.float64).reshape(-1)
  sex = np.asarray(sex).reshape(-1)
  for key, arr in (("pcwp", pcwp), ("age", age), ("sex", sex)):
    if arr.shape != (n,):
      raise ValueError(f"{key} has {arr.shape[0]} values, expected n={n}")
  if not np.all(np.isfinite(pcwp)) or np.any(pcwp <= 0):
    raise ValueError("pcwp must be finite and positive (the latent mPCWP shapes every ECG)")
  if not np.all(np.isfinite(age)):
    raise ValueError("age must be finite")
  if not np.all(np.isin(sex, (SEX_FEMALE, SEX_MALE))):
    raise ValueError(f"sex must be {SEX_FEMALE} (female) or {SEX_MALE} (male)")
  forced = None
  if conditions_present is not None:
    forced = conditions.from_names(conditions_present, n)
  num_t = num_samples(sampling_rate, duration_s)
  num_k = dipole.max_beats(duration_s)
  if n == 0:
    empty = {key: np.zeros(0, np.float32) for key in TRUTH_KEYS}
    empty.update(af=np.zeros(0, bool), conditions=np.zeros((0, conditions.NUM_CONDITIONS), bool),
                 heart_rotation_deg=np.zeros((0, 3), np.float32),
                 phenotype=np.zeros(0, np.int32), pvc_count=np.zeros(0, np.int32),
                 pac_count=np.zeros(0, np.int32))
    return np.zeros((0, num_t, NUM_LEADS), np.float32), empty
  children = rng.spawn(n)
  phenotype_u = np.array([c.random() for c in children])
  phenotype = conditions.phenotype_from_uniform(
      phenotype_u, conditions.phenotype_posterior(np.clip(pcwp, *PCWP_RANGE), age, sex))
  traits = [_draw_traits(c) for c in children]
  ecg_draws = [dipole.draw_ecg(c, num_t, num_k) for c in children]
  return _render(traits, ecg_draws, pcwp=pcwp, age=age, sex=sex, phenotype=phenotype,
                 forced=forced, rate=sampling_rate, duration_s=duration_s)


class _Patient(NamedTuple):
  age: float
  sex: int
  count: int
  pcwp: np.ndarray      # one mPCWP per ECG, mmHg
  phenotype: int
  traits: _Traits


def _patient(seed: int, key: int, index: int, ecgs_per_patient: tuple[int, int]) -> _Patient:
  """A patient's own draws: phenotype, demographics, number of ECGs, each ECG's mPCWP, traits."""
  rng = np.random.default_rng(np.random.SeedSequence([seed, key, index]))
  z_age, z_pcwp = rng.standard_normal(2)
  u_male = rng.random()
  count = int(rng.integers(ecgs_per_patient[0], ecgs_per_patient[1] + 1))
  k = int(conditions.phenotype_from_uniform(np.array([rng.random()]))[0])
  age = float(np.clip(conditions.AGE_MEAN[k] + conditions.AGE_SD[k] * z_age, *AGE_RANGE))
  male = u_male < conditions.MALE_FRACTION[k]
  own = rng.standard_normal(count)
  log_dev = math.sqrt(_PCWP_PATIENT_SHARE) * z_pcwp + math.sqrt(1 - _PCWP_PATIENT_SHARE) * own
  pcwp = np.clip(conditions.PCWP_MEDIAN[k] * np.exp(conditions.PCWP_LOG_SD * log_dev),
                 *PCWP_RANGE)
  return _Patient(age, SEX_MALE if male else SEX_FEMALE, count, pcwp, k, _draw_traits(rng))


class _PendingEcg(NamedTuple):
  ecg_id: str
  patient_id: str
  pcwp: float
  patient: _Patient
  draws: tuple


def generate(split: str, num_patients: int, *, seed: int, sampling_rate: int = 250,
             duration_s: float = 10.0, labeled: bool = True,
             ecgs_per_patient: tuple[int, int] = (1, 4), chunk_size: int = 256
             ) -> Iterator[dict[str, np.ndarray]]:
  """Yields the ECGs of one split in chunks of ``chunk_size`` (the last may be shorter).

  Each chunk is a dict of equal-length arrays: 'ecg' float32 (n, T, 12) mV; 'ecg_id' str,
  ``{split}-p{patient:06d}-e{k}``, unique across splits; 'patient_id' str ``{split}-p{patient:06d}``
  (splits are patient-disjoint by construction); 'age' float32 years; 'sex' int32 (0 female,
  1 male); 'pcwp' float32 mmHg (NaN when ``labeled`` is False; the latent mPCWP still shapes the
  ECG); 'af' bool (the true rhythm); 'phenotype' int32 (index into ``PHENOTYPES``);
  'conditions' bool (n, len(CONDITIONS)): what each ECG shows. A patient has
  ``ecgs_per_patient`` = (min, max) ECGs, inclusive. The split name is mixed into the seed, and
  every patient and ECG has its own seed, so the output does not depend on ``chunk_size``.
  """
  if not isinstance(split, str) or not split or "-" in split:
    raise ValueError(f"split must be a non-empty name without '-', got {split!r}")
  if not (isinstance(num_patients, (int, np.integer)) and num_patients >= 0):
    raise ValueError(f"num_patients must be a non-negative integer, got {num_patients!r}")
  if not (isinstance(seed, (int, np.integer)) and seed >= 0):
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
  try:
    lo, hi = (int(v) for v in ecgs_per_patient)
  except (TypeError, ValueError):
    lo, hi = 0, -1
  if not (1 <= lo <= hi):
    raise ValueError(f"ecgs_per_patient must be (min, max) with 1 <= min <= max, got "
                     f"{ecgs_per_patient!r}")
  if not (isinstance(chunk_size, (int, np.integer)) and chunk_size >= 1):
    raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
  _check_waveform_args(sampling_rate, duration_s)
  key = split_key(split)
  num_t = num_samples(sampling_rate, duration_s)
  num_k = dipole.max_beats(duration_s)
  pending: list[_PendingEcg] = []

  def flush(batch: list[_PendingEcg]) -> dict[str, np.ndarray]:
    pcwp = np.array([b.pcwp for b in batch])
    age = np.array([b.patient.age for b in batch])
    sex = np.array([b.patient.sex for b in batch], np.int32)
    ecg, features = _render([b.patient.traits for b in batch], [b.draws for b in batch],
                            pcwp=pcwp, age=age, sex=sex,
                            phenotype=np.array([b.patient.phenotype for b in batch]),
                            forced=None, rate=sampling_rate, duration_s=duration_s)
    return {
        "ecg": ecg,
        "ecg_id": np.array([b.ecg_id for b in batch]),
        "patient_id": np.array([b.patient_id for b in batch]),
        "age": age.astype(np.float32),
        "sex": sex,
        "pcwp": (pcwp if labeled else np.full_like(pcwp, np.nan)).astype(np.float32),
        "af": features["af"],
        "phenotype": features["phenotype"],
        "conditions": features["conditions"],
    }

  for index in range(num_patients):
    p = _patient(seed, key, index, (lo, hi))
    patient_id = f"{split}-p{index:06d}"
    for k in range(p.count):
      ecg_rng = np.random.default_rng(np.random.SeedSequence([seed, key, index], spawn_key=(k,)))
      pending.append(_PendingEcg(f"{patient_id}-e{k}", patient_id, float(p.pcwp[k]), p,
                                 dipole.draw_ecg(ecg_rng, num_t, num_k)))
      if len(pending) == chunk_size:
        yield flush(pending)
        pending = []
  if pending:
    yield flush(pending)
