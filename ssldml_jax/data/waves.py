"""The waves of the dipole model, and what each condition does to them.

A wave is a Gaussian bump of the heart's dipole in a fixed group of every beat (``WAVES``); its
direction (heart frame: x the patient's left, y inferior, z anterior), amplitude, offset and
width are set per ECG. ``set_morphology`` writes those numbers for normal conduction and then
changes them the way each condition changes the heart's activation: LBBB replaces the QRS loop
by a slow, leftward-posterior, notched one with the T opposite; RBBB adds a late rightward-
anterior force; an old infarct turns the initial forces away from the scar; LVH enlarges and
turns the left-ventricular forces (``dipole`` then scales them to the patient's voltage) and,
with strain, turns repolarisation against them; a premature ventricular beat has its own broad
loop and T; a premature atrial beat its own P.
"""

from __future__ import annotations

import numpy as np

# Waves: name, group, beat kind, direction (dipole frame), amplitude (mV per unit lead vector).
# Groups: P (reference: P centre), QRS (QRS onset), T (T peak), F (fibrillatory, continuous).
# Kinds say in which beats a wave appears: sinus P, ectopic atrial P, conducted (supraventricular)
# QRS-T, ventricular (premature ventricular beat) QRS-T. Offsets and widths are set per ECG.
WAVES = (
    ("p_ra", "P", "sinus", (0.35, 0.80, 0.50), 0.13),
    ("p_la", "P", "sinus", (0.70, 0.40, -0.60), 0.10),
    ("p_ect", "P", "atrial", (0.30, -0.60, 0.40), 0.12),
    ("q", "QRS", "conducted", (-0.55, 0.25, 0.80), 0.22),
    ("r1", "QRS", "conducted", (0.45, 0.45, 0.77), 0.75),
    ("r2", "QRS", "conducted", (0.75, 0.50, -0.43), 1.25),
    ("s", "QRS", "conducted", (-0.30, -0.45, -0.84), 0.45),
    ("late", "QRS", "conducted", (-0.85, -0.05, 0.52), 0.0),
    ("pvc1", "QRS", "ventricular", (1.0, 0.0, 0.0), 1.4),
    ("pvc2", "QRS", "ventricular", (1.0, 0.0, 0.0), 1.0),
    ("t1", "T", "conducted", (0.62, 0.62, 0.48), 0.26),
    ("t2", "T", "conducted", (0.62, 0.62, 0.48), 0.20),
    ("st", "T", "conducted", (0.62, 0.62, 0.48), 0.0),
    ("pvc_t", "T", "ventricular", (1.0, 0.0, 0.0), 0.45),
    ("f", "F", "none", (-0.25, 0.45, 0.86), 0.0),
)
W = {name: i for i, (name, *_rest) in enumerate(WAVES)}
NUM_WAVES = len(WAVES)
QRS_WAVES = [W[n] for n in ("q", "r1", "r2", "s", "late")]
# Normal conduction: (offset from QRS onset, width) of each QRS wave as fractions of the QRS
# duration; likewise LBBB's slow, notched left-ventricular activation.
_NORMAL_QRS = {"q": (0.16, 0.07), "r1": (0.33, 0.085), "r2": (0.50, 0.095), "s": (0.70, 0.105)}
_LBBB_QRS = {"q": (0.10, 0.06, (0.85, 0.15, 0.25), 0.30),
             "r1": (0.36, 0.115, (0.80, 0.20, -0.55), 1.35),
             "r2": (0.68, 0.12, (0.72, 0.40, -0.56), 1.45)}
_LBBB_T = (-0.70, -0.30, 0.65)
_LVH_R2 = (0.70, 0.30, -0.65)
_STRAIN_T = (-0.85, -0.25, 0.45)   # opposite the dominant left-lateral QRS force
_ANTERIOR_Q = (0.10, 0.15, -0.98)
_INFERIOR_Q = (0.20, -0.95, 0.10)


def _columns(names: str) -> dict[str, int]:
  return {name: i for i, name in enumerate(names.split())}


