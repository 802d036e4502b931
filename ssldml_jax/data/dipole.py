"""The cardiac dipole model: turns one batch of random draws into 12-lead ECGs and their truth.

The heart is a single 3-D current dipole whose components are sums of Gaussian bumps per wave
(the ECGSYN / McSharry and Sameni family of models); ``waves`` says which waves there are and
how each condition changes them. Here: the rhythm (an RR series with respiratory sinus
arrhythmia and correlated heart-rate variability, or an irregularly irregular one in atrial
fibrillation; premature beats shorten one interval and lengthen the next, fully for
ventricular beats: the compensatory pause), the intervals (PR, QRS, QT after Fridericia), the
voltage criteria (LVH scaled up to the patient's Sokolow-Lyon voltage, low voltage scaled down
under 0.5 mV in every limb lead, both on the conducted beat's noise-free QRS), and the signals.

The dipole is projected onto the lead vectors of I, II and V1..V6 after a patient-specific
rotation of the heart and per-lead gains. Noise is added per *electrode* (RA, LA, LL, C1..C6)
and turned into leads the way an electrocardiograph does it, so III, aVR, aVL and aVF are
computed from I and II and Einthoven's and Goldberger's relations hold exactly.

Rendering only ever sees the draws of each ECG (no draw depends on which ECGs share a batch),
so the output is bitwise identical whatever the batch. Waves whose amplitude is zero in every
beat of an ECG (most condition waves) are not evaluated for it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import scipy.signal
import scipy.special

from ssldml_jax.data import conditions as cond
from ssldml_jax.data import waves
from ssldml_jax.data.records import LEADS, NUM_LEADS, SEX_MALE
from ssldml_jax.data.waves import NUM_WAVES, PZ, W, WAVES

# Fastest sinus or AF rhythm simulated. With premature beats (never two in a row, at least
# 0.55 of the interval) beats are at least 0.8 of it apart on average, which fixes the number of
# beats rendered per ECG, so that the arrays (and therefore the draws) do not depend on the batch.
MIN_RR_S = 0.33
_MIN_COUPLING_S = 0.30     # no premature beat earlier than this after the previous one
_ECTOPY_MIN_RR_S = 0.50    # premature beats only at rates up to 120 bpm

# Electrodes RA, LA, LL, C1..C6 -> leads I, II, V1..V6 (the 8 independent leads).
ELECTRODES = 9
_ELECTRODE_TO_LEAD = np.zeros((ELECTRODES, 8), np.float32)
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
# Columns of the 8 independent leads.
_I, _II, _V1, _V3, _V5, _V6 = 0, 1, 2, 4, 6, 7

_NOISE_BASIS = 5  # respiratory wander, two slow drifts, mains cos, mains sin.
_BLOCK = 16       # ECGs whose signals are formed together

# Draws per ECG (the patient's are ``waves.PZ``): standard normals, uniforms, per-beat uniforms.
ECG_NORMALS = 64
ECG_UNIFORMS = 13
BEAT_UNIFORMS = 2   # per beat: premature or not, coupling jitter


def max_beats(duration_s: float) -> int:
  return int(math.ceil(duration_s / (0.8 * MIN_RR_S))) + 6


class Draws(NamedTuple):
  """Every random number one batch of n ECGs consumes, stacked from per-ECG generators."""
  pz: np.ndarray      # (n, waves.PATIENT_NORMALS) float64, shared by a patient's ECGs
  z: np.ndarray       # (n, ECG_NORMALS) float64
  u: np.ndarray       # (n, ECG_UNIFORMS) float64 in [0, 1)
  rr: np.ndarray      # (n, K) float64 normals: beat-to-beat variability
  beat_u: np.ndarray  # (n, BEAT_UNIFORMS, K) float64 in [0, 1)
  emg: np.ndarray     # (n, 9, T) float32 in [0, 1): uniform draws are 5x cheaper than normals


def draw_ecg(rng: np.random.Generator, num_t: int, num_beats: int) -> tuple:
  """One ECG's own draws, in the order ``Draws`` stacks them (after the patient's)."""
  return (rng.standard_normal(ECG_NORMALS), rng.random(ECG_UNIFORMS),
          rng.standard_normal(num_beats), rng.random((BEAT_UNIFORMS, num_beats)),
          rng.random((ELECTRODES, num_t), np.float32))


def stack_draws(patient_normals: np.ndarray, ecg_draws) -> Draws:
  z, u, rr, beat_u, emg = zip(*ecg_draws)
  return Draws(np.asarray(patient_normals, np.float64), np.stack(z), np.stack(u), np.stack(rr),
               np.stack(beat_u), np.stack(emg))


def _rotation(ax: np.ndarray, ay: np.ndarray, az: np.ndarray) -> np.ndarray:
  """(n, 3, 3) rotations: about z (frontal axis), then y (horizontal), then x; radians."""
  def rot(angle, i, j):
    r = np.zeros(angle.shape + (3, 3))
    r[:, 0, 0] = r[:, 1, 1] = r[:, 2, 2] = 1.0
    c, s = np.cos(angle), np.sin(angle)
    r[:, i, i], r[:, i, j], r[:, j, i], r[:, j, j] = c, -s, s, c
    return r
  return rot(ax, 1, 2) @ rot(ay, 2, 0) @ rot(az, 0, 1)


def _beat_index(refs: np.ndarray, num_t: int, rate: float, split: float) -> np.ndarray:
  """For each sample, the beat it belongs to: ``(n, K)`` sorted reference times -> ``(n, T)``.

  A sample belongs to beat k+1 from ``split`` of the way from reference k to k+1 on (0.5: the
  nearest reference), so the index is a running count of boundaries passed: one bincount and
  one cumsum.
  """
  n, _ = refs.shape
  bounds = refs[:, :-1] + split * (refs[:, 1:] - refs[:, :-1])
  first = np.clip(np.ceil(bounds * rate), 0, num_t).astype(np.int64)
  flat = (np.arange(n)[:, None] * (num_t + 1) + first).ravel()
  counts = np.bincount(flat, minlength=n * (num_t + 1)).reshape(n, num_t + 1)[:, :num_t]
  return np.cumsum(counts, axis=1, dtype=np.int32)


def _gather(per_beat: np.ndarray, beat: np.ndarray) -> np.ndarray:
  """``per_beat[i, beat[i, t]]``: ``(n, K)`` values at ``(n, T)`` beat indices."""
  num_k = per_beat.shape[1]
  flat = beat + (np.arange(len(beat), dtype=np.int32) * num_k)[:, None]
  return np.take(per_beat.ravel(), flat)


class _Rhythm(NamedTuple):
  onset: np.ndarray        # (n, K) QRS onsets, s
  sinus_onset: np.ndarray  # (n, K) where the sinus beat's QRS would be (differs at a PVC)
  rr_prev: np.ndarray      # (n, K) the interval before each beat, s
  pvc: np.ndarray          # (n, K) bool
  pac: np.ndarray          # (n, K) bool
  rr0: np.ndarray          # (n,) nominal cycle, s
  resp_hz: np.ndarray
  resp_phase: np.ndarray


def _rhythm(d: Draws, c: dict, af: np.ndarray, s_hr, age_c, male) -> _Rhythm:
  """Beat times: sinus with variability or AF, premature beats with their pauses."""
  pz, z, u = d.pz, d.z, d.u
  num_k = d.rr.shape[1]
  hr = (68.0 + 9.0 * pz[:, PZ["hr"]] + 5.0 * z[:, 4] + 4.5 * s_hr - 1.0 * age_c
        + 3.0 * (1 - male) + np.where(af, 18.0 + 10.0 * z[:, 5], 0.0))
  hr = np.clip(hr, 42.0, 60.0 / MIN_RR_S - 5.0)
  rr0 = 60.0 / hr
  resp_hz = 0.15 + 0.2 * u[:, 1]
  resp_phase = 2 * np.pi * u[:, 2]
  rsa = 0.035 * np.exp(-0.25 * age_c) * waves.lognormal(z[:, 6], 0.4) * np.where(af, 0.0, 1.0)
  sdnn_rel = 0.025 * np.exp(-0.1 * age_c - 0.15 * s_hr) * waves.lognormal(z[:, 7], 0.35)
  # Sinus: AR(1) beat-to-beat variability; AF: independent RR intervals (irregularly irregular).
  ar = scipy.signal.lfilter([math.sqrt(1 - 0.7 ** 2)], [1.0, -0.7], d.rr, axis=1)
  beat_axis = np.arange(num_k)
  sinus_rr = rr0[:, None] * (1.0 + sdnn_rel[:, None] * ar + rsa[:, None] * np.sin(
      2 * np.pi * resp_hz[:, None] * rr0[:, None] * beat_axis + resp_phase[:, None]))
  af_rr = rr0[:, None] * np.exp(0.2 * d.rr - 0.02)
  rr = np.maximum(np.where(af[:, None], af_rr, sinus_rr), MIN_RR_S)

  # Premature beats: a per-beat chance (the patient's burden, varying day to day), never on the
  # first two beats, never two in a row, only when the interval leaves room for one.
  p_pvc = np.where(c["pvc"], np.clip(
      0.10 * waves.lognormal(pz[:, PZ["pvc_burden"]] + 0.5 * z[:, 58], 0.5), 0.03, 0.35), 0.0)
  p_pac = np.where(c["pac"] & ~af, np.clip(
      0.10 * waves.lognormal(pz[:, PZ["pac_burden"]] + 0.5 * z[:, 59], 0.5), 0.03, 0.30), 0.0)
  room = (beat_axis >= 2)[None] & (rr >= _ECTOPY_MIN_RR_S)
  draw = d.beat_u[:, 0]
  pvc = room & (draw < p_pvc[:, None])
  pac = room & (draw > 1.0 - p_pac[:, None])
  ectopic = pvc | pac
  keep = ectopic & ~np.concatenate([np.zeros((len(rr), 1), bool), ectopic[:, :-1]], axis=1)
  pvc, pac = pvc & keep, pac & keep
  # Coupling: fixed per patient (a unifocal focus) with a little jitter per beat.
  jitter = 0.04 * (d.beat_u[:, 1] - 0.5)
  c_pvc = np.clip(0.56 + 0.05 * pz[:, PZ["pvc_coupling"]], 0.45, 0.70)[:, None] + jitter
  c_pac = np.clip(0.70 + 0.05 * pz[:, PZ["pac_coupling"]], 0.55, 0.85)[:, None] + jitter
  early = np.where(pvc, c_pvc, np.where(pac, c_pac, 1.0))
  short = np.where(ectopic & keep, np.maximum(early * rr, _MIN_COUPLING_S), rr)
  deficit = rr - short
  # The next interval: a ventricular beat leaves the sinus node alone (the next sinus beat comes
  # on time: full compensatory pause); an atrial one resets it (a normal cycle, a bit longer).
  carry = np.where(pvc, deficit, np.where(pac, 0.1 * rr, 0.0))
  rr_new = short + np.concatenate([np.zeros((len(rr), 1)), carry[:, :-1]], axis=1)
  # QRS onsets: the recording starts at a random phase; two beats precede it so that their T
  # waves can reach into the first samples.
  onset = np.cumsum(rr_new, axis=1) - rr_new[:, :1] * (2.0 + u[:, 3:4])
  rr_prev = np.concatenate([rr_new[:, :1], rr_new[:, :-1]], axis=1)
  return _Rhythm(onset, onset + np.where(pvc, deficit, 0.0), rr_prev, pvc, pac, rr0, resp_hz,
                 resp_phase)


def _qrs_template(offset, width, w2l, grid_s: np.ndarray) -> np.ndarray:
  """The conducted beat's QRS in the 8 independent leads on a time grid: ``(n, G, 8)``."""
  idx = waves.QRS_WAVES
  x = (grid_s[None, :, None] - offset[:, None, idx]) / width[:, None, idx]
  return np.einsum("ngw,nwl->ngl", np.exp(-0.5 * x * x), w2l[:, idx])


