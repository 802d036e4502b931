"""Paired comparisons of methods: each one against the random encoder and a reference method.

For each method and each reference (the random encoder and ``config.compare_to``) on the
primary head's cells (``estimates.Cell``, every replicate of a method pooled):

- at 100% of labels, every metric of ``METRICS`` for the target's kind (the main tables'
  threshold-free and thresholded headline metrics; for a multi-label or multi-class target its
  primary metric, ``targets.primary_metric``); in each label-limited row, the primary metric
  (AUROC, RMSE, macro-AUROC);
- the difference, method minus reference, of the cell values with its paired patient-bootstrap
  95% interval and p-value (``significance.difference`` on the two cells' replicates: every cell
  is scored on the same resamples of test patients, ``estimates.BOOTSTRAP_SEED``, so the
  replicates are paired);
- for the AUROC of a binary target, DeLong's test of the same difference (``delong.paired``
  with the test patients as clusters and each method's seed-mean placements);
- Holm's adjustment over the whole table, apart for the bootstrap and the DeLong p-values.

A difference "holds" when its Holm-adjusted bootstrap p-value is below ``ALPHA``: the family-wise
error rate over the table is then at most 5%, whatever the dependence between its tests. It
does not say the difference is large, only that the test split gives no good reason to think it
is 0; nor does a difference that does not hold show that two methods are equal.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Optional, Sequence

import numpy as np

from ssldml_jax.eval import delong, significance, subsets, tables, targets

ALPHA = 0.05
# Compared at 100% of labels, by target kind (others: the primary metric); in a label-limited
# row the primary metric only.
METRICS = {"binary": ("auroc", "auprc", "f1", "accuracy"),
           "regression": ("rmse", "mae", "pearson_r")}


@dataclasses.dataclass(frozen=True)
class Comparison:
  method: str
  reference: str
  target: str
  fraction: str
  metric: str
  diff: significance.Difference       # method - reference, paired patient bootstrap
  p_holm: float
  delong: Optional[delong.DeLongResult] = None   # AUROC only
  delong_p_holm: float = math.nan

  @property
  def holds(self) -> bool:
    return self.p_holm < ALPHA


def _metrics(target: targets.Target, fraction: str) -> tuple[str, ...]:
  primary = targets.primary_metric(target)
  if fraction != subsets.FULL:
    return (primary,)
  return METRICS.get(target.kind, (primary,))


def compare(cells: Mapping[str, Mapping[tuple, object]], references: Sequence[str], head: str,
            probe_targets: Sequence[targets.Target], test: Mapping[str, np.ndarray]
            ) -> list[Comparison]:
  """Every comparison of the module docstring, Holm-adjusted; references not in ``cells`` are
  skipped.

  ``cells``: method -> ``estimates.Evaluation.cells`` (all on the same test split ``test``, in
  the same row order); ``probe_targets``: the targets the cells are of.
  """
  by_name = targets.by_name(probe_targets)
  found = []
  for reference in dict.fromkeys(references):
    if reference not in cells:
      continue
    for method, own in cells.items():
      if method == reference or (method == "random" and reference != "random"):
        continue  # random vs a reference is the reference vs random, already in the table
      for (h, target, fraction), cell in own.items():
        other = cells[reference].get((h, target, fraction))
        if h != head or other is None:
          continue
        spec = by_name[target]
        for metric in _metrics(spec, fraction):
          if metric not in cell.metrics or metric not in other.metrics:
            continue
          a, b = cell.metrics[metric], other.metrics[metric]
          diff = significance.difference(a.estimate.point, a.replicates, b.estimate.point,
                                         b.replicates)
          result = None
          if metric == "auroc" and spec.kind == "binary":
            result = delong.paired(targets.values(test, spec),
                                   np.stack([f.test_scores for f in cell.fits]),
                                   np.stack([f.test_scores for f in other.fits]),
                                   test["patient_id"])
          found.append(Comparison(method, reference, target, fraction, metric, diff,
                                  math.nan, result))
  p_holm = significance.holm([c.diff.p_value for c in found])
  with_delong = [i for i, c in enumerate(found) if c.delong is not None]
  delong_holm = significance.holm([found[i].delong.p_value for i in with_delong])
  delong_by_index = dict(zip(with_delong, delong_holm))
  return [dataclasses.replace(c, p_holm=float(p_holm[i]),
                              delong_p_holm=float(delong_by_index.get(i, math.nan)))
          for i, c in enumerate(found)]


def holding(comparisons: Sequence[Comparison], reference: str) -> set[tuple[str, str, str, str]]:
  """``(method, target, fraction, metric)`` whose difference from ``reference`` holds."""
  return {(c.method, c.target, c.fraction, c.metric) for c in comparisons
          if c.reference == reference and c.holds}


def table(comparisons: Sequence[Comparison], labels: Mapping[str, str], head_words: str,
          note: str = "") -> tables.Table:
  """The ``comparisons`` table (Markdown / CSV / LaTeX through ``tables``); ``note`` ends the
  caption (the threshold rule of F1 and accuracy)."""
  body = []
  for c in comparisons:
    d = c.diff
    body.append((labels.get(c.method, c.method), labels.get(c.reference, c.reference), c.target,
                 c.fraction, tables.metric_label(c.metric),
                 tables.format_cell(d.value_a), tables.format_cell(d.value_b),
                 tables.format_cell(d.difference, d.low, d.high), tables.format_p(d.p_value),
                 tables.format_p(c.p_holm),
                 tables.format_p(c.delong.p_value) if c.delong else tables.NA,
                 tables.format_p(c.delong_p_holm) if c.delong else tables.NA,
                 "yes" if c.holds else "no"))
  caption = (f"Paired comparisons ({head_words}, test split): method - reference with the "
             "paired patient-bootstrap 95% CI and p-value (the same resampled patients for "
             "both), DeLong's test for AUROC (patient clusters); p-values Holm-adjusted over "
             f"this table; 'holds': Holm-adjusted bootstrap p < {ALPHA:g}"
             + (f". {note}" if note else ""))
  header = ("Method", "Reference", "Target", "Labels", "Metric", "Method value",
            "Reference value", "Difference (95% CI)", "p", "p (Holm)", "DeLong p",
            "DeLong p (Holm)", "Holds")
  return tables.Table(header=header, body=tuple(body), caption=caption)
