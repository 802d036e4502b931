"""Which labeled ECGs a head trains on: rows with known labels, and label-fraction subsets.

Label fractions. ``label_fraction_subsets`` shuffles the training PATIENTS once per seed and
takes prefixes of that order, so the subsets are patient-level, deterministic in the seed, and
nested (1% inside 10% inside 100%). A fraction f keeps ceil(f x patients) patients (at least
one). The "limited" setting keeps EXACTLY n ECGs (the paper's 1,000 labeled ECGs): whole
patients in the same order until n is reached, the last patient contributing only its first
ECGs (array order) if it would overshoot. So every seed and method trains on the same number of
labels, and at most one patient is partial.

In a probe (``config.probe``): the ``fractions`` and ``limited_n`` subsets are drawn anew for
every seed; heads outside ``fraction_heads`` train on ``FULL`` (100%) only; ``probe.rows`` (set
by the main job) restricts a probe to some of these rows.

Validation in a label-limited row. Model selection (the L2 strength, the threshold, early
stopping) must not see more labels than the row says either: with
``probe.limited_validation='fraction'`` a row keeps the same share of VALIDATION patients as
it keeps of training patients, drawn like the training subset (validation patients shuffled once
per seed, a prefix taken, so rows are nested), but at least ``MIN_VALIDATION_PATIENTS``
(``validation_rows``). The floor: the L2 strength is chosen by AUROC and the threshold by F1,
both of which need the two classes; at the 25-35% prevalence of elevated mPCWP, 20 patients miss
one class with probability below 0.1% (0.7^20 = 0.0008), while 8 patients (1% of 800) would miss
the positives 6-10% of the time. ``'full'`` uses the whole validation split in every row (the
paper's protocol, which lets a 1% row select its model on far more labels than it trains on).

Label-limited pretraining. A method that uses labels is pretrained, for a label-limited row, on
``train_label_rows``: the row's subset of the same seed, drawn by the same function from the same
patient ids (the labeled training ECGs in record order, as the probe embeds them), so the
encoder behind a row has seen exactly the labels its probe sees.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import ml_collections
import numpy as np

from ssldml_jax import cli
from ssldml_jax.eval import bootstrap, targets

DEFAULT_FRACTIONS = (0.01, 0.1, 1.0)
DEFAULT_LIMITED_N = 1000
MIN_VALIDATION_PATIENTS = 20
VALIDATION_CHOICES = ("fraction", "full")
_VALIDATION_STREAM = 1   # the validation draw of a seed is independent of its training draw


def fraction_name(fraction: float) -> str:
  return f"{100.0 * fraction:g}%"


def limited_name(n: int) -> str:
  return f"n={n}"


FULL = fraction_name(1.0)   # '100%'


def row_slug(name: str) -> str:
  """A row name as a directory name: '1%' -> 'labels_1pct', 'n=1000' -> 'labels_n1000'."""
  return "labels_" + name.replace("%", "pct").replace("=", "").replace(".", "p")


def parse_row(name: str) -> tuple[Optional[float], Optional[int]]:
  """``(fraction, None)`` for '10%', ``(None, n)`` for 'n=1000'; ValueError otherwise."""
  try:
    if name.endswith("%"):
      f = float(name[:-1]) / 100.0
      if 0.0 < f <= 1.0:
        return f, None
    elif name.startswith("n="):
      n = int(name[2:])
      if n >= 1:
        return None, n
  except ValueError:
    pass
  raise ValueError(f"{name!r} is not a label row: write a percentage of training patients "
                   "('10%') or a number of labeled ECGs ('n=1000')")


def label_fraction_subsets(patient_ids, *, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                           limited_n: Optional[int] = DEFAULT_LIMITED_N,
                           seed: int = 0) -> dict[str, np.ndarray]:
  """Training-set subsets by name ('1%', '10%', '100%', 'n=1000') -> sorted ECG indices."""
  inverse, num_patients = bootstrap.patient_index(patient_ids)
  order = np.random.default_rng(seed).permutation(num_patients)
  rank = np.empty(num_patients, np.int64)
  rank[order] = np.arange(num_patients)
  ecg_rank = rank[inverse]                       # position of each ECG's patient in the order
  # ECGs sorted by (patient rank, index): a prefix of this is a prefix of the patient order.
  by_rank = np.lexsort((np.arange(inverse.size), ecg_rank))
  out = {}
  for f in fractions:
    if not 0.0 < f <= 1.0:
      raise ValueError(f"label fraction {f} must lie in (0, 1]")
    k = max(1, math.ceil(f * num_patients - 1e-9))
    out[fraction_name(f)] = np.flatnonzero(ecg_rank < k)
  if limited_n is not None:
    if not 0 < limited_n <= inverse.size:
      raise ValueError(f"limited n={limited_n} labeled ECGs requested but the training split has "
                       f"{inverse.size} ECGs")
    out[limited_name(limited_n)] = np.sort(by_rank[:limited_n])
  return out


def labeled(split: dict, name: str,
            probe_targets: Optional[Sequence[targets.Target]] = None) -> dict:
  """The rows of ``split`` whose label is known for every target (``targets.known``; default:
  mPCWP's); the others are counted per target and reported, not silently dropped. ``name`` is
  the split's role ('train', 'validation', 'test')."""
  keep = np.ones(len(split["ecg_id"]), bool)
  for target in probe_targets or (targets.parse("regression", 0.0),):
    known = targets.known(split, target)
    if not known.all():
      first = str(split["ecg_id"][np.flatnonzero(~known)[0]])
      print(f"probe: {name}: {int((~known).sum())} of {known.size} ECG(s) without a label for "
            f"{target.describe()} left out (first {first!r})", flush=True)
    stray = targets.unknown_classes(split, target)
    if stray.any():
      print(f"probe: {name}: of those, {int(stray.sum())} hold {target.feature} value(s) "
            f"{sorted(set(split[target.feature][stray].tolist()))} that are no class of the "
            "training split", flush=True)
    keep &= known
  if not keep.any():
    raise cli.ConfigError(f"config.data.{name}_split: no ECG of that split has a label for every "
                          "target of config.probe.targets")
  return {k: v[keep] for k, v in split.items()}


def row_names(config: ml_collections.ConfigDict) -> list[str]:
  """Every label row of ``config.probe`` in table order (fractions, then n = limited_n)."""
  p = config.probe
  names = [fraction_name(f) for f in sorted(p.fractions)]
  if p.limited_n is not None:
    names.append(limited_name(p.limited_n))
  return names


def subset_names(config: ml_collections.ConfigDict, head: str) -> list[str]:
  """The subsets ``head`` trains on, in table order (only ``probe.rows`` when set)."""
  p = config.probe
  names = row_names(config) if head in p.fraction_heads else [FULL]
  return [n for n in names if not p.rows or n in p.rows]


def validation_rows(config: ml_collections.ConfigDict, val_patient_ids, train_patient_ids,
                    train_rows: np.ndarray, seed: int) -> np.ndarray:
  """Rows of the validation split that model selection of a training subset may use.

  The subset's share of training patients, at least ``MIN_VALIDATION_PATIENTS`` (module
  docstring); every row under ``probe.limited_validation='full'`` or for the whole training split.
  """
  num_val = len(val_patient_ids)
  inverse, num_patients = bootstrap.patient_index(val_patient_ids)
  share = np.unique(np.asarray(train_patient_ids)[train_rows]).size / np.unique(
      train_patient_ids).size
  if config.probe.limited_validation == "full" or share >= 1.0:
    return np.arange(num_val)
  keep = min(num_patients, max(MIN_VALIDATION_PATIENTS, math.ceil(share * num_patients - 1e-9)))
  order = np.random.default_rng([seed, _VALIDATION_STREAM]).permutation(num_patients)
  return np.flatnonzero(np.isin(inverse, order[:keep]))


def train_label_rows(patient_ids, row: str, seed: int) -> np.ndarray:
  """The rows (indices into ``patient_ids``, the labeled training ECGs in record order) of label
  row ``row`` drawn with ``seed``: the training subset a probe of that seed fits on."""
  fraction, n = parse_row(row)
  if n is not None and n > len(patient_ids):
    raise ValueError(f"row {row!r}: the training split has only {len(patient_ids)} labeled ECGs")
  (rows,) = label_fraction_subsets(patient_ids, fractions=(fraction,) if fraction else (),
                                   limited_n=n, seed=seed).values()
  return rows


def draw_subsets(config: ml_collections.ConfigDict, patient_ids: np.ndarray,
                 seed: int) -> dict[str, np.ndarray]:
  """Training subsets of one seed; a ``limited_n`` above the split's size is left out (the
  caller says so)."""
  p = config.probe
  limited = p.limited_n if p.limited_n is not None and p.limited_n <= len(patient_ids) else None
  return label_fraction_subsets(patient_ids, fractions=tuple(p.fractions), limited_n=limited,
                                seed=seed)