# The standard normals each patient draws (shared by the patient's ECGs), by name.
PZ = _columns("s_la s_hr s_lv pvc_burden hr qrs p_sep pr qtc t_width habitus t_volt p_volt "
              "rot_x rot_y rot_z g0 g1 g2 g3 g4 g5 g6 g7 bbb_qrs lvh_volt strain mi_size mi_t "
              "avb_pr low_volt pvc_coupling pa0 pa1 pa2 pb0 pb1 pb2 pvc_width pac_burden "
              "pac_coupling pe0 pe1 pe2")
PATIENT_NORMALS = 48


def lognormal(z: np.ndarray, sigma: float) -> np.ndarray:
  return np.exp(sigma * z)


def unit(v: np.ndarray) -> np.ndarray:
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _rows(mask: np.ndarray, value, current: np.ndarray) -> np.ndarray:
  """``current`` with the rows where ``mask`` holds replaced by ``value`` (broadcast)."""
  mask = mask.reshape(mask.shape + (1,) * (current.ndim - 1))
  return np.where(mask, np.broadcast_to(value, current.shape), current)


def set_morphology(amp, direction, offset, width, *, c, pz, s_la, s_lv, lvh, qrs, qrs_normal,
                   qrs_pvc) -> None:
  """Sets the per-ECG wave parameters in place: normal conduction, then each condition.

  ``amp`` (n, W), ``direction`` (n, W, 3) heart frame, ``offset`` and ``width`` (n, W) seconds
  from the group's reference; ``c`` the conditions by name (bool (n,)), ``pz`` the patient
  normals, ``s_la`` / ``s_lv`` the left-atrial and ventricular pathways, ``qrs`` / ``qrs_normal``
  / ``qrs_pvc`` the QRS durations (s) of the conducted beat, of normal conduction and of a
  premature ventricular beat.
  """
  for name, (off, wid) in _NORMAL_QRS.items():
    offset[:, W[name]], width[:, W[name]] = off * qrs_normal, wid * qrs_normal
  # A strained left atrium depolarises later and more posteriorly: the terminal negative P in V1.
  amp[:, W["p_la"]] *= np.clip(1.0 + 0.25 * s_la, 0.5, 2.0)
  direction[:, W["p_la"], 2] -= 0.2 * np.clip(s_la, -1.5, 3.0)
  amp[:, W["r2"]] *= 1.0 + 0.08 * np.clip(s_lv, -2, 3)
  amp[:, W["s"]] *= 1.0 + 0.12 * np.clip(s_lv, -2, 3)
  t_dir = direction[:, W["t1"]].copy()
  st_amp = np.zeros(len(qrs))

  # LVH: larger, more posterior left-ventricular forces (scaled to voltage in ``render``);
  # with strain, repolarisation opposite the dominant QRS force: ST depression, inverted T.
  direction[:, W["r2"]] = _rows(lvh, unit(np.array(_LVH_R2)), direction[:, W["r2"]])
  amp[:, W["s"]] *= np.where(lvh, 1.4, 1.0)
  strain = c["lvh_strain"]
  t_dir = _rows(strain, np.array(_STRAIN_T), t_dir)
  st_amp = np.where(strain, 0.12 * lognormal(pz[:, PZ["strain"]], 0.3), st_amp)
  for name in ("t1", "t2"):
    amp[:, W[name]] *= np.where(strain, 1.4, 1.0)

  # Old infarcts: the initial QRS forces point away from the scar (wide, deep Q waves), the
  # forces of the dead wall are lost; half keep an inverted T over it.
  ant, inf = c["anterior_mi"], c["inferior_mi"]
  mi = ant | inf
  q_dir = (ant[:, None] * np.array(_ANTERIOR_Q) + inf[:, None] * np.array(_INFERIOR_Q))
  direction[:, W["q"]] = _rows(mi, unit(q_dir + 1e-9), direction[:, W["q"]])
  size = np.clip(1.0 + 0.2 * pz[:, PZ["mi_size"]], 0.7, 1.4)
  amp[:, W["q"]] = np.where(mi, np.where(ant, 0.55, 0.50) * size, amp[:, W["q"]])
  offset[:, W["q"]] = np.where(mi, 0.26 * qrs_normal, offset[:, W["q"]])
  width[:, W["q"]] = np.where(mi, 0.12 * qrs_normal, width[:, W["q"]])
  amp[:, W["r1"]] *= np.where(ant, 0.15, 1.0)
  direction[:, W["r1"], 1] = np.where(inf, -0.35, direction[:, W["r1"], 1])
  t_inverted = pz[:, PZ["mi_t"]] > 0.0
  t_dir = t_dir + (ant & t_inverted)[:, None] * np.array([0.0, 0.0, -0.9])
  t_dir = t_dir + (inf & t_inverted)[:, None] * np.array([0.0, -0.8, 0.0])

  # RBBB: normal left-ventricular activation, then a slow rightward-anterior force (R' in V1,
  # broad S in I and V6); the T turns away from it.
  rbbb = c["rbbb"]
  late_width = 0.12 * qrs
  offset[:, W["late"]], width[:, W["late"]] = qrs - 2.2 * late_width, late_width
  amp[:, W["late"]] = np.where(rbbb, 0.85, 0.0)
  amp[:, W["s"]] *= np.where(rbbb, 0.4, 1.0)
  t_dir = t_dir - rbbb[:, None] * 0.7 * direction[:, W["late"]]
  st_amp = np.where(rbbb, 0.03, st_amp)

  # LBBB: the septum and left ventricle are activated late and slowly from the right: no septal
  # q in I and V6, a broad notched R there and a deep broad S in V1; discordant ST-T.
  lbbb = c["lbbb"]
  for name, (off, wid, vec, a) in _LBBB_QRS.items():
    offset[:, W[name]] = np.where(lbbb, off * qrs, offset[:, W[name]])
    width[:, W[name]] = np.where(lbbb, wid * qrs, width[:, W[name]])
    direction[:, W[name]] = _rows(lbbb, unit(np.array(vec)), direction[:, W[name]])
    amp[:, W[name]] = np.where(lbbb, a, amp[:, W[name]])
  amp[:, W["s"]] *= np.where(lbbb, 0.0, 1.0)
  t_dir = _rows(lbbb, np.array(_LBBB_T), t_dir)
  st_amp = np.where(lbbb, 0.16, st_amp)
  for name in ("t1", "t2"):
    amp[:, W[name]] *= np.where(lbbb, 1.5, 1.0)

  t_dir = unit(t_dir)
  for name in ("t1", "t2", "st"):
    direction[:, W[name]] = t_dir
  amp[:, W["st"]] = st_amp

  # Premature ventricular beats: one focus per patient, two broad bumps in its own directions,
  # the T opposite them.
  pvc_a = unit(np.stack([pz[:, PZ[k]] for k in ("pa0", "pa1", "pa2")], axis=1))
  pvc_b = unit(pvc_a + 0.6 * np.stack([pz[:, PZ[k]] for k in ("pb0", "pb1", "pb2")], axis=1))
  direction[:, W["pvc1"]], direction[:, W["pvc2"]] = pvc_a, pvc_b
  direction[:, W["pvc_t"]] = -unit(1.4 * pvc_a + 1.0 * pvc_b)
  for name, (off, wid) in {"pvc1": (0.30, 0.13), "pvc2": (0.64, 0.14)}.items():
    offset[:, W[name]], width[:, W[name]] = off * qrs_pvc, wid * qrs_pvc
  for name in ("pvc1", "pvc2", "pvc_t"):
    amp[:, W[name]] *= c["pvc"]
  # Premature atrial beats: an ectopic focus, so a P of another axis (often low atrial).
  pac_dir = np.array([0.30, -0.60, 0.40]) + 0.5 * np.stack(
      [pz[:, PZ[k]] for k in ("pe0", "pe1", "pe2")], axis=1)
  direction[:, W["p_ect"]] = unit(pac_dir)
  amp[:, W["p_ect"]] *= c["pac"]
