"""The synthetic 12-lead ECG cohort: a cardiac dipole model with hemodynamic coupling.

No patient data may ship with the project and the machine has no network, so the default dataset
is generated. The heart is a single 3-D current dipole (x: patient's left, y: inferior, z:
anterior) whose components are sums of Gaussian bumps per wave (the ECGSYN / McSharry and Sameni
family of models): two atrial bumps for P (right then left atrium), four for the QRS loop (septal,
anterior, main left-posterior, late basal) and two for an asymmetric T. Beats follow an RR series
with respiratory sinus arrhythmia and correlated heart-rate variability, or an irregularly
irregular series with fibrillatory waves in atrial fibrillation.

The dipole is projected onto the lead vectors of I, II and V1..V6 after a patient-specific
rotation of the heart and per-lead gains (geometry, habitus, electrode placement). Noise is added
per *electrode* (RA, LA, LL, C1..C6) and turned into leads the way an electrocardiograph does it,
so the limb leads III, aVR, aVL and aVF are computed from I and II and Einthoven's and
Goldberger's relations hold exactly.

mPCWP acts through noisy latent pathways the clinical literature describes: left-atrial
abnormality (longer P wave, deeper terminal negative P in V1), a faster rate, more atrial
fibrillation, and ventricular changes (wider QRS, higher voltage, flatter T). Age and sex also
shape the signal (QTc, voltage, axis, P duration). The couplings are weak and noisy on purpose:
the label is learnable, far from perfectly.

Randomness is drawn per patient and per ECG from ``SeedSequence((seed, split, patient))``, so the
output is bitwise identical for the same arguments whatever the chunk size, and the vectorised
rendering only ever sees those draws.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import scipy.signal

from ssldml_jax.data.records import LEADS, NUM_LEADS, SEX_FEMALE, SEX_MALE

# mPCWP of a catheterisation cohort: log-normal with mean 16 and SD 8 mmHg, which puts ~31%
# above 18 mmHg; a patient's ECGs share most of the log-deviation (chronic filling pressure).
PCWP_MEAN, PCWP_SD = 16.0, 8.0
_LOG_SIGMA = math.sqrt(math.log1p((PCWP_SD / PCWP_MEAN) ** 2))
_LOG_MU = math.log(PCWP_MEAN) - 0.5 * _LOG_SIGMA ** 2
PCWP_RANGE = (2.0, 50.0)
_PCWP_PATIENT_SHARE = 0.7    # fraction of log-mPCWP variance shared by a patient's ECGs.
_PCWP_AGE_CORR = 0.2         # older patients have somewhat higher filling pressures.

AGE_MEAN, AGE_SD, AGE_RANGE = 61.0, 14.0, (18.0, 95.0)
MALE_FRACTION = 0.6

# Fastest ventricular rhythm simulated; fixes the number of beats rendered per ECG, so that the
# arrays (and therefore the random draws) do not depend on which ECGs share a chunk.
_MIN_RR_S = 0.33

# Electrodes RA, LA, LL, C1..C6 -> leads I, II, V1..V6 (the 8 independent leads).
_ELECTRODES = 9
_ELECTRODE_TO_LEAD = np.zeros((_ELECTRODES, 8), np.float32)
_ELECTRODE_TO_LEAD[[1, 0], 0] = [1.0, -1.0]         # I = LA - RA
_ELECTRODE_TO_LEAD[[2, 0], 1] = [1.0, -1.0]         # II = LL - RA
for _c in range(6):                                  # Vi = Ci - Wilson central terminal
  _ELECTRODE_TO_LEAD[:3, 2 + _c] = -1.0 / 3.0
  _ELECTRODE_TO_LEAD[3 + _c, 2 + _c] = 1.0

# Lead vectors in the dipole frame. Chest leads lie in the horizontal plane at the usual angles
# (from the patient's left towards anterior) with gains for their proximity to the heart.
_CHEST_ANGLES_DEG = np.array([118.0, 94.0, 76.0, 58.0, 34.0, 8.0])
_CHEST_GAINS = np.array([1.15, 1.75, 1.8, 1.65, 1.35, 1.1])
_BASE_LEAD_VECTORS = np.zeros((3, 8))
_BASE_LEAD_VECTORS[:, 0] = [1.0, 0.0, 0.0]                                   # I at 0 deg
_BASE_LEAD_VECTORS[:, 1] = [0.5, math.sqrt(3) / 2, 0.0]                     # II at +60 deg
_a = np.deg2rad(_CHEST_ANGLES_DEG)
_BASE_LEAD_VECTORS[:, 2:] = _CHEST_GAINS * np.stack(
    [np.cos(_a), np.full(6, 0.12), np.sin(_a)])
del _a, _c

# Waves: name, group, offset from the group's reference time (s), width (s), direction, mV.
# Groups: P (reference: P-wave centre), QRS (R peak), T (T peak), F (fibrillatory, continuous).
_WAVES = (
    ("p_ra", "P", -0.015, 0.016, (0.35, 0.80, 0.50), 0.13),
    ("p_la", "P", +0.015, 0.018, (0.70, 0.40, -0.60), 0.10),
    ("q", "QRS", -0.024, 0.0075, (-0.55, 0.25, 0.80), 0.22),
    ("r1", "QRS", -0.010, 0.0085, (0.45, 0.45, 0.77), 0.75),
    ("r2", "QRS", +0.004, 0.0095, (0.75, 0.50, -0.43), 1.25),
    ("s", "QRS", +0.022, 0.0095, (-0.30, -0.45, -0.84), 0.45),
    ("t1", "T", -0.040, 0.055, (0.62, 0.62, 0.48), 0.26),
    ("t2", "T", +0.012, 0.034, (0.62, 0.62, 0.48), 0.20),
    ("f", "F", 0.0, 0.0, (-0.25, 0.45, 0.86), 0.0),
)
_W = {name: i for i, (name, *_rest) in enumerate(_WAVES)}
_NUM_WAVES = len(_WAVES)
_NOISE_BASIS = 5  # respiratory wander, two slow drifts, mains cos, mains sin.
_QRS_BASE_MS = 90.0  # QRS duration that the QRS wave table above draws.

TRUTH_KEYS = ("af", "heart_rate_bpm", "p_duration_ms", "pr_interval_ms", "qrs_duration_ms",
              "qtc_ms", "qt_interval_ms", "p_terminal_v1_mv", "qrs_voltage_scale",
              "t_amplitude_scale", "mains_hz")

# Number of standard-normal / uniform draws per patient and per ECG (fixed, see ``_draw_*``).
_PATIENT_NORMALS = 24
_ECG_NORMALS = 64
_ECG_UNIFORMS = 13


def split_key(split: str) -> int:
  """A stable 32-bit number for a split name (Python's ``hash`` is salted per process)."""
  return int.from_bytes(hashlib.sha256(split.encode("utf-8")).digest()[:4], "little")


def num_samples(sampling_rate: int, duration_s: float) -> int:
  return int(round(sampling_rate * duration_s))


def _max_beats(duration_s: float) -> int:
  return int(math.ceil(duration_s / _MIN_RR_S)) + 6


class _Draws:
  """Every random number one batch of ECGs consumes, stacked from per-ECG generators."""

  def __init__(self, patient_normals, ecg_normals, ecg_uniforms, rr_normals, emg):
    self.pz = patient_normals   # (n, _PATIENT_NORMALS) float64, shared by a patient's ECGs
    self.z = ecg_normals        # (n, _ECG_NORMALS) float64
    self.u = ecg_uniforms       # (n, _ECG_UNIFORMS) float64 in [0, 1)
    self.rr = rr_normals        # (n, K) float64
    self.emg = emg              # (n, 9, T) float32 in [0, 1): uniform draws are 5x cheaper


def _draw_ecg(rng: np.random.Generator, num_t: int, num_beats: int):
  return (rng.standard_normal(_ECG_NORMALS), rng.random(_ECG_UNIFORMS),
          rng.standard_normal(num_beats), rng.random((_ELECTRODES, num_t), np.float32))


def _stack_draws(patient_normals: np.ndarray, ecg_draws: Sequence[tuple]) -> _Draws:
  z, u, rr, emg = zip(*ecg_draws)
  return _Draws(np.asarray(patient_normals, np.float64), np.stack(z), np.stack(u), np.stack(rr),
                np.stack(emg))


def _rotation(ax: np.ndarray, ay: np.ndarray, az: np.ndarray) -> np.ndarray:
  """(n, 3, 3) rotations: about z (frontal axis), then y (horizontal), then x; radians."""
  def rot(angle, i, j):
    r = np.zeros(angle.shape + (3, 3))
    r[:, 0, 0] = r[:, 1, 1] = r[:, 2, 2] = 1.0
    c, s = np.cos(angle), np.sin(angle)
    r[:, i, i], r[:, i, j], r[:, j, i], r[:, j, j] = c, -s, s, c
    return r
  return rot(ax, 1, 2) @ rot(ay, 2, 0) @ rot(az, 0, 1)


def _nearest_centre(centres: np.ndarray, num_t: int, rate: float) -> np.ndarray:
  """For each sample, the index of the nearest of a row's sorted centre times: (n, K) -> (n, T).

  A sample belongs to beat k+1 from the midpoint between centres k and k+1 on, so the index is a
  running count of midpoints passed, built with one bincount and one cumsum.
  """
  n, k = centres.shape
  mids = 0.5 * (centres[:, 1:] + centres[:, :-1])
  first = np.clip(np.ceil(mids * rate), 0, num_t).astype(np.int64)
  flat = (np.arange(n)[:, None] * (num_t + 1) + first).ravel()
  counts = np.bincount(flat, minlength=n * (num_t + 1)).reshape(n, num_t + 1)[:, :num_t]
  return np.cumsum(counts, axis=1, dtype=np.int32)


def _lognormal(z: np.ndarray, sigma: float) -> np.ndarray:
  return np.exp(sigma * z)


def _render(d: _Draws, *, pcwp: np.ndarray, age: np.ndarray, sex: np.ndarray, rate: int,
            duration_s: float, mains_hz: np.ndarray) -> tuple[np.ndarray, dict]:
  """Turns the draws of n ECGs into (n, T, 12) float32 mV and their ground-truth features."""
  n = len(pcwp)
  num_t = num_samples(rate, duration_s)
  num_k = d.rr.shape[1]
  pz, z, u = d.pz, d.z, d.u
  age = np.asarray(age, np.float64)
  male = (np.asarray(sex) == SEX_MALE).astype(np.float64)
  age_c = (age - 60.0) / 10.0                        # decades from 60
  # Standardised log-mPCWP, the driver of every hemodynamic pathway below. Each pathway mixes it
  # with its own patient-level and ECG-level noise: that is the label noise.
  h = (np.log(np.clip(pcwp, *PCWP_RANGE)) - _LOG_MU) / _LOG_SIGMA

  def pathway(weight, patient_col, ecg_col):
    rest = math.sqrt(1.0 - weight ** 2)
    return weight * h + rest * (0.8 * pz[:, patient_col] + 0.6 * z[:, ecg_col])

  s_la = pathway(0.68, 0, 0)     # left-atrial abnormality
  s_hr = pathway(0.50, 1, 1)     # sympathetic drive
  s_lv = pathway(0.58, 2, 2)     # ventricular remodelling
  # Atrial fibrillation: persistent in a patient (strong patient effect), likelier with age and
  # with a high filling pressure (~13% overall: ~9% at mPCWP <= 18, ~23% above).
  af_logit = -3.0 + 0.9 * h + 0.35 * age_c + 1.6 * pz[:, 3] + 0.5 * z[:, 3]
  af = u[:, 0] < 1.0 / (1.0 + np.exp(-af_logit))

  # ---- Rhythm -------------------------------------------------------------------------------
  hr = (68.0 + 9.0 * pz[:, 4] + 5.0 * z[:, 4] + 4.5 * s_hr - 1.0 * age_c + 3.0 * (1 - male)
        + np.where(af, 18.0 + 10.0 * z[:, 5], 0.0))
  hr = np.clip(hr, 42.0, 60.0 / _MIN_RR_S - 5.0)
  rr0 = 60.0 / hr
  resp_hz = 0.15 + 0.2 * u[:, 1]
  resp_phase = 2 * np.pi * u[:, 2]
  rsa = 0.035 * np.exp(-0.25 * age_c) * _lognormal(z[:, 6], 0.4) * np.where(af, 0.0, 1.0)
  sdnn_rel = 0.025 * np.exp(-0.1 * age_c - 0.15 * s_hr) * _lognormal(z[:, 7], 0.35)
  # Sinus: AR(1) beat-to-beat variability; AF: independent RR intervals (irregularly irregular).
  ar = scipy.signal.lfilter([math.sqrt(1 - 0.7 ** 2)], [1.0, -0.7], d.rr, axis=1)
  beat_axis = np.arange(num_k)
  sinus_rr = rr0[:, None] * (1.0 + sdnn_rel[:, None] * ar + rsa[:, None] * np.sin(
      2 * np.pi * resp_hz[:, None] * rr0[:, None] * beat_axis + resp_phase[:, None]))
  af_rr = rr0[:, None] * np.exp(0.2 * d.rr - 0.02)
  rr = np.maximum(np.where(af[:, None], af_rr, sinus_rr), _MIN_RR_S)
  # R peaks: the recording starts at a random phase; one whole beat precedes it so that its T
  # wave can reach into the first samples.
  r_peak = np.cumsum(rr, axis=1) - rr[:, :1] * (2.0 + u[:, 3:4])
  rr_prev = np.concatenate([rr[:, :1], rr[:, :-1]], axis=1)

  # ---- Intervals ----------------------------------------------------------------------------
  qrs_ms = np.clip(88.0 + 6.0 * male + 1.0 * age_c + 5.0 * s_lv + 7.0 * pz[:, 5] + 2.0 * z[:, 8],
                   65.0, 150.0)
  qrs_scale = qrs_ms / _QRS_BASE_MS
  p_sep = 0.030 + 0.009 * s_la + 0.0015 * age_c + 0.004 * pz[:, 6]      # RA -> LA activation lag
  p_sep = np.clip(p_sep, 0.012, 0.075)
  w_ra = _WAVES[_W["p_ra"]][3] * (1.0 + 0.08 * z[:, 9])
  w_la = np.clip(_WAVES[_W["p_la"]][3] + 0.003 * s_la + 0.001 * z[:, 10], 0.012, 0.032)
  p_ms = 1000.0 * (p_sep + 2.0 * (w_ra + w_la))
  pr_ms = np.clip(158.0 + 4.0 * age_c + 22.0 * pz[:, 7] + 5.0 * z[:, 11] + 0.2 * (p_ms - 100.0),
                  110.0, 260.0)
  qrs_onset_to_r = 0.038 * qrs_scale
  p_centre_to_r = pr_ms / 1000.0 + qrs_onset_to_r - 0.5 * p_ms / 1000.0
  qtc_ms = (405.0 + 12.0 * (1 - male) + 4.0 * age_c + 4.0 * s_lv + 12.0 * pz[:, 8]
            + 4.0 * z[:, 12] + 0.5 * (qrs_ms - 90.0))
  t_width = 1.0 + 0.08 * pz[:, 9] + 0.03 * z[:, 13]
  t_peak_to_end = 0.095 * t_width
  # Fridericia: QT = QTc * RR^(1/3), per beat from the preceding RR.
  qt_beat = (qtc_ms / 1000.0)[:, None] * np.cbrt(rr_prev)
  t_centre = r_peak - qrs_onset_to_r[:, None] + qt_beat - t_peak_to_end[:, None]
  p_centre = r_peak - p_centre_to_r[:, None]

  # ---- Amplitudes and directions ------------------------------------------------------------
  habitus = _lognormal(pz[:, 10], 0.22) * _lognormal(z[:, 14], 0.04)
  # QRS voltage: higher in men, falls with age, rises with ventricular remodelling (LVH-like).
  qrs_volt = (habitus * (1.0 + 0.10 * male - 0.05 * (1 - male))
              * np.clip(1.0 - 0.04 * age_c, 0.6, 1.3) * (1.0 + 0.10 * s_lv))
  # T waves flatten with age and with a strained ventricle.
  t_volt = (habitus * np.clip(1.0 - 0.05 * age_c, 0.5, 1.3) * np.clip(1.0 - 0.15 * s_lv, 0.3, 1.4)
            * _lognormal(pz[:, 11], 0.2))
  p_volt = habitus * _lognormal(pz[:, 12], 0.15)
  amp = np.tile(np.array([w[5] for w in _WAVES]), (n, 1))
  direction = np.tile(np.array([w[4] for w in _WAVES], np.float64), (n, 1, 1))
  for name in ("p_ra", "p_la"):
    amp[:, _W[name]] *= p_volt
  amp[:, _W["p_la"]] *= np.clip(1.0 + 0.25 * s_la, 0.5, 2.0)
  # A strained left atrium depolarises later and more posteriorly: the terminal negative P in V1.
  direction[:, _W["p_la"], 2] -= 0.2 * np.clip(s_la, -1.5, 3.0)
  for name in ("q", "r1", "r2", "s"):
    amp[:, _W[name]] *= qrs_volt
  amp[:, _W["r2"]] *= 1.0 + 0.08 * np.clip(s_lv, -2, 3)
  amp[:, _W["s"]] *= 1.0 + 0.12 * np.clip(s_lv, -2, 3)
  for name in ("t1", "t2"):
    amp[:, _W[name]] *= t_volt
  amp[:, _W["f"]] = np.where(af, 0.045 * _lognormal(z[:, 15], 0.4), 0.0) * habitus
  direction /= np.linalg.norm(direction, axis=2, keepdims=True)

  # Heart orientation: the frontal axis turns left with age; rotation varies mostly by patient.
  rot = _rotation(np.deg2rad(10.0 * pz[:, 13] + 1.5 * z[:, 16]),
                  np.deg2rad(18.0 * pz[:, 14] + 2.0 * z[:, 17]),
                  np.deg2rad(-8.0 - 32.0 * pz[:, 15] - 4.0 * age_c + 2.0 * z[:, 18] - 3.0 * s_lv))
  # Lead gains: patient geometry times electrode placement of the day.
  gains = (_lognormal(pz[:, 16:24], 0.08) * _lognormal(z[:, 19:27], 0.05))[:, None, :]
  lead_vectors = np.einsum("nij,jl->nil", np.transpose(rot, (0, 2, 1)), _BASE_LEAD_VECTORS) * gains
  # (n, W, 8): each wave's millivolts in each lead per unit of its Gaussian.
  wave_to_lead = np.einsum("nwi,nil->nwl", direction * amp[:, :, None], lead_vectors)

  # ---- Noise, per electrode -----------------------------------------------------------------
  electrode_gain = np.ones((1, _ELECTRODES))
  electrode_gain[:, 3:] = 1.6  # the chest moves with breathing
  wander = 0.04 * _lognormal(z[:, 27:28], 0.6) * electrode_gain * (0.5 + u[:, None, 4].repeat(
      _ELECTRODES, 1))
  drift = 0.03 * _lognormal(z[:, 28:29], 0.6) * np.ones((1, _ELECTRODES))
  hum_amp = np.where(mains_hz < rate / 2.0, 0.006 * _lognormal(z[:, 29], 0.8), 0.0)
  noise_to_electrode = np.zeros((n, _NOISE_BASIS, _ELECTRODES))
  noise_to_electrode[:, 0] = wander * (1.0 + 0.4 * z[:, 31:40])  # electrodes move unequally
  noise_to_electrode[:, 1] = drift * z[:, 40:49]
  noise_to_electrode[:, 2] = drift * z[:, 49:58]
  hum_mix = hum_amp[:, None] * np.array([1.0, 1.0, 1.0] + [0.3] * 6)[None]
  noise_to_electrode[:, 3] = hum_mix * np.cos(2 * np.pi * u[:, 5:6])
  noise_to_electrode[:, 4] = hum_mix * np.sin(2 * np.pi * u[:, 5:6])
  emg_sd = (0.008 * _lognormal(z[:, 30:31], 0.6)
            * np.array([1.0, 1.0, 1.0] + [0.5] * 6)[None])

  # ---- Render -------------------------------------------------------------------------------
  t = (np.arange(num_t) / rate)[None, :]
  feats = np.empty((n, _NUM_WAVES + _NOISE_BASIS + _ELECTRODES, num_t), np.float32)
  # Breathing moves the heart: beat amplitudes follow the respiratory phase. No P waves in AF.
  beat_amp_qrs = 1.0 + 0.05 * np.sin(2 * np.pi * resp_hz[:, None] * r_peak + resp_phase[:, None])
  beat_amp_p = np.where(af, 0.0, 1.0)[:, None] * beat_amp_qrs
  # Per ECG, each wave's offset from its group's reference time and its width (s).
  offset = np.array([w[2] for w in _WAVES])[None] * np.ones((n, 1))
  width = np.array([w[3] for w in _WAVES])[None] * np.ones((n, 1))
  for name in ("q", "r1", "r2", "s"):
    offset[:, _W[name]] *= qrs_scale
    width[:, _W[name]] *= qrs_scale
  for name in ("t1", "t2"):
    offset[:, _W[name]] *= t_width
    width[:, _W[name]] *= t_width
  offset[:, _W["p_ra"]], width[:, _W["p_ra"]] = -p_sep / 2.0, w_ra
  offset[:, _W["p_la"]], width[:, _W["p_la"]] = p_sep / 2.0, w_la
  width[:, _W["f"]] = 1.0  # the fibrillatory wave is no Gaussian (rendered below)
  offset, inv_width = offset.astype(np.float32), (1.0 / width).astype(np.float32)

  # Each sample takes its group's waves from the nearest beat; the wide T waves also from the
  # neighbouring beat on the other side, so that fast rhythms show no step between beats.
  groups = (("P", p_centre, beat_amp_p, False),
            ("QRS", r_peak, beat_amp_qrs, False),
            ("T", t_centre, np.ones_like(r_peak), True))
  for group, centres, beat_amp, two_sided in groups:
    members = [w for w, spec in enumerate(_WAVES) if spec[1] == group]
    nearest = _nearest_centre(centres, num_t, rate)
    dt = (t - np.take_along_axis(centres, nearest, axis=1)).astype(np.float32)
    amp_near = np.take_along_axis(beat_amp.astype(np.float32), nearest, axis=1)
    for w in members:
      x = (dt - offset[:, w, None]) * inv_width[:, w, None]
      np.multiply(np.exp(-0.5 * x * x), amp_near, out=feats[:, w])
    if two_sided:
      other = np.clip(nearest + np.where(dt >= 0, 1, -1).astype(np.int32), 0, num_k - 1)
      dt = (t - np.take_along_axis(centres, other, axis=1)).astype(np.float32)
      amp_other = np.take_along_axis(beat_amp.astype(np.float32), other, axis=1)
      amp_other[other == nearest] = 0.0
      for w in members:
        x = (dt - offset[:, w, None]) * inv_width[:, w, None]
        feats[:, w] += np.exp(-0.5 * x * x) * amp_other
  # Fibrillatory waves: a frequency- and amplitude-modulated 4-8 Hz oscillation (its weight is
  # zero in sinus rhythm).
  f_hz = 4.0 + 4.0 * u[:, 6:7]
  f_phase = 2 * np.pi * (f_hz * t + 0.4 * np.sin(2 * np.pi * 0.35 * t + 2 * np.pi * u[:, 7:8])
                         ) + 2 * np.pi * u[:, 8:9]
  f_envelope = 1.0 + 0.35 * np.sin(2 * np.pi * 0.21 * t + 2 * np.pi * u[:, 9:10])
  feats[:, _W["f"]] = np.sin(f_phase) * f_envelope
  base = _NUM_WAVES
  feats[:, base + 0] = np.sin(2 * np.pi * resp_hz[:, None] * t + resp_phase[:, None])
  feats[:, base + 1] = np.sin(2 * np.pi * (0.02 + 0.08 * u[:, 10:11]) * t + 2 * np.pi * u[:, 11:12])
  feats[:, base + 2] = np.sin(2 * np.pi * (0.05 + 0.08 * u[:, 10:11]) * t + 2 * np.pi * u[:, 12:13])
  hum_t = 2 * np.pi * (mains_hz[:, None] * t)
  feats[:, base + 3] = np.cos(hum_t)
  feats[:, base + 4] = np.sin(hum_t)
  # Muscle noise: white, uniform amplitude (unit variance after centring and scaling by sqrt 12).
  feats[:, base + _NOISE_BASIS:] = (d.emg - np.float32(0.5)) * (
      math.sqrt(12.0) * emg_sd[:, :, None]).astype(np.float32)

  weights = np.concatenate([
      wave_to_lead,
      noise_to_electrode @ _ELECTRODE_TO_LEAD,
      np.broadcast_to(_ELECTRODE_TO_LEAD, (n, _ELECTRODES, 8)),
  ], axis=1).astype(np.float32)
  eight = np.matmul(np.transpose(weights, (0, 2, 1)), feats)        # (n, 8, T)
  # The electrocardiograph derives III and the augmented leads from I and II.
  ecg = np.empty((n, num_t, NUM_LEADS), np.float32)
  lead_i, lead_ii = eight[:, 0], eight[:, 1]
  half = np.float32(0.5)
  derived = {"I": lead_i, "II": lead_ii, "III": lead_ii - lead_i, "aVR": -(lead_i + lead_ii) * half,
             "aVL": lead_i - lead_ii * half, "aVF": lead_ii - lead_i * half}
  derived.update({f"V{c + 1}": eight[:, 2 + c] for c in range(6)})
  for index, name in enumerate(LEADS):
    ecg[:, :, index] = derived[name]

  in_window = (r_peak >= 0) & (r_peak < duration_s)
  # The rate a reader would measure: mean RR inside the recording (the nominal one when a short
  # recording holds fewer than two beats).
  both = in_window[:, 1:] & in_window[:, :-1]
  rr_sum = np.where(both, np.diff(r_peak, axis=1), 0.0).sum(axis=1)
  mean_rr = np.where(both.any(axis=1), rr_sum / np.maximum(both.sum(axis=1), 1), rr0)
  v1 = 2
  truth = {
      "af": af,
      "heart_rate_bpm": (60.0 / mean_rr).astype(np.float32),
      "p_duration_ms": np.where(af, np.nan, p_ms).astype(np.float32),
      "pr_interval_ms": np.where(af, np.nan, pr_ms).astype(np.float32),
      "qrs_duration_ms": qrs_ms.astype(np.float32),
      "qtc_ms": qtc_ms.astype(np.float32),
      "qt_interval_ms": (qtc_ms * np.cbrt(mean_rr)).astype(np.float32),
      "p_terminal_v1_mv": np.where(af, np.nan, wave_to_lead[:, _W["p_la"], v1]).astype(np.float32),
      "qrs_voltage_scale": qrs_volt.astype(np.float32),
      "t_amplitude_scale": t_volt.astype(np.float32),
      "mains_hz": mains_hz.astype(np.float32),
  }
  return ecg, truth


def _check_waveform_args(sampling_rate: int, duration_s: float) -> None:
  if not (isinstance(sampling_rate, (int, np.integer)) and sampling_rate >= 50):
    raise ValueError(f"sampling_rate must be an integer >= 50 Hz, got {sampling_rate!r}")
  if not (np.isfinite(duration_s) and 1.0 <= duration_s <= 600.0):
    raise ValueError(f"duration_s must lie in [1, 600] s, got {duration_s!r}")


def _draw_traits(rng: np.random.Generator) -> tuple[np.ndarray, float]:
  """A patient's physiological traits (standard normals) and the mains frequency of the site."""
  return rng.standard_normal(_PATIENT_NORMALS), (50.0 if rng.random() < 0.5 else 60.0)


def simulate_ecgs(rng: np.random.Generator, n: int, *, pcwp: np.ndarray, age: np.ndarray,
                  sex: np.ndarray, sampling_rate: int = 250, duration_s: float = 10.0
                  ) -> tuple[np.ndarray, dict]:
  """Simulates n ECGs of n distinct patients with the given mPCWP (mmHg), age (years), sex.

  Returns (n, T, 12) float32 millivolts in ``LEADS`` order and a dict of ground-truth features,
  one array of length n each: 'af' (bool), 'heart_rate_bpm', 'p_duration_ms', 'pr_interval_ms'
  (NaN in AF), 'qrs_duration_ms', 'qtc_ms', 'qt_interval_ms', 'p_terminal_v1_mv' (the left-atrial
  P component's peak in V1, negative when it points away; NaN in AF), 'qrs_voltage_scale',
  't_amplitude_scale', 'mains_hz'.
  """
  _check_waveform_args(sampling_rate, duration_s)
  pcwp = np.asarray(pcwp, np.float64).reshape(-1)
  age = np.asarray(age, np.float64).reshape(-1)
  sex = np.asarray(sex).reshape(-1)
  for key, arr in (("pcwp", pcwp), ("age", age), ("sex", sex)):
    if arr.shape != (n,):
      raise ValueError(f"{key} has {arr.shape[0]} values, expected n={n}")
  if not np.all(np.isfinite(pcwp)):
    raise ValueError("pcwp must be finite (the latent mPCWP shapes every ECG)")
  if not np.all(np.isfinite(age)):
    raise ValueError("age must be finite")
  if not np.all(np.isin(sex, (SEX_FEMALE, SEX_MALE))):
    raise ValueError(f"sex must be {SEX_FEMALE} (female) or {SEX_MALE} (male)")
  num_t = num_samples(sampling_rate, duration_s)
  num_k = _max_beats(duration_s)
  if n == 0:
    empty = {key: np.zeros(0, bool if key == "af" else np.float32) for key in TRUTH_KEYS}
    return np.zeros((0, num_t, NUM_LEADS), np.float32), empty
  children = rng.spawn(n)
  patients = [_draw_traits(c) for c in children]
  draws = _stack_draws(np.stack([p[0] for p in patients]),
                       [_draw_ecg(c, num_t, num_k) for c in children])
  mains = np.array([p[1] for p in patients])
  return _render(draws, pcwp=pcwp, age=age, sex=sex, rate=sampling_rate, duration_s=duration_s,
                 mains_hz=mains)


def _patient(seed: int, key: int, index: int, ecgs_per_patient: tuple[int, int]) -> dict:
  """A patient's own draws: demographics, number of ECGs, the mPCWP of each ECG, traits."""
  rng = np.random.default_rng(np.random.SeedSequence([seed, key, index]))
  z_age, z_pcwp = rng.standard_normal(2)
  male = rng.random() < MALE_FRACTION
  count = int(rng.integers(ecgs_per_patient[0], ecgs_per_patient[1] + 1))
  age = float(np.clip(AGE_MEAN + AGE_SD * z_age, *AGE_RANGE))
  shared = _PCWP_AGE_CORR * z_age + math.sqrt(1 - _PCWP_AGE_CORR ** 2) * z_pcwp
  own = rng.standard_normal(count)
  log_dev = math.sqrt(_PCWP_PATIENT_SHARE) * shared + math.sqrt(1 - _PCWP_PATIENT_SHARE) * own
  pcwp = np.clip(np.exp(_LOG_MU + _LOG_SIGMA * log_dev), *PCWP_RANGE)
  traits, mains = _draw_traits(rng)
  return {"age": age, "sex": SEX_MALE if male else SEX_FEMALE, "count": count, "pcwp": pcwp,
          "traits": traits, "mains": mains}


class _PendingEcg(NamedTuple):
  ecg_id: str
  patient_id: str
  age: float
  sex: int
  pcwp: float
  traits: np.ndarray
  draws: tuple
  mains_hz: float


def generate(split: str, num_patients: int, *, seed: int, sampling_rate: int = 250,
             duration_s: float = 10.0, labeled: bool = True,
             ecgs_per_patient: tuple[int, int] = (1, 4), chunk_size: int = 256
             ) -> Iterator[dict[str, np.ndarray]]:
  """Yields the ECGs of one split in chunks of ``chunk_size`` (the last may be shorter).

  Each chunk is a dict of equal-length arrays: 'ecg' float32 (n, T, 12) mV; 'ecg_id' str,
  ``{split}-p{patient:06d}-e{k}``, unique across splits; 'patient_id' str ``{split}-p{patient:06d}``
  (splits are patient-disjoint by construction); 'age' float32 years; 'sex' int32 (0 female,
  1 male); 'pcwp' float32 mmHg (NaN when ``labeled`` is False; the latent mPCWP still shapes the
  ECG); 'af' bool (the true rhythm). A patient has ``ecgs_per_patient`` = (min, max) ECGs,
  inclusive. The split name is mixed into the seed, and every patient and ECG has its own seed, so
  the output does not depend on ``chunk_size``.
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
  num_k = _max_beats(duration_s)
  pending: list[_PendingEcg] = []

  def flush(batch: list[_PendingEcg]) -> dict[str, np.ndarray]:
    draws = _stack_draws(np.stack([b.traits for b in batch]), [b.draws for b in batch])
    pcwp = np.array([b.pcwp for b in batch])
    age = np.array([b.age for b in batch])
    sex = np.array([b.sex for b in batch], np.int32)
    mains = np.array([b.mains_hz for b in batch])
    ecg, truth = _render(draws, pcwp=pcwp, age=age, sex=sex, rate=sampling_rate,
                         duration_s=duration_s, mains_hz=mains)
    return {
        "ecg": ecg,
        "ecg_id": np.array([b.ecg_id for b in batch]),
        "patient_id": np.array([b.patient_id for b in batch]),
        "age": age.astype(np.float32),
        "sex": sex,
        "pcwp": (pcwp if labeled else np.full_like(pcwp, np.nan)).astype(np.float32),
        "af": truth["af"],
    }

  for index in range(num_patients):
    p = _patient(seed, key, index, (lo, hi))
    patient_id = f"{split}-p{index:06d}"
    for k in range(p["count"]):
      ecg_rng = np.random.default_rng(np.random.SeedSequence([seed, key, index], spawn_key=(k,)))
      pending.append(_PendingEcg(f"{patient_id}-e{k}", patient_id, p["age"], p["sex"],
                                 float(p["pcwp"][k]), p["traits"],
                                 _draw_ecg(ecg_rng, num_t, num_k), p["mains"]))
      if len(pending) == chunk_size:
        yield flush(pending)
        pending = []
  if pending:
    yield flush(pending)
