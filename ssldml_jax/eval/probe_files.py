"""The files a probe leaves in its workdir, written and read back.

- ``probe_results.json``: ``name``, the table ``rows`` (head and ``tables.Row`` fields), the
  subgroup ``tests`` (head, target and ``subgroups.GroupTest`` fields), one record per
  fit (``estimates.fit_records``), and what the caller adds (source, dataset, config). NaN and
  infinities are stored as ``null`` and read back as NaN.
- ``fits.npz``: every distinct fit (``estimates.unique_fits``) with its test and validation
  scores, so that the main job can pool the fits of several probes (pretraining seeds, label
  rows) into one cell: ``head``, ``target``, ``fraction`` (text), ``seed``, ``pretrain_seed``,
  ``n_train``, ``n_validation``, ``threshold`` (NaN: none), ``test_scores`` (fits, test ECGs),
  ``val_scores`` (all fits' validation scores end to end, ``n_validation`` each), and
  ``test_ecg_id`` (the rows of ``test_scores``). Read with ``allow_pickle=False``.
- ``predictions.csv``: ``ecg_id, patient_id, split, y_true_<target>, y_score_<target>[_<head>]``
  for the validation and test ECGs (``y_true_regression`` is the mPCWP in mmHg); scores are the
  seed mean at 100% of labels, the primary head's unsuffixed.

``ProbeOutcome`` is what a finished probe amounts to; a workdir holding ``probe_results.json``
is done (``is_done``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from ssldml_jax import atomic
from ssldml_jax.eval import embed, subgroups, subsets, tables, targets
from ssldml_jax.eval.fitting import Fit

RESULTS_FILE = "probe_results.json"
PREDICTIONS_FILE = "predictions.csv"
FITS_FILE = "fits.npz"
_ID_COLUMNS = ("ecg_id", "patient_id", "split")


@dataclasses.dataclass
class ProbeOutcome:
  """What ``probe_lib.run_probe`` leaves in its workdir, read back."""
  name: str
  workdir: str
  rows: list                        # (head, tables.Row)
  tests: list                       # (head, target, subgroups.GroupTest)
  fits: list                        # dicts: head, target, fraction, seed, n_train, test metrics
  embeddings_dir: str = ""          # where its embeddings are cached; "": <workdir>/embeddings

  @property
  def predictions_path(self) -> str:
    return os.path.join(self.workdir, PREDICTIONS_FILE)

  def embeddings_path(self, split: str) -> str:
    directory = self.embeddings_dir or os.path.join(self.workdir, embed.EMBEDDINGS_DIR)
    return os.path.join(directory, f"{split}.npz")

  @property
  def fits_path(self) -> str:
    return os.path.join(self.workdir, FITS_FILE)


def write_predictions(path: str, config: ml_collections.ConfigDict, fits: Sequence[Fit],
                      splits: Mapping[str, dict]) -> str:
  """``predictions.csv`` (module docstring) of ``splits['validation']`` and ``['test']``."""
  p = config.probe
  threshold = float(config.task.pcwp_threshold)
  columns, values = [], {}
  for target in p.targets:
    column = f"y_true_{target}"
    columns.append(column)
    values[column] = {split: targets.values(splits[split], target, threshold)
                      for split in ("validation", "test")}
    for head in p.heads:
      chosen = [f for f in fits if (f.head, f.target, f.fraction) == (head, target, subsets.FULL)]
      if not chosen:
        continue
      column = f"y_score_{target}" + ("" if head == p.primary_head else f"_{head}")
      columns.append(column)
      values[column] = {
          "validation": np.mean([f.val_scores for f in chosen], axis=0),
          "test": np.mean([f.test_scores for f in chosen], axis=0)}
  with atomic.replacing(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(list(_ID_COLUMNS) + columns)
    for split in ("validation", "test"):
      s = splits[split]
      for i in range(len(s["ecg_id"])):
        row = [s["ecg_id"][i], s["patient_id"][i], split]
        row += [_cell(values[column][split][i], column) for column in columns]
        writer.writerow(row)
  return path


def _cell(value: Any, column: str) -> Any:
  """A label as 0/1 or mmHg to 0.001, a score to 6 significant digits."""
  if column.startswith("y_true_"):
    return int(value) if isinstance(value, (bool, np.bool_)) else f"{float(value):.3f}"
  return f"{float(value):.6g}"


def read_predictions(path: str) -> dict[str, np.ndarray]:
  """Columns of a predictions file (numbers as float, ids as text)."""
  with open(path, newline="", encoding="utf-8") as fh:
    reader = csv.DictReader(fh)
    records = list(reader)
    fields = reader.fieldnames or []
  out = {}
  for field in fields:
    column = [r[field] for r in records]
    out[field] = (np.asarray(column, str) if field in _ID_COLUMNS
                  else np.asarray(column, np.float64))
  return out


def _to_json(value: Any) -> Any:
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _to_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_to_json(v) for v in value]
  if isinstance(value, np.generic):
    return _to_json(value.item())
  return value


def _from_json(value: Any) -> float:
  return math.nan if value is None else float(value)


def save_outcome(path: str, outcome: ProbeOutcome, extra: dict) -> None:
  """``probe_results.json`` of ``outcome`` with the keys of ``extra`` added."""
  data = dict(extra, name=outcome.name,
              rows=[dict(head=h, **dataclasses.asdict(r)) for h, r in outcome.rows],
              tests=[dict(head=h, target=t, **dataclasses.asdict(r)) for h, t, r in outcome.tests],
              fits=outcome.fits)
  atomic.write_text(path, json.dumps(_to_json(data), indent=1))


def load_outcome(workdir: str) -> ProbeOutcome:
  """The outcome a finished ``run_probe`` left in ``workdir``."""
  path = os.path.join(workdir, RESULTS_FILE)
  with open(path, encoding="utf-8") as fh:
    data = json.load(fh)
  rows = []
  for r in data["rows"]:
    head = r.pop("head")
    for key in ("point", "low", "high", "sd"):
      r[key] = _from_json(r[key])
    rows.append((head, tables.Row(**r)))
  tests = []
  for t in data["tests"]:
    head, target = t.pop("head"), t.pop("target")
    for key in ("value_a", "value_b", "difference", "low", "high", "p_value", "prevalence_a",
                "prevalence_b"):
      t[key] = _from_json(t[key])
    tests.append((head, target, subgroups.GroupTest(**t)))
  return ProbeOutcome(name=data["name"], workdir=os.path.abspath(workdir), rows=rows, tests=tests,
                      fits=data["fits"])


_FIT_TEXT = ("head", "target", "fraction")
_FIT_INTS = ("seed", "pretrain_seed", "n_train", "n_validation")


def save_fits(path: str, fits: Sequence[Fit], test_ecg_ids: np.ndarray) -> str:
  """``fits.npz`` (module docstring) of the distinct ``fits``; written atomically."""
  from ssldml_jax.eval import estimates

  fits = estimates.unique_fits(fits)
  arrays = {key: np.asarray([getattr(f, key) for f in fits], str) for key in _FIT_TEXT}
  arrays.update({key: np.asarray([getattr(f, key) for f in fits], np.int64) for key in _FIT_INTS})
  arrays["threshold"] = np.asarray([np.nan if f.threshold is None else f.threshold for f in fits],
                                   np.float64)
  arrays["test_scores"] = np.stack([np.asarray(f.test_scores, np.float64) for f in fits]) \
      if fits else np.zeros((0, len(test_ecg_ids)))
  arrays["val_scores"] = np.concatenate([np.asarray(f.val_scores, np.float64) for f in fits]) \
      if fits else np.zeros(0)
  arrays["val_lengths"] = np.asarray([len(f.val_scores) for f in fits], np.int64)
  arrays["test_ecg_id"] = np.asarray(test_ecg_ids, str)
  with atomic.replacing(path, suffix=".npz") as tmp:
    np.savez(tmp, **arrays)
  return path


def load_fits(path: str) -> tuple[list[Fit], np.ndarray]:
  """``(fits, test_ecg_id)`` of a ``fits.npz``; scores as float64 arrays."""
  with np.load(path, allow_pickle=False) as f:
    data = {k: f[k] for k in f.files}
  ends = np.cumsum(data["val_lengths"])
  fits = []
  for i in range(len(data["head"])):
    threshold = float(data["threshold"][i])
    fits.append(Fit(**{k: str(data[k][i]) for k in _FIT_TEXT},
                    **{k: int(data[k][i]) for k in _FIT_INTS},
                    test_scores=data["test_scores"][i],
                    val_scores=data["val_scores"][ends[i] - data["val_lengths"][i]:ends[i]],
                    threshold=None if math.isnan(threshold) else threshold, info={}))
  return fits, data["test_ecg_id"]


def is_done(workdir: str) -> bool:
  """Both files of a finished probe exist (``probe_results.json`` is written last)."""
  return all(os.path.isfile(os.path.join(workdir, f)) for f in (FITS_FILE, RESULTS_FILE))