def _limb_leads(lead_i: np.ndarray, lead_ii: np.ndarray) -> dict[str, np.ndarray]:
  """The six limb leads (I, II, III, aVR, aVL, aVF, in this order) as the electrocardiograph
  derives them from I and II; in the dtype of the inputs."""
  half = np.float32(0.5)
  return {"I": lead_i, "II": lead_ii, "III": lead_ii - lead_i, "aVR": -(lead_i + lead_ii) * half,
          "aVL": lead_i - lead_ii * half, "aVF": lead_ii - lead_i * half}


def _voltages(template: np.ndarray) -> dict[str, np.ndarray]:
  """Sokolow-Lyon and Cornell voltages and the largest limb-lead QRS (mV) of a QRS template,
  and its frontal-plane axis (degrees, from the net areas in I and aVF)."""
  # (n, G, 6): I, II, III, aVR, aVL, aVF.
  limb = np.stack(list(_limb_leads(template[:, :, _I], template[:, :, _II]).values()), axis=-1)
  r = np.maximum(template.max(axis=1), 0.0)
  s = np.maximum(-template.min(axis=1), 0.0)
  r_avl = np.maximum(limb[:, :, 4].max(axis=1), 0.0)
  area = limb.sum(axis=1)
  return {"sokolow_lyon_mv": s[:, _V1] + np.maximum(r[:, _V5], r[:, _V6]),
          "cornell_mv": r_avl + s[:, _V3],
          "limb_qrs_mv": (limb.max(axis=1) - limb.min(axis=1)).max(axis=1),
          "qrs_axis_deg": np.degrees(np.arctan2(area[:, 5], area[:, 0]))}


