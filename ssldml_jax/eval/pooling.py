"""A method's rows in the main job's tables, pooled from all of its probes.

The main job probes each method several times: once per pretraining seed, and a method that uses
labels once more per label-limited row, pretraining seed and probe seed (each time an encoder
pretrained on that row's patients only). ``pool`` gathers the fits of all of a method's probes
(their ``fits.npz``) into one ``estimates.evaluate``, so that every cell averages all of its
replicates; writes the method's ``predictions.csv`` (100% of labels, the mean over its
replicates) in the method's probe directory; and returns a ``ProbeOutcome`` for the report and
the ``estimates.Evaluation`` (cells) for the comparisons.

Every probe of a job must have scored the same test ECGs in the same order (it embeds the same
split); a mismatch is an error naming the probe, never a silent misalignment.
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import ml_collections
import numpy as np

from ssldml_jax.eval import embed, estimates, probe_files, subsets
from ssldml_jax.eval.probe_files import ProbeOutcome


def labeled_split(outcome: ProbeOutcome, split: str, role: str) -> dict:
  """A split's labeled rows as a probe embedded them (its embeddings cache), embeddings dropped."""
  arrays = embed.load_npz(outcome.embeddings_path(split))
  return subsets.labeled({k: arrays[k] for k in embed.FIELDS if k != "embedding"}, role)


def pooled_fits(outcomes: Sequence[ProbeOutcome], test_ecg_id: np.ndarray) -> list:
  """Every distinct fit of ``outcomes``, checked to score ``test_ecg_id`` in that order."""
  fits = []
  for o in outcomes:
    own, ids = probe_files.load_fits(o.fits_path)
    if not np.array_equal(ids, test_ecg_id):
      raise RuntimeError(f"{o.fits_path}: its fits score other test ECGs than the first probe "
                         "of the job (the dataset changed?); delete that probe directory")
    fits += own
  return fits


def pool(config: ml_collections.ConfigDict, name: str, outcomes: Sequence[ProbeOutcome],
         workdir: str, test: dict) -> tuple[ProbeOutcome, estimates.Evaluation]:
  """The pooled outcome of method ``name`` from its ``outcomes`` (module docstring).

  ``test``: the labeled test split (``labeled_split``), the same for every method of the job.
  """
  fits = pooled_fits(outcomes, test["ecg_id"])
  evaluation = estimates.evaluate(config, fits, test, name)
  first = outcomes[0]
  splits = {"test": test,
            "validation": labeled_split(first, config.data.validation_split, "validation")}
  if jax.process_index() == 0:  # every process pooled the same; one writes
    os.makedirs(workdir, exist_ok=True)
    probe_files.write_predictions(os.path.join(workdir, probe_files.PREDICTIONS_FILE), config,
                                  fits, splits)
  records = estimates.fit_records(fits, test, float(config.task.pcwp_threshold))
  outcome = ProbeOutcome(name=name, workdir=workdir, rows=evaluation.rows,
                         tests=evaluation.tests, fits=records,
                         embeddings_dir=os.path.dirname(first.embeddings_path("x")))
  return outcome, evaluation
