"""Subgroups by sex and age band: metrics with patient-bootstrap CIs and tests between groups.

Age bands are half-open, [18, 35), [35, 50), [50, 75), [75, inf), labelled '18-35', '35-50',
'50-75', '>=75'; an age of exactly 35 is in '35-50'. Ages below 18 fall in '<18' and unknown ages
(NaN) in 'unknown', so every ECG is in exactly one group and none is silently dropped.

Group differences are tested on the TEST-SET PREDICTIONS with a permutation test, never on
bootstrap replicates (whose number is arbitrary, so a test on them can reach any p-value). Under
the null hypothesis that the metric does not depend on the group, the group labels of PATIENTS
are exchangeable: each permutation shuffles the group label over the patients of the two groups
(group sizes in patients fixed) and moves all of a patient's ECGs together. The statistic is
``metric(a) - metric(b)``; the two-sided p-value is
``(1 + #{|d_perm| >= |d_obs|}) / (1 + #defined permutations)``, which is never 0. Permutations on
which the metric is undefined in either group are skipped and counted. The p-values are not
corrected for multiple comparisons.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Mapping, Optional, Sequence

import numpy as np

from ssldml_jax.data import records
from ssldml_jax.eval import bootstrap, metrics as metrics_lib

AGE_BANDS = ((18.0, 35.0, "18-35"), (35.0, 50.0, "35-50"), (50.0, 75.0, "50-75"),
             (75.0, np.inf, ">=75"))
AGE_UNDER_18, UNKNOWN = "<18", "unknown"
SEX_NAMES = {records.SEX_FEMALE: "female", records.SEX_MALE: "male", records.SEX_UNKNOWN: UNKNOWN}

_CHUNK_ELEMENTS = 1 << 22


def age_bands(age) -> np.ndarray:
  """The age-band label of each ECG (see the module docstring for the boundaries)."""
  age = np.asarray(age, dtype=np.float64)
  if age.ndim != 1:
    raise ValueError(f"age: expected a 1-D array, got shape {age.shape}")
  out = np.full(age.shape, UNKNOWN, dtype=object)
  out[age < AGE_BANDS[0][0]] = AGE_UNDER_18
  for low, high, name in AGE_BANDS:
    out[(age >= low) & (age < high)] = name
  return out.astype(str)


def sex_groups(sex) -> np.ndarray:
  """'female' / 'male' / 'unknown' from the record codes 0 / 1 / -1."""
  sex = np.asarray(sex)
  if sex.ndim != 1:
    raise ValueError(f"sex: expected a 1-D array, got shape {sex.shape}")
  bad = np.flatnonzero(~np.isin(sex, list(SEX_NAMES)))
  if bad.size:
    raise ValueError(f"sex: code {sex[bad[:1]].tolist()[0]!r} at index {bad[0]} ({bad.size} such "
                     "value(s)); expected 0 (female), 1 (male) or -1 (unknown)")
  return np.array([SEX_NAMES[int(s)] for s in sex.tolist()], dtype=str)


def first_per_patient(values, patient_ids) -> np.ndarray:
  """Each ECG gets its patient's value at the patient's first ECG (array order), e.g. the age at
  the first ECG, so that a patient whose ECGs straddle an age boundary stays in one band."""
  values = np.asarray(values)
  inverse, _ = bootstrap.patient_index(patient_ids)
  if values.shape != inverse.shape:
    raise ValueError(f"values {values.shape} and patient_ids {inverse.shape} differ in length")
  _, first = np.unique(np.asarray(patient_ids), return_index=True)
  return values[first[inverse]]


def group_order(groups) -> list[str]:
  """Groups present, in the conventional order (sex, then age bands), others sorted after."""
  present = set(np.unique(np.asarray(groups)).tolist())
  canonical = ["female", "male"] + [b[2] for b in AGE_BANDS] + [AGE_UNDER_18, UNKNOWN]
  return [g for g in canonical if g in present] + sorted(present - set(canonical))


def subgroup_estimates(metrics: Mapping[str, metrics_lib.MetricFn], y, score, patient_ids,
                       groups, *, n_resamples: int = 1000,
                       seed: int = 0) -> dict[str, dict[str, bootstrap.Estimate]]:
  """group -> metric -> Estimate, each group bootstrapped over its own patients."""
  y, score, patient_ids, groups = _aligned(y, score, patient_ids, groups)
  out = {}
  for g in group_order(groups):
    m = groups == g
    out[g] = bootstrap.bootstrap_ci(metrics, y[m], score[m], patient_ids[m],
                                    n_resamples=n_resamples, seed=seed)
  return out


@dataclasses.dataclass(frozen=True)
class PermutationResult:
  metric: str
  group_a: str
  group_b: str
  value_a: float
  value_b: float
  difference: float        # value_a - value_b on the test predictions
  p_value: float           # two-sided; NaN if the observed difference is undefined
  n_permutations: int
  n_undefined: int         # permutations skipped because a group's metric was undefined
  patients_a: int
  patients_b: int


def patient_groups(is_a: np.ndarray, inverse: np.ndarray, num_patients: int, patient_ids,
                   mixed: str = "error") -> np.ndarray:
  """Per patient: True if in group a. A patient with ECGs in both groups is an error, or with
  ``mixed='majority'`` goes to the group of most of their ECGs (ties: group a)."""
  if mixed not in ("error", "majority"):
    raise ValueError(f"mixed={mixed!r} is not allowed; choose 'error' or 'majority'")
  n_a = np.bincount(inverse, weights=is_a, minlength=num_patients)
  n_all = np.bincount(inverse, minlength=num_patients)
  split = (n_a > 0) & (n_a < n_all)
  if split.any() and mixed == "error":
    first = np.asarray(patient_ids)[np.flatnonzero(split[inverse])[:1]].tolist()[0]
    raise ValueError(f"patient {first!r} (and {int(split.sum()) - 1} other(s)) has ECGs in both "
                     "groups; pass mixed='majority' or group by first_per_patient(...)")
  return 2 * n_a >= n_all


def permutation_test(metric: metrics_lib.MetricFn, y, score, patient_ids, groups, a: str, b: str,
                     *, n_permutations: int = 1000, seed: int = 0, mixed: str = "error",
                     name: str = "") -> PermutationResult:
  """Tests whether ``metric`` differs between groups ``a`` and ``b`` (patient-level shuffles)."""
  y, score, patient_ids, groups = _aligned(y, score, patient_ids, groups)
  keep = (groups == a) | (groups == b)
  for g in (a, b):
    if not np.any(groups == g):
      raise ValueError(f"group {g!r} has no ECGs (groups present: "
                       f"{', '.join(group_order(groups))})")
  y, score, patient_ids, groups = y[keep], score[keep], patient_ids[keep], groups[keep]
  inverse, num_patients = bootstrap.patient_index(patient_ids)
  in_a = patient_groups(groups == a, inverse, num_patients, patient_ids, mixed)
  if in_a.all() or not in_a.any():
    raise ValueError(f"groups {a!r} and {b!r}: every patient falls in one group after "
                     f"mixed={mixed!r}; nothing to compare")
  observed = in_a[inverse].astype(np.float64)[None]
  value_a = float(metric(y, score, observed)[0])
  value_b = float(metric(y, score, 1.0 - observed)[0])
  diff = value_a - value_b

  rng = np.random.default_rng(seed)
  shuffled = rng.permuted(np.tile(in_a, (n_permutations, 1)), axis=1)
  chunk = max(1, _CHUNK_ELEMENTS // y.size)
  null = np.empty(n_permutations)
  for lo in range(0, n_permutations, chunk):
    w = shuffled[lo:lo + chunk][:, inverse].astype(np.float64)
    null[lo:lo + chunk] = metric(y, score, w) - metric(y, score, 1.0 - w)
  defined = null[np.isfinite(null)]
  if np.isfinite(diff) and defined.size:
    # Relative slack so that a permutation equal to the observed split counts despite rounding.
    extreme = np.abs(defined) >= np.abs(diff) * (1.0 - 1e-12) - 1e-15
    p = (1.0 + extreme.sum()) / (1.0 + defined.size)
  else:
    p = np.nan
  return PermutationResult(
      metric=name, group_a=a, group_b=b, value_a=value_a, value_b=value_b, difference=diff,
      p_value=float(p), n_permutations=n_permutations,
      n_undefined=int(null.size - defined.size), patients_a=int(in_a.sum()),
      patients_b=int((~in_a).sum()))


def compare_groups(metrics: Mapping[str, metrics_lib.MetricFn], y, score, patient_ids, groups,
                   *, pairs: Optional[Sequence[tuple[str, str]]] = None,
                   n_permutations: int = 1000, seed: int = 0,
                   mixed: str = "error") -> list[PermutationResult]:
  """Permutation tests of every metric for ``pairs`` of groups (default: all pairs of known
  groups, 'unknown' left out)."""
  if pairs is None:
    known = [g for g in group_order(groups) if g != UNKNOWN]
    pairs = list(itertools.combinations(known, 2))
  return [permutation_test(fn, y, score, patient_ids, groups, a, b, n_permutations=n_permutations,
                           seed=seed, mixed=mixed, name=name)
          for a, b in pairs for name, fn in metrics.items()]


def _aligned(y, score, patient_ids, groups):
  arrays = [np.asarray(v) for v in (y, score, patient_ids, groups)]
  shapes = [a.shape for a in arrays]
  if any(len(s) != 1 for s in shapes) or len({s[0] for s in shapes}) != 1:
    raise ValueError(f"y {shapes[0]}, score {shapes[1]}, patient_ids {shapes[2]} and groups "
                     f"{shapes[3]} must be 1-D of the same length")
  arrays[3] = arrays[3].astype(str)
  return arrays
