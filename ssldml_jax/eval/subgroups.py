"""Subgroups by sex and age band, and tests between groups (each group's cell with its
patient-bootstrap CI is ``estimates.cell_metrics`` on the group's rows).

Age bands are half-open, [18, 35), [35, 50), [50, 75), [75, inf), labelled '18-35', '35-50',
'50-75', '>=75'; an age of exactly 35 is in '35-50'. Ages below 18 fall in '<18' and unknown ages
(NaN) in 'unknown', so every ECG is in exactly one group and none is silently dropped.

Group differences are tested on the TEST-SET PREDICTIONS with a test whose null hypothesis is
an equal metric in both groups (``group_test``): DeLong's test for two independent AUROCs with
patient clusters, or, for any other metric, a bootstrap that resamples the patients of each group
on its own. The groups are disjoint sets of patients (a patient with ECGs in both goes to the
group of most of them). The p-values are not adjusted here; the report adjusts the whole table
of subgroup tests (Holm, ``significance.holm``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Mapping, Optional, Sequence

import numpy as np

from ssldml_jax.data import records
from ssldml_jax.eval import bootstrap, delong, metrics as metrics_lib, significance

AGE_BANDS = ((18.0, 35.0, "18-35"), (35.0, 50.0, "35-50"), (50.0, 75.0, "50-75"),
             (75.0, np.inf, ">=75"))
AGE_UNDER_18, UNKNOWN = "<18", "unknown"
SEX_NAMES = {records.SEX_FEMALE: "female", records.SEX_MALE: "male", records.SEX_UNKNOWN: UNKNOWN}


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


@dataclasses.dataclass(frozen=True)
class GroupTest:
  """Two groups of patients compared on one metric of the test predictions."""
  metric: str
  group_a: str
  group_b: str
  test: str                # 'DeLong' (AUROC) | 'bootstrap' (any other metric)
  value_a: float
  value_b: float
  difference: float        # value_a - value_b
  low: float               # 95% interval of the difference
  high: float
  p_value: float           # two-sided, null: equal metric in both groups (not adjusted); NaN:
                           # undefined (a group with one class, say)
  ecgs_a: int
  ecgs_b: int
  patients_a: int
  patients_b: int
  prevalence_a: float      # share of positive ECGs (binary target); NaN for regression
  prevalence_b: float


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


def group_test(metric: str, fn: metrics_lib.MetricFn, y, score, patient_ids, groups, a: str,
               b: str, *, labels=None, fits_scores: Optional[np.ndarray] = None,
               n_resamples: int = 1000, seed: int = 0, mixed: str = "error") -> GroupTest:
  """Tests whether ``metric`` is equal in groups ``a`` and ``b`` (disjoint sets of patients).

  ``fn(y, score, weights)`` computes the metric (``y`` and ``score`` may be row-index stand-ins,
  as ``estimates`` passes them); ``labels``: the real labels of the rows (default ``y``), for the
  prevalence of a binary target and for DeLong. AUROC (``metric == 'auroc'`` with
  ``fits_scores``, the ``(K, n)`` scores of the fits whose mean ``fn`` computes, and binary
  ``labels``): DeLong's test for independent groups with patient clusters
  (``delong.independent``). Any other metric: the two groups resampled independently, patients
  within each (``significance.difference`` of the replicates; group b uses ``seed + 1``).
  Neither test asks whether the groups' whole (label, score) distributions differ: a metric that
  depends on prevalence (AUPRC, F1, accuracy) differs between groups of different prevalence for
  that reason alone, which is why the table shows each group's prevalence.
  """
  y, score, patient_ids, groups = _aligned(y, score, patient_ids, groups)
  labels = y if labels is None else np.asarray(labels)
  for g in (a, b):
    if not np.any(groups == g):
      raise ValueError(f"group {g!r} has no ECGs (groups present: "
                       f"{', '.join(group_order(groups))})")
  keep = (groups == a) | (groups == b)
  inverse, num_patients = bootstrap.patient_index(patient_ids[keep])
  in_a = patient_groups(groups[keep] == a, inverse, num_patients, patient_ids[keep], mixed)
  if in_a.all() or not in_a.any():
    raise ValueError(f"groups {a!r} and {b!r}: every patient falls in one group after "
                     f"mixed={mixed!r}; nothing to compare")
  rows = np.flatnonzero(keep)
  side_a = in_a[inverse]
  parts = {a: rows[side_a], b: rows[~side_a]}
  binary = labels.dtype == bool and labels.ndim == 1
  prevalence = {g: float(np.mean(labels[r])) if binary else math.nan for g, r in parts.items()}
  if metric == "auroc" and fits_scores is not None and binary:
    s = np.atleast_2d(np.asarray(fits_scores, np.float64))
    test = "DeLong"
    try:
      res = delong.independent(labels[parts[a]], s[:, parts[a]], patient_ids[parts[a]],
                               labels[parts[b]], s[:, parts[b]], patient_ids[parts[b]])
      values = (res.auc_a, res.auc_b, res.difference, res.low, res.high, res.p_value)
    except ValueError:  # a group with one class (or one patient): no AUROC, no test
      values = tuple(float(fn(y[r], score[r], np.ones((1, r.size)))[0])
                     for r in (parts[a], parts[b])) + (math.nan,) * 4
  else:
    points, replicates = [], []
    for offset, g in enumerate((a, b)):
      r = parts[g]
      points.append(float(fn(y[r], score[r], np.ones((1, r.size)))[0]))
      replicates.append(bootstrap.resample_values({metric: fn}, y[r], score[r], patient_ids[r],
                                                  n_resamples=n_resamples,
                                                  seed=seed + offset)[metric])
    d = significance.difference(points[0], replicates[0], points[1], replicates[1])
    values = (d.value_a, d.value_b, d.difference, d.low, d.high, d.p_value)
    test = "bootstrap"
  return GroupTest(metric, a, b, test, *values, ecgs_a=int(parts[a].size),
                   ecgs_b=int(parts[b].size), patients_a=int(in_a.sum()),
                   patients_b=int((~in_a).sum()), prevalence_a=prevalence[a],
                   prevalence_b=prevalence[b])


def compare_groups(metrics: Mapping[str, metrics_lib.MetricFn], y, score, patient_ids, groups,
                   *, pairs: Optional[Sequence[tuple[str, str]]] = None, labels=None,
                   fits_scores: Optional[np.ndarray] = None, n_resamples: int = 1000,
                   seed: int = 0, mixed: str = "error",
                   unknown: str = UNKNOWN) -> list[GroupTest]:
  """``group_test`` of every metric for ``pairs`` of groups (default: all pairs of known groups,
  in ``group_order``, the group named ``unknown`` left out)."""
  if pairs is None:
    known = [g for g in group_order(groups) if g != unknown]
    pairs = list(itertools.combinations(known, 2))
  return [group_test(name, fn, y, score, patient_ids, groups, a, b, labels=labels,
                     fits_scores=fits_scores, n_resamples=n_resamples, seed=seed, mixed=mixed)
          for a, b in pairs for name, fn in metrics.items()]


def _aligned(y, score, patient_ids, groups):
  arrays = [np.asarray(v) for v in (y, score, patient_ids, groups)]
  shapes = [a.shape for a in arrays]
  if any(len(s) != 1 for s in shapes) or len({s[0] for s in shapes}) != 1:
    raise ValueError(f"y {shapes[0]}, score {shapes[1]}, patient_ids {shapes[2]} and groups "
                     f"{shapes[3]} must be 1-D of the same length")
  arrays[3] = arrays[3].astype(str)
  return arrays
