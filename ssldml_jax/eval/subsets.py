"""Which labeled ECGs a head trains on: rows with known labels, and label-fraction subsets.

Label fractions. ``label_fraction_subsets`` shuffles the training PATIENTS once per seed and
takes prefixes of that order, so the subsets are patient-level, deterministic in the seed, and
nested (1% inside 10% inside 100%). A fraction f keeps ceil(f x patients) patients (at least
one). The "limited" setting keeps EXACTLY n ECGs (the paper's 1,000 labeled ECGs): whole
patients in the same order until n is reached, the last patient contributing only its first
ECGs (array order) if it would overshoot. So every seed and method trains on the same number of
labels, and at most one patient is partial.

In a probe (``config.probe``): the ``fractions`` and ``limited_n`` subsets are drawn anew for
every seed; heads outside ``fraction_heads`` train on ``FULL`` (100%) only.
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


def fraction_name(fraction: float) -> str:
  return f"{100.0 * fraction:g}%"


def limited_name(n: int) -> str:
  return f"n={n}"


FULL = fraction_name(1.0)   # '100%'


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


def subset_names(config: ml_collections.ConfigDict, head: str) -> list[str]:
  """The subsets ``head`` trains on, in table order."""
  p = config.probe
  if head not in p.fraction_heads:
    return [FULL]
  names = [fraction_name(f) for f in sorted(p.fractions)]
  if p.limited_n is not None:
    names.append(limited_name(p.limited_n))
  return names


def draw_subsets(config: ml_collections.ConfigDict, patient_ids: np.ndarray,
                 seed: int) -> dict[str, np.ndarray]:
  """Training subsets of one seed; a ``limited_n`` above the split's size is left out (the
  caller says so)."""
  p = config.probe
  limited = p.limited_n if p.limited_n is not None and p.limited_n <= len(patient_ids) else None
  return label_fraction_subsets(patient_ids, fractions=tuple(p.fractions), limited_n=limited,
                                seed=seed)
