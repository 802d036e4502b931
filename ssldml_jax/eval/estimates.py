"""The statistics of table cells: fits on the test split to estimates, SDs and subgroup tests.

A cell is one (head, target, label subset) of one method. Its fits are its replicates: one per
pretraining seed (``Fit.pretrain_seed``: the seed its encoder was pretrained, or for the random
encoder initialised, with) and probe seed (the label-subset draw and the head's initialisation).
A fit that stands for several probe seeds (the deterministic linear probe at 100% of labels, the
same arrays) counts once.

- Point: the mean over the cell's fits of the metric on the whole test split; the thresholded
  metrics use each fit's own threshold, chosen on its validation scores.
- Interval: the 95% patient-bootstrap percentile interval of that mean (``bootstrap``): each
  resample of test patients is scored for every fit and the values averaged, so it shows the
  test-set uncertainty of the averaged metric. Every cell draws the same resamples (seed 0 over
  the test split's patients), so the replicates of two methods' cells are paired
  (``comparisons``).
- SD: the standard deviation (ddof 1) over pretraining seeds of each seed's mean: how much the
  number moves from one pretraining run to the next, which the interval does not show. NaN with
  a single pretraining seed.
- Subgroups (the primary head, 100% of labels): the same within each sex and age band (age at
  the patient's first ECG), and tests of equal metric between the groups of each kind
  (``subgroups.compare_groups``: DeLong for the AUROC of a binary target, an independent-groups
  bootstrap otherwise; ``test_metric_names``).
- A binary target's 100% cell also gets a ``majority_accuracy`` row: the accuracy of always
  answering the test split's majority class, the floor for the thresholded accuracies.

The bootstrap code scores one "score" vector; to average fits it is handed the row index of each
test ECG as label and score, and each metric looks up the labels and every fit's scores by that
index (so resampling or regrouping rows moves all fits' predictions together, and a target with
a label vector per ECG goes through the same code).

``fit_records`` gives each fit's own test metrics (the numbers behind a cell).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional, Sequence

import ml_collections
import numpy as np

from ssldml_jax.eval import bootstrap, metrics as metrics_lib, subgroups, subsets, tables, targets
from ssldml_jax.eval.fitting import Fit

SEX_UNKNOWN, AGE_UNKNOWN = "sex unknown", "age unknown"
MAJORITY = "majority_accuracy"
BOOTSTRAP_SEED = 0   # one set of patient resamples for every cell: cells are paired


@dataclasses.dataclass
class MetricCell:
  """One metric of one cell: the estimate, its bootstrap replicates and the pretraining SD."""
  estimate: bootstrap.Estimate
  replicates: np.ndarray    # (n_bootstrap,) the fits' mean on each resample (NaN: undefined)
  sd: float                 # over pretraining seeds; NaN with one


@dataclasses.dataclass
class Cell:
  """A method's (head, target, label subset) on the whole test split (group 'all')."""
  head: str
  target: str
  fraction: str
  fits: list
  metrics: dict             # metric -> MetricCell


class Evaluation(NamedTuple):
  rows: list                # (head, tables.Row)
  tests: list               # (head, target, subgroups.GroupTest)
  cells: dict               # (head, target, fraction) -> Cell


def unique_fits(fits: Sequence[Fit]) -> list[Fit]:
  """The distinct fits: one that stands for several seeds (the same arrays) counts once."""
  seen, out = set(), []
  for f in fits:
    if id(f.test_scores) not in seen:
      seen.add(id(f.test_scores))
      out.append(f)
  return out


def seed_mean_metrics(fits: Sequence[Fit], names: Sequence[str], target: targets.Target,
                      y: np.ndarray) -> dict[str, metrics_lib.MetricFn]:
  """Metrics of the fits' mean, called with the test ROW INDEX as label and score (module
  docstring); ``y``: the test labels (``targets.values``)."""
  per_fit = [(targets.metric_fns(target, f.threshold, names), f.test_scores) for f in fits]

  def make(name):
    def fn(_, index, weights):
      rows = np.asarray(index).astype(np.int64)
      return np.mean([m[name](y[rows], s[rows], weights) for m, s in per_fit], axis=0)
    return fn

  return {name: make(name) for name in names}


def pretrain_sd(fits: Sequence[Fit], names: Sequence[str], target: targets.Target, y: np.ndarray,
                index: np.ndarray) -> dict[str, float]:
  """SD over pretraining seeds of each seed's mean metric on the rows ``index`` (NaN with one
  seed)."""
  seeds = sorted({f.pretrain_seed for f in fits})
  if len(seeds) < 2:
    return {name: float("nan") for name in names}
  ones = np.ones((1, len(index)))
  per_seed = []
  for seed in seeds:
    fns = seed_mean_metrics([f for f in fits if f.pretrain_seed == seed], names, target, y)
    per_seed.append({name: float(fn(index, index, ones)[0]) for name, fn in fns.items()})
  return {name: float(np.std([v[name] for v in per_seed], ddof=1)) for name in names}