def render(d: Draws, *, pcwp: np.ndarray, age: np.ndarray, sex: np.ndarray,
           patient_conditions: np.ndarray, rate: int, duration_s: float,
           mains_hz: np.ndarray) -> tuple[np.ndarray, dict]:
  """Turns the draws of n ECGs into (n, T, 12) float32 mV and their ground-truth features.

  ``patient_conditions`` is ``(n, cond.NUM_CONDITIONS)`` bool; atrial fibrillation shows on an
  ECG of a patient with it when ``u[:, 0] < cond.AF_EXPRESSED``. See ``simulator`` for the keys
  of the truth.
  """
  n = len(pcwp)
  num_t = d.emg.shape[-1]  # the draws' samples: rate * duration_s, rounded
  pz, z, u = d.pz, d.z, d.u
  age = np.asarray(age, np.float64)
  male = (np.asarray(sex) == SEX_MALE).astype(np.float64)
  age_c = (age - 60.0) / 10.0                        # decades from 60
  c = dict(cond.as_dict(np.asarray(patient_conditions, bool)))
  af = c["af"] & (u[:, 0] < cond.AF_EXPRESSED)
  c["af"] = af
  lvh = c["lvh"] | c["lvh_strain"]
  # Standardised log-mPCWP of the day drives the continuous pathways below (left-atrial
  # abnormality, sympathetic drive, ventricular remodelling), each mixed with its own patient-
  # and ECG-level noise: the label noise. The conditions follow the phenotype, not the day.
  h = (np.log(pcwp) - cond.LOG_PCWP_MEAN) / cond.LOG_PCWP_SD

  def pathway(weight, patient_col, ecg_col):
    rest = math.sqrt(1.0 - weight ** 2)
    return weight * h + rest * (0.8 * pz[:, patient_col] + 0.6 * z[:, ecg_col])

  s_la = pathway(0.68, PZ["s_la"], 0)
  s_hr = pathway(0.50, PZ["s_hr"], 1)
  s_lv = pathway(0.58, PZ["s_lv"], 2)
  rhythm = _rhythm(d, c, af, s_hr, age_c, male)

  # ---- Intervals (s) ------------------------------------------------------------------------
  qrs_normal = np.clip(88.0 + 6.0 * male + 1.0 * age_c + 5.0 * s_lv + 6.0 * pz[:, PZ["qrs"]]
                       + 2.0 * z[:, 8] + np.where(lvh, 8.0, 0.0), 70.0, 115.0) / 1000.0
  qrs_lbbb = np.clip(150.0 + 12.0 * pz[:, PZ["bbb_qrs"]] + 2.0 * z[:, 60], 128.0, 185.0) / 1000.0
  qrs_rbbb = np.clip(140.0 + 8.0 * pz[:, PZ["bbb_qrs"]] + 2.0 * z[:, 60], 124.0, 165.0) / 1000.0
  qrs = np.where(c["lbbb"], qrs_lbbb, np.where(c["rbbb"], qrs_rbbb, qrs_normal))
  p_sep = np.clip(0.030 + 0.009 * s_la + 0.0015 * age_c + 0.004 * pz[:, PZ["p_sep"]],
                  0.012, 0.075)                                    # RA -> LA activation lag
  w_ra = 0.016 * (1.0 + 0.08 * z[:, 9])
  w_la = np.clip(0.018 + 0.003 * s_la + 0.001 * z[:, 10], 0.012, 0.032)
  p_ms = 1000.0 * (p_sep + 2.0 * (w_ra + w_la))
  pr_normal = np.clip(158.0 + 4.0 * age_c + 16.0 * pz[:, PZ["pr"]] + 5.0 * z[:, 11]
                      + 0.2 * (p_ms - 100.0), 112.0, 196.0)
  pr_block = np.clip(205.0 + 45.0 * waves.lognormal(pz[:, PZ["avb_pr"]], 0.5) + 5.0 * z[:, 11],
                     210.0, 350.0)
  pr_ms = np.where(c["av_block_1"], pr_block, pr_normal)
  # Conduction delays lengthen QT about as much as they widen the QRS.
  qtc_ms = (405.0 + 12.0 * (1 - male) + 4.0 * age_c + 4.0 * s_lv + 12.0 * pz[:, PZ["qtc"]]
            + 4.0 * z[:, 12] + 0.7 * (1000.0 * qrs - 90.0))
  t_width = 1.0 + 0.08 * pz[:, PZ["t_width"]] + 0.03 * z[:, 13]
  t_peak_to_end = 0.095 * t_width
  # Fridericia: QT = QTc * RR^(1/3), per beat from the preceding RR.
  qt_beat = (qtc_ms / 1000.0)[:, None] * np.cbrt(rhythm.rr_prev)
  qrs_pvc = np.clip(0.160 + 0.015 * pz[:, PZ["pvc_width"]], 0.130, 0.200)
  t_ref = (rhythm.onset + qt_beat - t_peak_to_end[:, None]
           + np.where(rhythm.pvc, (qrs_pvc - qrs)[:, None], 0.0))
  # The sinus P fires on time even when a ventricular beat came first (then it is buried).
  p_onset_to_ref = p_sep / 2.0 + 2.0 * w_ra
  pac_width = 0.024
  p_ref = np.where(rhythm.pac,
                   rhythm.onset - (pr_ms / 1000.0 + 0.02)[:, None] + 2.2 * pac_width,
                   rhythm.sinus_onset - (pr_ms / 1000.0 - p_onset_to_ref)[:, None])

  # ---- Waves: amplitudes, directions, offsets and widths per ECG ------------------------------
  amp = np.tile(np.array([w[4] for w in WAVES]), (n, 1))
  direction = np.tile(np.array([w[3] for w in WAVES], np.float64), (n, 1, 1))
  offset = np.zeros((n, NUM_WAVES))
  width = np.ones((n, NUM_WAVES))
  waves.set_morphology(amp, direction, offset, width, c=c, pz=pz, s_la=s_la, s_lv=s_lv, lvh=lvh,
                       qrs=qrs, qrs_normal=qrs_normal, qrs_pvc=qrs_pvc)
  offset[:, W["p_ra"]], width[:, W["p_ra"]] = -p_sep / 2.0, w_ra
  offset[:, W["p_la"]], width[:, W["p_la"]] = p_sep / 2.0, w_la
  width[:, W["p_ect"]] = pac_width
  for name, off, wid in (("t1", -0.040, 0.055), ("t2", 0.012, 0.034)):
    offset[:, W[name]], width[:, W[name]] = off * t_width, wid * t_width
  # The ST force sits between the J point and the T peak (of the nominal beat).
  j_to_t = np.maximum(qtc_ms / 1000.0 * np.cbrt(rhythm.rr0) - t_peak_to_end - qrs, 0.08)
  offset[:, W["st"]], width[:, W["st"]] = -0.65 * j_to_t, 0.33 * j_to_t
  offset[:, W["pvc_t"]], width[:, W["pvc_t"]] = 0.0, 0.065 * t_width

  habitus = waves.lognormal(pz[:, PZ["habitus"]], 0.22) * waves.lognormal(z[:, 14], 0.04)
  # QRS voltage: higher in men, falls with age, rises with ventricular remodelling.
  qrs_volt = (habitus * (1.0 + 0.10 * male - 0.05 * (1 - male))
              * np.clip(1.0 - 0.04 * age_c, 0.6, 1.3) * (1.0 + 0.10 * s_lv))
  # T waves flatten with age and with a strained ventricle.
  t_volt = (habitus * np.clip(1.0 - 0.05 * age_c, 0.5, 1.3)
            * np.clip(1.0 - 0.15 * s_lv, 0.3, 1.4) * waves.lognormal(pz[:, PZ["t_volt"]], 0.2))
  p_volt = habitus * waves.lognormal(pz[:, PZ["p_volt"]], 0.15)
  for names, scale in ((("p_ra", "p_la", "p_ect"), p_volt),
                       (("q", "r1", "r2", "s", "late"), qrs_volt),
                       (("t1", "t2", "st"), t_volt), (("pvc1", "pvc2", "pvc_t"), habitus)):
    for name in names:
      amp[:, W[name]] *= scale
  amp[:, W["f"]] = np.where(af, 0.045 * waves.lognormal(z[:, 15], 0.4), 0.0) * habitus
  direction = waves.unit(direction)

  # Heart orientation: the frontal axis turns left with age and with LVH; rotation varies
  # mostly by patient.
  rotation_deg = np.stack([10.0 * pz[:, PZ["rot_x"]] + 1.5 * z[:, 16],
                           18.0 * pz[:, PZ["rot_y"]] + 2.0 * z[:, 17],
                           -8.0 - 32.0 * pz[:, PZ["rot_z"]] - 4.0 * age_c + 2.0 * z[:, 18]
                           - 3.0 * s_lv - np.where(lvh, 8.0, 0.0)], axis=1)
  rot = _rotation(*np.deg2rad(rotation_deg).T)
  # Lead gains: patient geometry times electrode placement of the day.
  gains = (waves.lognormal(pz[:, PZ["g0"]:PZ["g7"] + 1], 0.08)
           * waves.lognormal(z[:, 19:27], 0.05))[:, None, :]
  lead_vectors = np.einsum("nij,jl->nil", np.transpose(rot, (0, 2, 1)), _BASE_LEAD_VECTORS) * gains
  # (n, W, 8): each wave's millivolts in each lead per unit of its Gaussian.
  wave_to_lead = np.einsum("nwi,nil->nwl", direction * amp[:, :, None], lead_vectors)

  # ---- Voltage criteria, met on the conducted beat's clean QRS ------------------------------
  grid = np.arange(0.0, 0.25, 0.002)
  volts = _voltages(_qrs_template(offset, width, wave_to_lead, grid))
  # LVH: the left-posterior forces grow until Sokolow-Lyon reaches the patient's voltage.
  lvh_target = 3.7 + 0.6 * waves.lognormal(pz[:, PZ["lvh_volt"]], 0.5)
  lvh_gain = np.where(lvh, np.maximum(lvh_target / volts["sokolow_lyon_mv"], 1.0), 1.0)
  # Low voltage (effusion, obesity, infiltration): the whole heart's signal is attenuated until
  # no limb lead's QRS reaches 0.5 mV.
  low_target = 0.28 + 0.14 * scipy.special.ndtr(pz[:, PZ["low_volt"]])
  low_gain = np.where(c["low_voltage"],
                      np.minimum(low_target / volts["limb_qrs_mv"], 1.0), 1.0)
  wave_to_lead[:, waves.QRS_WAVES] *= lvh_gain[:, None, None]
  wave_to_lead *= low_gain[:, None, None]
  volts.update({k: volts[k] * lvh_gain * low_gain
                for k in ("sokolow_lyon_mv", "cornell_mv", "limb_qrs_mv")})

  beat_amp = _beat_amplitudes(rhythm, af)
  # The signals are formed a few ECGs at a time: the working set stays in cache and the
  # allocator reuses its blocks (fresh pages cost more than the arithmetic on them).
  ecg = np.empty((n, num_t, NUM_LEADS), np.float32)
  for lo in range(0, n, _BLOCK):
    rows = slice(lo, min(lo + _BLOCK, n))
    feats = _wave_signals(rhythm.onset[rows], p_ref[rows], t_ref[rows],
                          {k: v[rows] for k, v in beat_amp.items()}, amp[rows], offset[rows],
                          width[rows], u=u[rows], rate=rate, num_t=num_t)
    _leads(feats, wave_to_lead[rows], d.emg[rows], u=u[rows], z=z[rows],
           resp_hz=rhythm.resp_hz[rows], resp_phase=rhythm.resp_phase[rows], rate=rate,
           mains_hz=mains_hz[rows], out=ecg[rows])

  in_window = (rhythm.onset >= 0) & (rhythm.onset < duration_s)
  # The rate a reader would measure: mean RR inside the recording (the nominal one when a short
  # recording holds fewer than two beats).
  both = in_window[:, 1:] & in_window[:, :-1]
  rr_sum = np.where(both, np.diff(rhythm.onset, axis=1), 0.0).sum(axis=1)
  mean_rr = np.where(both.any(axis=1), rr_sum / np.maximum(both.sum(axis=1), 1), rhythm.rr0)
  present = np.stack([c[name] for name in cond.CONDITIONS], axis=1)
  truth = {
      "af": af,
      "conditions": present,
      "heart_rate_bpm": (60.0 / mean_rr).astype(np.float32),
      "p_duration_ms": np.where(af, np.nan, p_ms).astype(np.float32),
      "pr_interval_ms": np.where(af, np.nan, pr_ms).astype(np.float32),
      "qrs_duration_ms": (1000.0 * qrs).astype(np.float32),
      "qtc_ms": qtc_ms.astype(np.float32),
      "qt_interval_ms": (qtc_ms * np.cbrt(mean_rr)).astype(np.float32),
      "p_terminal_v1_mv": np.where(af, np.nan, wave_to_lead[:, W["p_la"], _V1]).astype(np.float32),
      "qrs_voltage_scale": (qrs_volt * lvh_gain * low_gain).astype(np.float32),
      "t_amplitude_scale": (t_volt * low_gain).astype(np.float32),
      "pvc_count": (rhythm.pvc & in_window).sum(axis=1).astype(np.int32),
      "pac_count": (rhythm.pac & in_window).sum(axis=1).astype(np.int32),
      "heart_rotation_deg": rotation_deg.astype(np.float32),
      "mains_hz": mains_hz.astype(np.float32),
  }
  truth.update({k: v.astype(np.float32) for k, v in volts.items()})
  return ecg, truth


