"""The files a probe leaves in its workdir, written and read back.

- ``probe_results.json``: ``name``, the table ``rows`` (head and ``tables.Row`` fields), the
  subgroup ``tests`` (head, target and ``subgroups.GroupTest`` fields), one record per
  fit (``estimates.fit_records``), and what the caller adds (source, dataset, the ECGs of each
  split and how many had labels, config). NaN and infinities are stored as ``null`` and read
  back as NaN.
- ``fits.npz``: every distinct fit (``estimates.unique_fits``) with its scores, so that the main
  job can pool the fits of several probes (pretraining seeds, label rows) into one cell:
  ``head``, ``target``, ``fraction`` (text), ``seed``, ``pretrain_seed``, ``n_train``,
  ``n_validation`` per fit; fit i's ``test_scores_<i>`` (test ECGs, or test ECGs x labels),
  ``val_scores_<i>`` and ``threshold_<i>`` (empty: none; one value, or one per label); and
  ``test_ecg_id`` (the rows of every ``test_scores_<i>``). Read with ``allow_pickle=False``.
- ``predictions.csv``: ``ecg_id, patient_id, split, y_true_<column>, y_score_<column>[_<head>]``
  for the validation and test ECGs, a column per target (``targets.columns``: its name, or
  ``<name>.<label>`` for each label or class of a multi-label or multi-class target, whose
  ``y_true`` is 0/1); ``y_true_regression`` is the mPCWP in mmHg. Scores are the seed mean at
  100% of labels (9 significant digits), the primary head's unsuffixed.

``ProbeOutcome`` is what a finished probe amounts to; a workdir holding ``probe_results.json``
is done (``is_done``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from typing import Any, Mapping, Optional, Sequence

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


def score_column(column: str, head: str, primary_head: str, kind: str = "score") -> str:
  """The ``y_<kind>`` column of ``column`` (``targets.columns``) by ``head``: the primary
  head's unsuffixed. ``predict`` names its scores (and its ``pred`` decisions) the same way."""
  return f"y_{kind}_{column}" + ("" if head == primary_head else f"_{head}")


def seed_mean(fits: Sequence[Fit], head: str, target: str, which: str) -> Any:
  """The mean over seeds of ``which`` ('val_scores', 'test_scores') of the 100% fits of
  ``head`` and ``target``; None when there is none."""
  chosen = [f for f in fits if (f.head, f.target, f.fraction) == (head, target, subsets.FULL)]
  return np.mean([getattr(f, which) for f in chosen], axis=0) if chosen else None


def write_predictions(path: str, config: ml_collections.ConfigDict, fits: Sequence[Fit],
                      splits: Mapping[str, dict],
                      probe_targets: Optional[Sequence[targets.Target]] = None) -> str:
  """``predictions.csv`` (module docstring) of ``splits['validation']`` and ``['test']``."""
  p = config.probe
  columns, values = [], {}
  for target in probe_targets or targets.from_config(config):
    names = targets.columns(target)
    truth = {split: targets.as_columns(target, targets.values(splits[split], target))
             for split in ("validation", "test")}
    for k, name in enumerate(names):
      columns.append(f"y_true_{name}")
      values[columns[-1]] = {split: truth[split][k] for split in truth}
    for head in p.heads:
      mean = {split: seed_mean(fits, head, target.name, f"{key}_scores")
              for split, key in (("validation", "val"), ("test", "test"))}
      if mean["test"] is None:
        continue
      for k, name in enumerate(names):
        columns.append(score_column(name, head, p.primary_head))
        values[columns[-1]] = {split: targets.as_columns(target, mean[split])[k]
                               for split in mean}
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
  """A label as 0/1 or mmHg to 0.001, a score to 9 significant digits."""
  if column.startswith("y_true_"):
    return int(value) if isinstance(value, (bool, np.bool_)) else f"{float(value):.3f}"
  return f"{float(value):.9g}"


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
  for i, f in enumerate(fits):
    arrays[f"test_scores_{i}"] = np.asarray(f.test_scores, np.float64)
    arrays[f"val_scores_{i}"] = np.asarray(f.val_scores, np.float64)
    arrays[f"threshold_{i}"] = (np.zeros(0) if f.threshold is None
                                else np.asarray(f.threshold, np.float64))
  arrays["test_ecg_id"] = np.asarray(test_ecg_ids, str)
  with atomic.replacing(path, suffix=".npz") as tmp:
    np.savez(tmp, **arrays)
  return path


def _threshold(array: np.ndarray) -> Any:
  """A stored threshold back as None, a float, or a tuple of floats (one per label)."""
  if array.size == 0:
    return None
  return float(array) if array.ndim == 0 else tuple(float(t) for t in array)


def load_fits(path: str) -> tuple[list[Fit], np.ndarray]:
  """``(fits, test_ecg_id)`` of a ``fits.npz``; scores as float64 arrays."""
  with np.load(path, allow_pickle=False) as f:
    data = {k: f[k] for k in f.files}
  fits = [Fit(**{k: str(data[k][i]) for k in _FIT_TEXT}, **{k: int(data[k][i]) for k in _FIT_INTS},
              test_scores=data[f"test_scores_{i}"], val_scores=data[f"val_scores_{i}"],
              threshold=_threshold(data[f"threshold_{i}"]), info={})
          for i in range(len(data["head"]))]
  return fits, data["test_ecg_id"]


def is_done(workdir: str) -> bool:
  """Both files of a finished probe exist (``probe_results.json`` is written last)."""
  return all(os.path.isfile(os.path.join(workdir, f)) for f in (FITS_FILE, RESULTS_FILE))