def cell_metrics(fits: Sequence[Fit], target: targets.Target, y: np.ndarray, index: np.ndarray,
                 patient_ids, *, n_bootstrap: int,
                 names: Optional[Sequence[str]] = None) -> dict[str, MetricCell]:
  """Every metric (``names``, default the target's) of the mean of ``fits`` on the rows ``index``
  of the test split, whose labels are ``y``."""
  names = tuple(names or targets.metric_names(target))
  fns = seed_mean_metrics(fits, names, target, y)
  ests, values = bootstrap.bootstrap_values(fns, index, index, patient_ids,
                                            n_resamples=n_bootstrap, seed=BOOTSTRAP_SEED)
  sds = pretrain_sd(fits, names, target, y, index)
  return {name: MetricCell(ests[name], replicates=values[name], sd=sds[name]) for name in fns}


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


def _row(name: str, target: str, metric: str, cell: MetricCell, **kwargs) -> tables.Row:
  return tables.Row.from_estimate(name, target, metric, cell.estimate, sd=cell.sd, **kwargs)


def _majority_row(name: str, target: str, y, index, pids, n_bootstrap: int) -> tables.Row:
  fn = {MAJORITY: lambda _, rows, w: metrics_lib.majority_accuracy_batch(
      y[np.asarray(rows).astype(np.int64)], None, w)}
  est = bootstrap.bootstrap_ci(fn, index, index, pids, n_resamples=n_bootstrap,
                               seed=BOOTSTRAP_SEED)
  return tables.Row.from_estimate(name, target, MAJORITY, est[MAJORITY])


def evaluate(config: ml_collections.ConfigDict, fits: Sequence[Fit], test: dict, name: str,
             probe_targets: Optional[Sequence[targets.Target]] = None) -> Evaluation:
  """Rows, subgroup tests and cells of one method from all its fits (every replicate);
  ``probe_targets``: as ``fitting.fit_all`` took them."""
  p = config.probe
  by_name = targets.by_name(probe_targets or targets.from_config(config))
  index = np.arange(len(test["ecg_id"]), dtype=np.float64)
  pids = test["patient_id"]
  groups = subgroups_of(test)
  rows, tests, cells = [], [], {}
  majority = {}  # target -> its majority-class row: the same for every head
  keys = list(dict.fromkeys((f.head, f.target, f.fraction) for f in fits))
  for head, target, fraction in keys:
    chosen = unique_fits([f for f in fits if (f.head, f.target, f.fraction) ==
                          (head, target, fraction)])
    spec = by_name[target]
    y = targets.values(test, spec)
    metric_cells = cell_metrics(chosen, spec, y, index, pids, n_bootstrap=p.n_bootstrap)
    cells[head, target, fraction] = Cell(head, target, fraction, chosen, metric_cells)
    rows += [(head, _row(name, target, metric, c, fraction=fraction))
             for metric, c in metric_cells.items()]
    if fraction != subsets.FULL:
      continue
    if spec.kind == "binary":
      if target not in majority:
        majority[target] = _majority_row(name, target, y, index, pids, p.n_bootstrap)
      rows.append((head, majority[target]))
    if head != p.primary_head:
      continue
    test_names = test_metric_names(config, spec)
    fns = seed_mean_metrics(chosen, test_names, spec, y)
    # DeLong needs the labels and every fit's scores, not the row-index stand-ins.
    scores = np.stack([f.test_scores for f in chosen]) if spec.kind == "binary" else None
    for kind, g in groups.items():
      for group in subgroups.group_order(g):
        m = g == group
        for metric, c in cell_metrics(chosen, spec, y, index[m], pids[m],
                                      n_bootstrap=p.n_bootstrap).items():
          rows.append((head, _row(name, target, metric, c, group=group)))
      results = subgroups.compare_groups(
          fns, index, index, pids, g, labels=y, fits_scores=scores, n_resamples=p.n_bootstrap,
          seed=BOOTSTRAP_SEED, mixed="majority",
          unknown=SEX_UNKNOWN if kind == "sex" else AGE_UNKNOWN)
      tests += [(head, target, r) for r in results]
  return Evaluation(rows, tests, cells)


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
                    pretrain_seed=f.pretrain_seed, n_train=f.n_train, n_validation=f.n_validation,
                    threshold=f.threshold, **f.info, test=values))
  return out
