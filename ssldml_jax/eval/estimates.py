"""The statistics of a probe: table cells from the fits of ``fitting.fit_all``, on the test split.

A cell is one (head, target, label subset):

- Thresholds for F1 / accuracy / sensitivity / specificity are chosen on each seed's
  validation scores and applied to its test scores.
- The point estimate is the mean over seeds of the metric on the full test split; the interval
  is the patient-level bootstrap percentile interval of that seed mean (``bootstrap``): each
  resample of test patients is scored for every seed and the values averaged, so the interval
  shows test-set uncertainty of the averaged metric.
- Subgroups (the primary head, 100% of labels): the same estimate within each sex and age band
  (age at the patient's first ECG), and patient-level permutation tests of the seed-mean metric
  between the groups of each kind (``subgroups.permutation_test``), on the test predictions.

Seed averaging reuses the bootstrap and permutation code unchanged: the "score" (and the
"label") handed to them is the row index of each test ECG, and each metric looks up the labels
and every seed's scores by that index (so resampling or regrouping rows moves all seeds'
predictions together, and a target with a label vector per ECG goes through the same code).

``fit_records`` gives each fit's own test metrics (the per-seed numbers behind a cell).
"""

from __future__ import annotations

from typing import Optional, Sequence

import ml_collections
import numpy as np

from ssldml_jax.eval import bootstrap, metrics as metrics_lib, subgroups, subsets, tables, targets
from ssldml_jax.eval.fitting import Fit

SEX_UNKNOWN, AGE_UNKNOWN = "sex unknown", "age unknown"


def seed_mean_metrics(fits: Sequence[Fit], names: Sequence[str], target: targets.Target,
                      y: np.ndarray) -> dict[str, metrics_lib.MetricFn]:
  """Metrics of the seed mean, called with the test ROW INDEX as label and score (module
  docstring); ``y``: the test labels (``targets.values``)."""
  per_seed = [(targets.metric_fns(target, f.threshold, names), f.test_scores) for f in fits]

  def make(name):
    def fn(_, index, weights):
      rows = np.asarray(index).astype(np.int64)
      return np.mean([m[name](y[rows], s[rows], weights) for m, s in per_seed], axis=0)
    return fn

  return {name: make(name) for name in names}


def subgroups_of(test: dict) -> dict[str, np.ndarray]:
  """Sex and age band (at the patient's first ECG) of every test row, unknowns named by kind."""
  sex = subgroups.sex_groups(test["sex"])
  sex = np.where(sex == subgroups.UNKNOWN, SEX_UNKNOWN, sex)
  age = subgroups.age_bands(subgroups.first_per_patient(test["age"], test["patient_id"]))
  age = np.where(age == subgroups.UNKNOWN, AGE_UNKNOWN, age)
  return {"sex": sex, "age": age}


def test_metric_names(config: ml_collections.ConfigDict, target: targets.Target) -> tuple:
  """The metrics compared between subgroups: ``probe.binary_test_metrics`` /
  ``regression_test_metrics`` by kind, the primary metric for the other kinds."""
  p = config.probe
  if target.kind in ("binary", "regression"):
    return tuple(p.binary_test_metrics if target.kind == "binary" else p.regression_test_metrics)
  return (targets.primary_metric(target),)


def evaluate(config: ml_collections.ConfigDict, fits: Sequence[Fit], test: dict,
             name: str, probe_targets: Optional[Sequence[targets.Target]] = None
             ) -> tuple[list, list]:
  """Table rows ``(head, Row)`` and subgroup tests ``(head, target, PermutationResult)``;
  ``probe_targets``: as ``fitting.fit_all`` took them."""
  p = config.probe
  by_name = targets.by_name(probe_targets or targets.from_config(config))
  index = np.arange(len(test["ecg_id"]), dtype=np.float64)
  pids = test["patient_id"]
  groups = subgroups_of(test)
  rows, tests = [], []
  cells = list(dict.fromkeys((f.head, f.target, f.fraction) for f in fits))
  for head, target, fraction in cells:
    chosen = [f for f in fits if (f.head, f.target, f.fraction) == (head, target, fraction)]
    # A fit standing for several seeds (the linear probe at 100%) counts once.
    chosen = list({id(f.test_scores): f for f in chosen}.values())
    spec = by_name[target]
    fns = seed_mean_metrics(chosen, targets.metric_names(spec), spec, targets.values(test, spec))
    estimates = bootstrap.bootstrap_ci(fns, index, index, pids, n_resamples=p.n_bootstrap, seed=0)
    rows += [(head, tables.Row.from_estimate(name, target, metric, est, fraction=fraction))
             for metric, est in estimates.items()]
    if head != p.primary_head or fraction != subsets.FULL:
      continue
    test_names = test_metric_names(config, spec)
    for kind, g in groups.items():
      by_group = subgroups.subgroup_estimates(fns, index, index, pids, g,
                                              n_resamples=p.n_bootstrap, seed=0)
      for group, per_metric in by_group.items():
        rows += [(head, tables.Row.from_estimate(name, target, metric, est, group=group))
                 for metric, est in per_metric.items()]
      unknown = SEX_UNKNOWN if kind == "sex" else AGE_UNKNOWN
      known = [x for x in subgroups.group_order(g) if x != unknown]
      pairs = [(a, b) for i, a in enumerate(known) for b in known[i + 1:]]
      if not test_names or not pairs:
        continue
      results = subgroups.compare_groups({m: fns[m] for m in test_names}, index, index, pids, g,
                                         pairs=pairs, n_permutations=p.n_permutations, seed=0,
                                         mixed="majority")
      tests += [(head, target, r) for r in results]
  return rows, tests


def fit_records(fits: Sequence[Fit], test: dict,
                probe_targets: Sequence[targets.Target]) -> list[dict]:
  """One JSON-able record per fit with its own test metrics (the per-seed numbers)."""
  by_name = targets.by_name(probe_targets)
  out = []
  for f in fits:
    y = targets.values(test, by_name[f.target])
    fns = targets.metric_fns(by_name[f.target], f.threshold)
    values = {k: float(fn(y, f.test_scores, None)[0]) for k, fn in fns.items()}
    out.append(dict(head=f.head, target=f.target, fraction=f.fraction, seed=f.seed,
                    n_train=f.n_train, threshold=f.threshold, **f.info, test=values))
  return out