def _beat_amplitudes(rhythm: _Rhythm, af: np.ndarray) -> dict[str, np.ndarray]:
  """Per beat kind, each beat's amplitude ``(n, K)`` float32: which beats a wave appears in.

  Breathing moves the heart, so P and QRS amplitudes follow the respiratory phase.
  """
  resp = 1.0 + 0.05 * np.sin(2 * np.pi * rhythm.resp_hz[:, None] * rhythm.onset
                             + rhythm.resp_phase[:, None])
  sinus_p = ~rhythm.pac & ~af[:, None]
  return {"sinus": (resp * sinus_p).astype(np.float32),
          "atrial": (resp * rhythm.pac).astype(np.float32),
          "conducted": (resp * ~rhythm.pvc).astype(np.float32),
          "ventricular": (resp * rhythm.pvc).astype(np.float32),
          "conducted_t": (~rhythm.pvc).astype(np.float32),
          "ventricular_t": rhythm.pvc.astype(np.float32)}


def _wave_signals(onset, p_ref, t_ref, beat_amp, amp, offset, width, *, u, rate, num_t
                  ) -> np.ndarray:
  """``(n, NUM_WAVES, T)`` float32: each wave's unit signal over the recording.

  Each sample takes its group's waves from its own beat; the wide T-group waves also from the
  neighbouring beat on the other side, so that fast rhythms show no step between beats. A wave
  is evaluated only for the ECGs where it appears (the other rows stay zero).
  """
  n = len(amp)
  t = (np.arange(num_t) / rate)[None, :]
  feats = np.zeros((n, NUM_WAVES, num_t), np.float32)
  offset32 = offset.astype(np.float32)
  inv_width = (1.0 / width).astype(np.float32)
  num_k = onset.shape[1]
  # QRS-group waves start at the onset and last up to 0.2 s: a sample belongs to the next beat
  # only from 80% of the interval on, so that a premature beat does not cut the previous QRS.
  groups = (("P", p_ref, 0.5, False), ("QRS", onset, 0.8, False), ("T", t_ref, 0.5, True))
  for group, refs, split, two_sided in groups:
    members = [w for w, spec in enumerate(WAVES) if spec[1] == group]
    index = _beat_index(refs, num_t, rate, split)
    dt_own = t - _gather(refs, index)
    sides = [(index, dt_own)]
    if two_sided:
      other = np.clip(index + np.where(dt_own >= 0, 1, -1).astype(np.int32), 0, num_k - 1)
      sides.append((other, t - _gather(refs, other)))
    for side, (beat, dt) in enumerate(sides):
      dt = dt.astype(np.float32)
      gathered = {}
      for w in members:
        kind = WAVES[w][2] + ("_t" if group == "T" else "")
        rows = np.flatnonzero((amp[:, w] != 0.0) & beat_amp[kind].any(axis=1))
        if not len(rows):
          continue
        if kind not in gathered:
          a = _gather(beat_amp[kind], beat)
          if side:
            a[beat == index] = 0.0   # clipped at the ends: the same beat, counted once
          gathered[kind] = a
        a = gathered[kind]
        if len(rows) == n:
          x = (dt - offset32[:, w, None]) * inv_width[:, w, None]
          feats[:, w] += np.exp(-0.5 * x * x) * a
        else:
          x = (dt[rows] - offset32[rows, w, None]) * inv_width[rows, w, None]
          feats[rows, w] += np.exp(-0.5 * x * x) * a[rows]
  # Fibrillatory waves: a frequency- and amplitude-modulated 4-8 Hz oscillation (AF ECGs only).
  rows = np.flatnonzero(amp[:, W["f"]] != 0.0)
  if len(rows):
    ur = u[rows]
    f_hz = 4.0 + 4.0 * ur[:, 6:7]
    f_phase = 2 * np.pi * (f_hz * t + 0.4 * np.sin(2 * np.pi * 0.35 * t + 2 * np.pi * ur[:, 7:8])
                           ) + 2 * np.pi * ur[:, 8:9]
    f_envelope = 1.0 + 0.35 * np.sin(2 * np.pi * 0.21 * t + 2 * np.pi * ur[:, 9:10])
    feats[rows, W["f"]] = np.sin(f_phase) * f_envelope
  return feats


