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
from typing import Mapping, Sequence

import jax
import ml_collections
import numpy as np

from ssldml_jax.eval import embed, estimates, probe_files, subsets, targets
from ssldml_jax.eval.probe_files import ProbeOutcome


def labeled_split(outcome: ProbeOutcome, builder, split: str, role: str,
                  probe_targets: Sequence[targets.Target]) -> dict:
  """A split's rows with known labels as a probe embedded them (its embeddings cache, embeddings
  dropped), with the label features of ``probe_targets`` that the cache does not carry."""
  from ssldml_jax.eval import probe_lib

  arrays = embed.load_npz(outcome.embeddings_path(split))
  arrays = {k: arrays[k] for k in embed.FIELDS if k != "embedding"}
  extra = tuple(dict.fromkeys(t.feature for t in probe_targets if t.feature not in arrays))
  return subsets.labeled(probe_lib.with_features(arrays, builder, split, extra), role,
                         probe_targets)


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
         workdir: str, splits: Mapping[str, dict], probe_targets: Sequence[targets.Target]
         ) -> tuple[ProbeOutcome, estimates.Evaluation]:
  """The pooled outcome of method ``name`` from its ``outcomes`` (module docstring).

  ``splits``: the labeled 'validation' and 'test' splits (``labeled_split``), the same for every
  method of the job; ``probe_targets``: the targets the probes fit (resolved).
  """
  test = splits["test"]
  fits = pooled_fits(outcomes, test["ecg_id"])
  evaluation = estimates.evaluate(config, fits, test, name, probe_targets)
  first = outcomes[0]
  if jax.process_index() == 0:  # every process pooled the same; one writes
    os.makedirs(workdir, exist_ok=True)
    probe_files.write_predictions(os.path.join(workdir, probe_files.PREDICTIONS_FILE), config,
                                  fits, splits, probe_targets)
  records = estimates.fit_records(fits, test, probe_targets)
  outcome = ProbeOutcome(name=name, workdir=workdir, rows=evaluation.rows,
                         tests=evaluation.tests, fits=records,
                         embeddings_dir=os.path.dirname(first.embeddings_path("x")))
  return outcome, evaluation
