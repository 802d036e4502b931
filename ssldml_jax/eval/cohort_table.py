"""The cohort table of a dataset: ECGs, patients, mPCWP, sex and age bands per split.

Columns: split, ECGs, distinct patients, ECGs with a known mPCWP, its mean (SD) in mmHg, how many
are above the threshold (the binary probe target, ``targets.values``) with their share of the
known ones, female / male / unknown sex, the age bands of ``subgroups.AGE_BANDS`` (age at each
ECG) and "<18 / unknown". Labels come from ``reader.read_labels``, as every reader sees them.
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from ssldml_jax.data import reader
from ssldml_jax.eval import subgroups, tables, targets


def _row(split: str, labels: dict, threshold: float) -> tuple[str, ...]:
  n = len(labels["pcwp"])
  pcwp = labels["pcwp"].astype(np.float64)  # mean and SD in double precision
  known = np.isfinite(pcwp)
  sex = subgroups.sex_groups(labels["sex"]) if n else np.array([], str)
  age = subgroups.age_bands(labels["age"]) if n else np.array([], str)
  if known.any():
    stats = f"{pcwp[known].mean():.1f} ({pcwp[known].std():.1f})"
    above = targets.values(labels, targets.parse("binary", threshold))[known]
    high = f"{int(above.sum())} ({100 * above.mean():.1f}%)"
  else:
    stats = high = "-"
  return ((split, str(n), str(len(np.unique(labels["patient_id"]))), str(int(known.sum())),
           stats, high)
          + tuple(str(int((sex == g).sum())) for g in ("female", "male", subgroups.UNKNOWN))
          + tuple(str(int((age == b[2]).sum())) for b in subgroups.AGE_BANDS)
          + (f"{int((age == subgroups.AGE_UNDER_18).sum())} / "
             f"{int((age == subgroups.UNKNOWN).sum())}",))


def build(builder, threshold: float, example_split: str,
          labels: Optional[Mapping[str, dict]] = None) -> tuple[tables.Table, Optional[dict]]:
  """(the cohort table of every split of ``builder``, the first ECG of ``example_split`` as
  ``reader.first_ecg`` gives it, None if that split is empty or missing).

  ``labels``: split -> ``reader.read_labels`` of it, for a caller that has them already (default:
  read here)."""
  if labels is None:
    labels = {split: reader.read_labels(builder, split) for split in builder.info.splits}
  header = ("Split", "ECGs", "Patients", "mPCWP known", "mPCWP mean (SD)",
            f"mPCWP > {threshold:g}", "Female", "Male", "Sex unknown") + tuple(
                b[2] for b in subgroups.AGE_BANDS) + ("Age <18 / unknown",)
  body = tuple(_row(split, labels[split], threshold) for split in builder.info.splits)
  example = (reader.first_ecg(builder, example_split) if example_split in builder.info.splits
             else None)
  return tables.Table(header=header, body=body,
                      caption=f"Cohort: {builder.info.full_name} (ECGs per group)"), example
