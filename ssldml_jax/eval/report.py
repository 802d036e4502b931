"""The report over many probes (one per encoder): the paper's tables, predictions and plots.

``report_tables`` collects the rows of every ``ProbeOutcome`` into the tables by file stem (the
primary head's unsuffixed, other heads' ``_<head>``): per target its main table
(``classification`` for mPCWP > threshold, ``regression`` for mPCWP, the target's name for any
other), ``label_fractions_<target>`` and ``subgroups_<target>``, the subgroup tests
Holm-adjusted over their table and, from the main job, the ``comparisons`` (the cells whose
difference from the random encoder holds are marked ``*`` in the main tables) and the
``pretext`` table of the premise diagnostic; ``write_report`` writes them under a root directory
with each probe's ``predictions.csv`` and the figures (ROC / PR and calibration of the primary
head's binary scores, a PCA of each encoder's test embeddings). ``labels`` maps a probe's name to
its row label. Every caption names what its numbers are: the threshold rule of the thresholded
metrics, the majority-class accuracy to read accuracy against, the validation data of
label-limited rows.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Optional, Sequence

import jax
import ml_collections
import numpy as np

from ssldml_jax import atomic
from ssldml_jax.eval import comparisons as comparisons_lib, embed, estimates, premise as premise_lib
from ssldml_jax.eval import probe_files, subsets, tables, targets
from ssldml_jax.eval.probe_files import ProbeOutcome

HEAD_WORDS = {"linear": "logistic / ridge probe", "mlp": "MLP probe", "finetune": "fine-tuned"}
_CRITERIA = {"f1": "maximises F1", "youden": "maximises Youden's J"}
CELL_WORDS = ("mean over seeds, 95% patient-bootstrap CI, \u00b1 SD over pretraining seeds where "
              "there are several")


def _relabel(row: tables.Row, labels: Mapping[str, str]) -> tables.Row:
  return dataclasses.replace(row, method=labels.get(row.method, row.method))


def _mark(rows: Sequence[tables.Row], holding: set) -> list:
  """Rows whose (method label, target, fraction, metric) is in ``holding`` get the note '*'."""
  return [dataclasses.replace(r, note="*") if (r.method, r.target, r.fraction, r.metric)
          in holding else r for r in rows]


def _validation_words(config: ml_collections.ConfigDict) -> str:
  if config.probe.limited_validation == "full":
    return "model selection on the whole validation split in every row"
  return ("model selection in a label-limited row on the row's share of validation patients "
          f"(at least {subsets.MIN_VALIDATION_PATIENTS})")


def threshold_words(config: ml_collections.ConfigDict) -> str:
  """The rule behind the thresholded metrics, for captions."""
  return (f"F1, accuracy, sensitivity, specificity, PPV and NPV at the threshold that "
          f"{_CRITERIA[config.probe.threshold_criterion]} on each fit's validation scores")


def _majority_words(rows: Sequence[tables.Row], target: str) -> str:
  """The accuracy of always answering a binary target's majority class, for its caption."""
  majority = [r.point for r in rows if (r.target, r.metric, r.fraction, r.group) ==
              (target, estimates.MAJORITY, subsets.FULL, "all")]
  if not majority:
    return ""
  return (f"; always answering the majority class scores accuracy {majority[0]:.3f}, the "
          "floor to read accuracy against")


def report_tables(outcomes: Sequence[ProbeOutcome], config: ml_collections.ConfigDict,
                  labels: Optional[Mapping[str, str]] = None, *,
                  comparisons: Sequence[comparisons_lib.Comparison] = (),
                  premises: Sequence[premise_lib.Premise] = (),
                  fraction_note: str = "") -> dict[str, tables.Table]:
  """Every table of the paper by file stem: the primary head's unsuffixed, other heads'
  ``_<head>``; ``comparisons`` and ``pretext`` when given; ``fraction_note`` ends the captions
  of the label-fraction tables (what the encoders behind their rows saw)."""
  p = config.probe
  labels = labels or {}
  holding = {(labels.get(m, m), target, fraction, metric) for m, target, fraction, metric in
             comparisons_lib.holding(comparisons, "random")}
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
    what = HEAD_WORDS[head]
    marked = head == p.primary_head and bool(comparisons)
    shown = _mark(rows, holding) if marked else rows
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
      caption += f", {what}, test split: {CELL_WORDS}"
      if target.kind == "binary":
        caption += f". {threshold_words(config)}" + _majority_words(rows, target.name)
      if marked:
        caption += ("; * the difference from the random encoder holds (paired patient bootstrap, "
                    "Holm-adjusted over the comparisons table)")
      out[stem + suffix] = tables.target_table(shown, target.name, columns, caption=caption)
      if head in p.fraction_heads:
        metric = targets.primary_metric(target)
        out[f"label_fractions_{target.name}{suffix}"] = tables.label_fraction_table(
            [r for r in rows if r.target == target.name], metric=metric,
            caption=f"{tables.metric_label(metric)} by training labels ({target.name}, {what}): "
                    f"{CELL_WORDS}; {_validation_words(config)}"
                    + (f"; {fraction_note}" if fraction_note else ""),
            fractions=subsets.subset_names(config, head))
      if head == p.primary_head:
        out[f"subgroups_{target.name}"] = tables.subgroup_table(
            rows, target=target.name, columns=columns,
            caption=f"Subgroups by sex and age band ({target.name}, {what}): {CELL_WORDS}"
                    + (f". {threshold_words(config)}" if target.kind == "binary" else ""))
  tests = [(labels.get(o.name, o.name), t, r) for o in outcomes for h, t, r in o.tests
           if h == p.primary_head]
  if tests:
    out["subgroup_tests"] = tables.group_test_table(
        tests, caption=f"Subgroup differences ({HEAD_WORDS[p.primary_head]}, 100% of labels, "
                       "test split): null hypothesis of an equal metric in both groups, DeLong's "
                       "test for independent AUROCs (patient clusters) or a bootstrap resampling "
                       "each group's patients; p-values Holm-adjusted over this table")
  if comparisons:
    out["comparisons"] = comparisons_lib.table(
        comparisons, labels, HEAD_WORDS[p.primary_head], note=threshold_words(config))
  if premises:
    out["pretext"] = premise_lib.table(premises, labels, float(config.task.pcwp_threshold))
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
                 labels: Optional[Mapping[str, str]] = None, **extra) -> dict[str, tables.Table]:
  """``tables/``, ``predictions/<name>.csv`` and ``plots/`` under ``root`` for these probes
  (written by process 0); returns the tables by file stem. ``extra``: the keyword arguments of
  ``report_tables``."""
  from ssldml_jax.eval import plots  # matplotlib only for the report.

  labels = labels or {}
  made = report_tables(outcomes, config, labels, **extra)
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
