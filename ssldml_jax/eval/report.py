"""The report over many probes (one per encoder): the paper's tables, predictions and plots.

``report_tables`` collects the rows of every ``ProbeOutcome`` into the tables by file stem (the
primary head's unsuffixed, other heads' ``_<head>``): per target its main table
(``classification`` for mPCWP > threshold, ``regression`` for mPCWP, the target's name for any
other), ``label_fractions_<target>`` and ``subgroups_<target>``; ``write_report`` writes them
under a root directory with each probe's ``predictions.csv`` and the figures (ROC / PR and
calibration of the primary head's binary scores, a PCA of each encoder's test embeddings).
``labels`` maps a probe's name to its row label.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Optional, Sequence

import jax
import ml_collections
import numpy as np

from ssldml_jax import atomic
from ssldml_jax.eval import embed, probe_files, subsets, tables, targets
from ssldml_jax.eval.probe_files import ProbeOutcome

_HEAD_WORDS = {"linear": "logistic / ridge probe", "mlp": "MLP probe", "finetune": "fine-tuned"}


def _relabel(row: tables.Row, labels: Mapping[str, str]) -> tables.Row:
  return dataclasses.replace(row, method=labels.get(row.method, row.method))


def report_tables(outcomes: Sequence[ProbeOutcome], config: ml_collections.ConfigDict,
                  labels: Optional[Mapping[str, str]] = None) -> dict[str, tables.Table]:
  """Every table of the paper by file stem: the primary head's unsuffixed, other heads'
  ``_<head>``."""
  p = config.probe
  labels = labels or {}
  rows_by_head: dict[str, list] = {}
  for o in outcomes:
    for head, row in o.rows:
      rows_by_head.setdefault(head, []).append(_relabel(row, labels))
  out = {}
  for head in p.heads:
    rows = rows_by_head.get(head, [])
    if not rows:
      continue
    suffix = "" if head == p.primary_head else f"_{head}"
    what = _HEAD_WORDS[head]
    for target in targets.from_config(config):
      columns = _columns(target, rows)
      stem = main_stem(target)
      if target.name == "binary":
        caption = f"Elevated mPCWP (> {config.task.pcwp_threshold:g} mmHg)"
      elif target.name == "regression":
        caption = "mPCWP regression (mmHg)"
      else:
        caption = (target.describe() if target.name == target.feature
                   else f"{target.name}: {target.describe()}")
      out[stem + suffix] = tables.target_table(
          rows, target.name, columns,
          caption=f"{caption}, {what}, test split, 95% patient-bootstrap CI")
      if head in p.fraction_heads:
        metric = targets.primary_metric(target)
        out[f"label_fractions_{target.name}{suffix}"] = tables.label_fraction_table(
            [r for r in rows if r.target == target.name], metric=metric,
            caption=f"{tables.metric_label(metric)} by training labels ({target.name}, {what})",
            fractions=subsets.subset_names(config, head))
      if head == p.primary_head:
        out[f"subgroups_{target.name}"] = tables.subgroup_table(
            rows, target=target.name, columns=columns,
            caption=f"Subgroups by sex and age band ({target.name}, {what})")
  tests = [(labels.get(o.name, o.name), r) for o in outcomes for h, _, r in o.tests
           if h == p.primary_head]
  if tests:
    out["subgroup_tests"] = tables.pvalue_table(tests)
  return out


def main_stem(target: "targets.Target") -> str:
  """The file stem of a target's main table (the primary head's)."""
  return {"binary": "classification", "regression": "regression"}.get(target.name, target.name)


def printed_stems(config: ml_collections.ConfigDict) -> list[str]:
  """The tables a program prints last: each target's label fractions and main table."""
  found = targets.from_config(config)
  fractions = ([f"label_fractions_{t.name}" for t in found]
               if config.probe.primary_head in config.probe.fraction_heads else [])
  return fractions + [main_stem(t) for t in found]


def _columns(target: "targets.Target", rows: Sequence[tables.Row]) -> tuple:
  """The metrics of a target's tables: the paper's columns for a binary or regression target,
  else every metric its rows hold (macro first, then per label), in their order."""
  if target.kind == "binary":
    return tables.CLASSIFICATION_COLUMNS
  if target.kind == "regression":
    return tables.REGRESSION_COLUMNS
  return tuple(dict.fromkeys(r.metric for r in rows if r.target == target.name))


def write_report(outcomes: Sequence[ProbeOutcome], config: ml_collections.ConfigDict, root: str,
                 labels: Optional[Mapping[str, str]] = None) -> dict[str, tables.Table]:
  """``tables/``, ``predictions/<name>.csv`` and ``plots/`` under ``root`` for these probes
  (written by process 0); returns the tables by file stem."""
  from ssldml_jax.eval import plots  # matplotlib only for the report.

  labels = labels or {}
  made = report_tables(outcomes, config, labels)
  if jax.process_index() != 0:
    return made
  for stem, table in made.items():
    tables.write_table(table, os.path.join(root, "tables", stem))
  curves = {}
  for o in outcomes:
    target = os.path.join(root, "predictions", f"{o.name}.csv")
    if os.path.abspath(target) != os.path.abspath(o.predictions_path):
      atomic.copy_file(o.predictions_path, target)
    pred = probe_files.read_predictions(o.predictions_path)
    test = pred["split"] == "test"
    label = labels.get(o.name, o.name)
    if "y_score_binary" in pred:
      curves[label] = (pred["y_true_binary"][test].astype(bool), pred["y_score_binary"][test])
    emb_path = o.embeddings_path(config.data.test_split)
    if os.path.isfile(emb_path):
      e = embed.load_npz(emb_path)
      known = np.isfinite(e["pcwp"])
      if known.sum() >= 2:
        plots.plot_embedding_projection(
            e["embedding"][known], e["pcwp"][known],
            os.path.join(root, "plots", f"embedding_{o.name}.png"),
            title=f"{label}: test embeddings (PCA)")
  if curves:
    plots.plot_roc_pr(curves, os.path.join(root, "plots", "roc_pr.png"),
                      title=f"mPCWP > {config.task.pcwp_threshold:g} mmHg, test split")
    plots.plot_calibration(curves, os.path.join(root, "plots", "calibration.png"),
                           title="Calibration, test split")
  return made
