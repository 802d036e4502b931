"""Who the synthetic patients are: a heart-failure phenotype, its mPCWP, and the ECG diagnoses.

A catheterisation-laboratory cohort is mostly heart disease, and heart disease is what makes two
real ECGs look different. Each patient first gets a latent phenotype: no heart failure (dyspnoea
of another cause, valve or transplant work-up), heart failure with preserved ejection fraction
(HFpEF) or with reduced ejection fraction (HFrEF). The phenotype sets the patient's age, sex,
chronic mPCWP and the probability of each ECG diagnosis below; mPCWP reaches the conditions only
through the phenotype, so none of them is a shortcut to the label.

Phenotype (mix; mPCWP median; age; men):
  no HF   38%; 10 mmHg; 56 +- 15; 50%
  HFpEF   34%; 15 mmHg; 68 +- 11; 45%
  HFrEF   28%; 22 mmHg; 62 +- 13; 72%
with a log-normal spread (SD 0.38 in log-mmHg) around each median, 70% of it shared by a
patient's ECGs; the mixture has mean ~16, SD ~8 and ~32% above 18 mmHg (~6%, ~32% and ~70%
within the three phenotypes).

ECG diagnoses (``CONDITIONS``), each rendered by its criterion (``dipole``); prevalence in
no HF / HFpEF / HFrEF, among the patients the condition is not excluded for (``EXCLUDES``):
  lbbb         LBBB: QRS >= 120 ms, broad notched R in I, aVL, V5-V6, no septal q there,
               deep broad S in V1-V3, discordant ST-T.                       2% /  5% / 22%
  rbbb         RBBB: QRS >= 120 ms, late R' in V1, broad terminal S in I and V6,
               secondary T inversion in V1-V2.                               3% /  7% /  9%
  lvh_strain   LVH with strain: Sokolow-Lyon SV1 + max(RV5, RV6) >= 3.5 mV, ST depression and
               asymmetric T inversion opposite the dominant QRS (I, aVL, V5-V6). 2% / 10% / 7%
  lvh          LVH by voltage (Sokolow-Lyon >= 3.5 mV), no repolarisation change.  4% / 10% / 5%
  anterior_mi  old anterior infarct: Q >= 30 ms and >= 0.1 mV (QS) in V1-V3, poor R-wave
               progression to V4; persistent T inversion in half.           2% /  5% / 20%
  inferior_mi  old inferior infarct: Q >= 30 ms and >= 0.1 mV in II, III, aVF; T inversion in
               half.                                                         3% /  6% / 14%
  af           atrial fibrillation (patient level; 85% of the patient's ECGs show it, the rest
               are in sinus rhythm): no P waves, fibrillatory waves, irregularly irregular RR.
                                                                             5% / 32% / 25%
  av_block_1   first-degree AV block: PR > 200 ms (210-350).                4% / 12% / 18%
  low_voltage  QRS peak-to-peak < 0.5 mV in every limb lead.                3% /  7% /  8%
  pvc          frequent premature ventricular beats: unifocal, wide (130-200 ms), discordant
               T, fixed coupling, no P, full compensatory pause.            4% /  8% / 18%
  pac          frequent premature atrial beats: early P of another axis, normal QRS, the sinus
               node reset (pause less than compensatory).                    5% / 10% /  7%

Sources. Criteria: Surawicz et al. 2009, Circulation 119:e235 (AHA/ACCF/HRS recommendations,
part III: bundle-branch blocks); Hancock et al. 2009, Circulation 119:e251 (part V:
hypertrophy, strain); Sokolow & Lyon 1949, Am Heart J 37:161; Casale et al. 1987, Circulation
75:565 (Cornell voltage); Thygesen et al. 2018, Circulation 138:e618 (fourth universal definition
of myocardial infarction: pathological Q waves). Prevalences: Baldasseroni et al. 2002, Am Heart
J 143:398 (LBBB in 25% of 5,517 heart-failure outpatients); Barsheshet et al. 2011, Am J Cardiol
107:540 (hospitalised systolic heart failure: RBBB 10%, LBBB 14%); Lund et al. 2013, Eur Heart J
34:529 (QRS >= 120 ms in 31% of 25,171 patients, more often with lower ejection fraction);
Zafrir et al. 2018, Eur Heart J 39:4277 (AF in 27% of HFrEF and 39% of HFpEF); Nikolaidou,
Ghosh & Clark 2016, JACC Clin Electrophysiol 2:181 (first-degree AV block in 15-51% of heart
failure, ~4% in the general population); Kamath et al. 2006, Am Heart J 152:355 (low QRS voltage
marks severe systolic heart failure). Haemodynamics: Reddy et al. 2018, Circulation 138:861
(invasively tested dyspnoea: HFpEF in 64%, older, more AF); Omote et al. 2023, Eur J Heart Fail
25:185 (ejection fraction >= 50% with dyspnoea: resting wedge pressure >= 15 mmHg in half);
Binanay et al. 2005, JAMA 294:1625 (ESCAPE: advanced HFrEF with high filling pressures).
The phenotype mix, its medians and the prevalences of LVH, infarcts, low voltage and ectopy per
phenotype are our reading of these sources for a catheterisation cohort, rounded; none is fitted
to a dataset, and none was chosen by how any method ranks on the result.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np
import scipy.special

PHENOTYPES = ("no_hf", "hfpef", "hfref")
PHENOTYPE_MIX = np.array([0.38, 0.34, 0.28])
PCWP_MEDIAN = np.array([10.0, 15.0, 22.0])   # mmHg, chronic (a patient's typical day)
PCWP_LOG_SD = 0.38                            # within a phenotype, log-mmHg
AGE_MEAN = np.array([56.0, 68.0, 62.0])
AGE_SD = np.array([15.0, 11.0, 13.0])
MALE_FRACTION = np.array([0.50, 0.45, 0.72])

# Name -> (prevalence in no HF, HFpEF, HFrEF among eligible patients, human-readable title).
_TABLE = (
    ("lbbb", (0.02, 0.05, 0.22), "Left bundle-branch block"),
    ("rbbb", (0.03, 0.07, 0.09), "Right bundle-branch block"),
    ("lvh_strain", (0.02, 0.10, 0.07), "Left ventricular hypertrophy with strain"),
    ("lvh", (0.04, 0.10, 0.05), "Left ventricular hypertrophy (voltage)"),
    ("anterior_mi", (0.02, 0.05, 0.20), "Old anterior myocardial infarction"),
    ("inferior_mi", (0.03, 0.06, 0.14), "Old inferior myocardial infarction"),
    ("af", (0.05, 0.32, 0.25), "Atrial fibrillation"),
    ("av_block_1", (0.04, 0.12, 0.18), "First-degree AV block"),
    ("low_voltage", (0.03, 0.07, 0.08), "Low QRS voltage"),
    ("pvc", (0.04, 0.08, 0.18), "Frequent premature ventricular beats"),
    ("pac", (0.05, 0.10, 0.07), "Frequent premature atrial beats"),
)
CONDITIONS = tuple(name for name, _, _ in _TABLE)
NUM_CONDITIONS = len(CONDITIONS)
TITLES = {name: title for name, _, title in _TABLE}
PREVALENCE = {name: np.array(p) for name, p, _ in _TABLE}
# A condition is drawn only for patients who have none of these (drawn earlier in CONDITIONS
# order): they would contradict it or hide its criterion (Q waves and LVH voltage are not read
# in LBBB; a PR interval needs P waves).
EXCLUDES = {
    "rbbb": ("lbbb",),
    "lvh_strain": ("lbbb",),
    "lvh": ("lbbb", "lvh_strain"),
    "anterior_mi": ("lbbb",),
    "inferior_mi": ("lbbb",),
    "av_block_1": ("af",),
    "low_voltage": ("lbbb", "lvh", "lvh_strain"),
    "pac": ("af",),
}
AF_EXPRESSED = 0.85   # share of an AF patient's ECGs in AF (the others in sinus rhythm)
INDEX = {name: i for i, name in enumerate(CONDITIONS)}


def _log_mixture_moments() -> tuple[float, float]:
  """Mean and SD of log-mPCWP over the whole cohort (the phenotype mixture)."""
  logs = np.log(PCWP_MEDIAN)
  mean = float(np.sum(PHENOTYPE_MIX * logs))
  var = float(np.sum(PHENOTYPE_MIX * (PCWP_LOG_SD ** 2 + (logs - mean) ** 2)))
  return mean, math.sqrt(var)


LOG_PCWP_MEAN, LOG_PCWP_SD = _log_mixture_moments()


def phenotype_from_uniform(u: np.ndarray, probabilities: Optional[np.ndarray] = None
                           ) -> np.ndarray:
  """Phenotype indices (int) from uniforms in [0, 1): the cohort mix, or per-row probabilities."""
  probs = PHENOTYPE_MIX[None] if probabilities is None else np.asarray(probabilities)
  cumulative = np.cumsum(probs, axis=-1)
  cumulative = cumulative / cumulative[..., -1:]
  return np.sum(np.asarray(u)[..., None] >= cumulative[..., :-1], axis=-1).astype(np.int32)


def phenotype_posterior(pcwp: np.ndarray, age: np.ndarray, sex: np.ndarray) -> np.ndarray:
  """P(phenotype | mPCWP, age, sex) under the cohort's model, ``(n, 3)``.

  Used when the caller fixes a patient's mPCWP, age and sex (``simulator.simulate_ecgs``), so
  that the phenotype and therefore the conditions follow from them as in the generated cohort.
  """
  log_pcwp = np.log(np.asarray(pcwp, np.float64))[:, None]
  age = np.asarray(age, np.float64)[:, None]
  male = (np.asarray(sex) == 1)[:, None]
  log_like = (np.log(PHENOTYPE_MIX)[None]
              - 0.5 * ((log_pcwp - np.log(PCWP_MEDIAN)[None]) / PCWP_LOG_SD) ** 2
              - 0.5 * ((age - AGE_MEAN[None]) / AGE_SD[None]) ** 2 - np.log(AGE_SD)[None]
              + np.where(male, np.log(MALE_FRACTION)[None], np.log1p(-MALE_FRACTION)[None]))
  return scipy.special.softmax(log_like, axis=1)


def draw(u: np.ndarray, phenotype: np.ndarray) -> np.ndarray:
  """Patient-level conditions ``(n, NUM_CONDITIONS)`` bool from uniforms ``u`` of that shape.

  Condition c is present when ``u[:, c]`` falls below its prevalence for the patient's
  phenotype and none of ``EXCLUDES[c]`` is present.
  """
  u = np.asarray(u)
  phenotype = np.asarray(phenotype)
  present = np.zeros(u.shape, bool)
  for c, name in enumerate(CONDITIONS):
    eligible = np.ones(len(u), bool)
    for other in EXCLUDES.get(name, ()):
      eligible &= ~present[:, INDEX[other]]
    present[:, c] = eligible & (u[:, c] < PREVALENCE[name][phenotype])
  return present


def from_names(per_ecg: Sequence[Sequence[str]], n: int) -> np.ndarray:
  """``(n, NUM_CONDITIONS)`` bool from one collection of condition names per ECG.

  Raises ``ValueError`` naming an unknown condition or a pair that ``EXCLUDES`` forbids.
  """
  if len(per_ecg) != n:
    raise ValueError(f"conditions has {len(per_ecg)} entries, expected n={n}")
  present = np.zeros((n, NUM_CONDITIONS), bool)
  for i, names in enumerate(per_ecg):
    if isinstance(names, str):
      raise ValueError(f"conditions[{i}] must be a collection of names, got the string "
                       f"{names!r}")
    for name in names:
      if name not in INDEX:
        raise ValueError(f"conditions[{i}]: unknown condition {name!r}; known: "
                         f"{', '.join(CONDITIONS)}")
      present[i, INDEX[name]] = True
    for name, others in EXCLUDES.items():
      clash = [o for o in others if present[i, INDEX[o]]]
      if present[i, INDEX[name]] and clash:
        raise ValueError(f"conditions[{i}]: {name} cannot be combined with {clash[0]}")
  return present


def as_dict(present: np.ndarray) -> Mapping[str, np.ndarray]:
  """Columns of a conditions matrix by name."""
  return {name: present[:, i] for i, name in enumerate(CONDITIONS)}