def _leads(feats, wave_to_lead, emg, *, u, z, resp_hz, resp_phase, rate, mains_hz, out) -> None:
  """Adds the noise per electrode and writes the 12 leads into ``out`` ``(n, T, 12)`` (mV)."""
  n, _, num_t = feats.shape
  electrode_gain = np.ones((1, ELECTRODES))
  electrode_gain[:, 3:] = 1.6  # the chest moves with breathing
  wander = 0.04 * waves.lognormal(z[:, 27:28], 0.6) * electrode_gain * (0.5 + u[:, None, 4].repeat(
      ELECTRODES, 1))
  drift = 0.03 * waves.lognormal(z[:, 28:29], 0.6) * np.ones((1, ELECTRODES))
  hum_amp = np.where(mains_hz < rate / 2.0, 0.006 * waves.lognormal(z[:, 29], 0.8), 0.0)
  noise_to_electrode = np.zeros((n, _NOISE_BASIS, ELECTRODES))
  noise_to_electrode[:, 0] = wander * (1.0 + 0.4 * z[:, 31:40])  # electrodes move unequally
  noise_to_electrode[:, 1] = drift * z[:, 40:49]
  noise_to_electrode[:, 2] = drift * z[:, 49:58]
  hum_mix = hum_amp[:, None] * np.array([1.0, 1.0, 1.0] + [0.3] * 6)[None]
  noise_to_electrode[:, 3] = hum_mix * np.cos(2 * np.pi * u[:, 5:6])
  noise_to_electrode[:, 4] = hum_mix * np.sin(2 * np.pi * u[:, 5:6])
  emg_sd = (0.008 * waves.lognormal(z[:, 30:31], 0.6)
            * np.array([1.0, 1.0, 1.0] + [0.5] * 6)[None])

  t = (np.arange(num_t, dtype=np.float32) / np.float32(rate))[None, :]
  two_pi = np.float32(2 * np.pi)
  noise = np.empty((n, _NOISE_BASIS, num_t), np.float32)
  noise[:, 0] = np.sin(two_pi * (resp_hz[:, None].astype(np.float32) * t)
                       + resp_phase[:, None].astype(np.float32))
  slow = (0.02 + 0.08 * u[:, 10:11]).astype(np.float32)
  noise[:, 1] = np.sin(two_pi * (slow * t) + (2 * np.pi * u[:, 11:12]).astype(np.float32))
  noise[:, 2] = np.sin(two_pi * ((slow + np.float32(0.03)) * t)
                       + (2 * np.pi * u[:, 12:13]).astype(np.float32))
  # Mains: the phase of sample k is exact in integers (whole-Hz mains, integer sampling rate).
  cycles = (np.arange(num_t)[None, :] * np.round(mains_hz).astype(np.int64)[:, None]) % rate
  hum_t = (two_pi / np.float32(rate)) * cycles.astype(np.float32)
  noise[:, 3] = np.cos(hum_t)
  noise[:, 4] = np.sin(hum_t)

  def lead_major(weights):  # (n, inputs, 8) -> contiguous (n, 8, inputs) for a BLAS matmul
    return np.ascontiguousarray(np.transpose(weights, (0, 2, 1)), np.float32)

  eight = (np.matmul(lead_major(wave_to_lead), feats)
           + np.matmul(lead_major(noise_to_electrode @ _ELECTRODE_TO_LEAD), noise))
  # Muscle noise: white, uniform amplitude, unit variance after centring and scaling by sqrt 12
  # (the centring is a constant per lead, added once).
  emg_to_lead = (math.sqrt(12.0) * emg_sd[:, :, None] * _ELECTRODE_TO_LEAD[None])  # (n, 9, 8)
  emg_t = lead_major(emg_to_lead)
  eight += np.matmul(emg_t, emg)
  eight -= (0.5 * emg_t.sum(axis=2))[:, :, None].astype(np.float32)
  derived = _limb_leads(eight[:, _I], eight[:, _II])
  derived.update({f"V{k + 1}": eight[:, 2 + k] for k in range(6)})
  for index, name in enumerate(LEADS):
    out[:, :, index] = derived[name]
