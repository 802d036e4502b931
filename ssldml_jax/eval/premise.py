"""The premise of raw-distance mining, measured: are the mined positives label-informative?

SSL-DML assumes that an ECG's nearest neighbour under a distance between the raw signals shares
its physiology. ``measure`` checks that on the labeled training patients, in batches as in
training: one epoch of the training stream (``pipeline.make_train_iterator`` over
``config.data.train_split``, ECGs with a known mPCWP, global batches of the training size, the
pretraining seed), each batch's raw distances computed by the method's own code
(``methods.ssl_dml.raw_distance_rows``: decimation, DTW band, padding) under ``pmap`` as in the
training step, and its positives chosen by the training miner (``miners.distance_miner``). Per
batch, over its anchors:

- ``delta_positive`` / ``delta_random``: mean |delta mPCWP| (mmHg) between an anchor and its mined
  positive, and between it and a random partner (uniform among the batch's other ECGs);
  ``delta_gain`` = random - positive (> 0: the positive is closer in mPCWP than chance);
- ``agree_positive`` / ``agree_random``: the share of anchors whose positive (random partner) is
  on the same side of ``threshold`` (mPCWP > 18 mmHg in the paper);
- ``same_patient``: the share of positives that are another ECG of the anchor's own patient
  (these share the mPCWP whatever the signal says);
- ``spearman``: Spearman's rank correlation between the raw distance and |delta mPCWP| over the
  batch's pairs of ECGs of different patients (> 0: nearer signals, nearer pressures).

A table value is the mean over batches with a 95% percentile interval from resampling batches
(independent draws of the training stream). On several processes, the anchors are process 0's
(against the whole global batch).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Sequence

import jax
import ml_collections
import numpy as np
from scipy import stats

from ssldml_jax import atomic, methods, miners, parallel, steps
from ssldml_jax.eval import tables

STATS = ("delta_positive", "delta_random", "delta_gain", "agree_positive", "agree_random",
         "same_patient", "spearman")
N_RESAMPLES = 1000
HOW_TO_READ = (
    "How to read it: if raw-signal nearest neighbours shared physiology, the mined positive "
    "would be much closer in mPCWP than a random partner (|delta| well below, class agreement "
    "well above) and Spearman's rho would be clearly positive; values near the random partner's "
    "and a rho near 0 mean the method learns from signal similarity that says little about "
    "mPCWP.")
_COLUMNS = (("delta_positive", "|d mPCWP| positive (mmHg)"),
            ("delta_random", "|d mPCWP| random partner"), ("delta_gain", "random - positive"),
            ("agree_positive", "class agreement positive"),
            ("agree_random", "class agreement random partner"),
            ("same_patient", "positives of the same patient"),
            ("spearman", "Spearman rho (distance, |d mPCWP|)"))


@dataclasses.dataclass(frozen=True)
class Premise:
  method: str
  batches: int
  anchors: int
  values: dict              # stat -> (mean, low, high)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, data: dict) -> "Premise":
    return cls(method=data["method"], batches=int(data["batches"]), anchors=int(data["anchors"]),
               values={k: tuple(float(x) for x in v) for k, v in data["values"].items()})


def batch_stats(distance_rows: np.ndarray, positives: np.ndarray, offset: int,
                pcwp: np.ndarray, patients: np.ndarray, threshold: float,
                rng: np.random.Generator) -> dict[str, float]:
  """The ``STATS`` of one global batch from its local anchors' distance rows ``(b, N)`` (anchor
  i is row ``offset + i`` of the batch), their positives ``(b,)``, and the batch's mPCWP and
  patient keys ``(N,)``."""
  b, num = distance_rows.shape
  anchors = offset + np.arange(b)
  partner = rng.integers(0, num - 1, size=b)
  partner += partner >= anchors                  # uniform among the others
  elevated = pcwp > threshold
  delta_pos = np.abs(pcwp[anchors] - pcwp[positives])
  delta_rand = np.abs(pcwp[anchors] - pcwp[partner])
  other = (patients[anchors][:, None] != patients[None, :])
  other[np.arange(b), anchors] = False
  rho = stats.spearmanr(distance_rows[other],
                        np.abs(pcwp[anchors][:, None] - pcwp[None, :])[other]).statistic
  return {"delta_positive": float(delta_pos.mean()), "delta_random": float(delta_rand.mean()),
          "delta_gain": float(delta_rand.mean() - delta_pos.mean()),
          "agree_positive": float(np.mean(elevated[anchors] == elevated[positives])),
          "agree_random": float(np.mean(elevated[anchors] == elevated[partner])),
          "same_patient": float(np.mean(patients[anchors] == patients[positives])),
          "spearman": float(rho)}


def summarize(method: str, per_batch: Sequence[dict], anchors: int, seed: int = 0) -> Premise:
  """Mean over batches and the batch-bootstrap 95% percentile interval of every statistic."""
  table = np.array([[b[k] for k in STATS] for b in per_batch], np.float64)
  rng = np.random.default_rng(seed)
  draws = rng.integers(0, len(per_batch), size=(N_RESAMPLES, len(per_batch)))
  means = np.nanmean(table[draws], axis=1)            # (R, stats)
  low, high = np.nanquantile(means, [0.025, 0.975], axis=0)
  values = {k: (float(np.nanmean(table[:, i])), float(low[i]), float(high[i]))
            for i, k in enumerate(STATS)}
  return Premise(method=method, batches=len(per_batch), anchors=anchors, values=values)


def _mining_fn(config: ml_collections.ConfigDict, raw_distance: str):
  from ssldml_jax.methods import ssl_dml

  def per_device(x, mask, key):
    rows = ssl_dml.raw_distance_rows(config, raw_distance, x, mask, parallel.AXIS)
    offset = parallel.global_offset(x.shape[0], parallel.AXIS)
    t = miners.distance_miner(rows, key, config.mining.neg_topk, offset=offset)
    return rows, t.positives, offset

  return jax.pmap(per_device, axis_name=parallel.AXIS, in_axes=(0, 0, None))


def measure(config: ml_collections.ConfigDict, threshold: float) -> Premise:
  """The premise table row of ``config.method`` (a pretraining stage config of a raw-distance
  mining method), on one epoch of the labeled training split (module docstring)."""
  from ssldml_jax.data import pipeline

  method = methods.get(config.method)
  if method.raw_distance is None:
    raise ValueError(f"method {method.name!r} does not mine from raw distances")
  batches = pipeline.make_train_iterator(config.data, seed=config.seed,
                                         split=config.data.train_split, num_epochs=1,
                                         require_pcwp=True)
  fn = _mining_fn(config, method.raw_distance)
  key = jax.random.PRNGKey(config.seed)
  rng = np.random.default_rng(config.seed)
  per_batch, anchors = [], 0
  try:
    for batch in batches:
      rows, positives, offset = jax.device_get(fn(batch["ecg"], batch["mask"], key))
      # Every process sees the whole batch's labels: gather them the way the step gathers ECGs.
      pcwp = _global(batch["pcwp"].astype(np.float64))
      keys = _global(steps.patient_keys(batch["patient_id"]))
      rows = rows.reshape(-1, rows.shape[-1])
      per_batch.append(batch_stats(rows, positives.reshape(-1), int(offset[0]), pcwp, keys,
                                   threshold, rng))
      anchors += rows.shape[0]
  finally:
    batches.close()
  if not per_batch:
    raise ValueError(f"the labeled training split {config.data.train_split!r} holds fewer ECGs "
                     "than one global batch")
  return summarize(method.name, per_batch, anchors, seed=int(config.seed))


def _global(local: np.ndarray) -> np.ndarray:
  """A host array of this process's rows of a batch, as the whole global batch (device-major)."""
  flat = np.asarray(local).reshape(-1)
  if jax.process_count() == 1:
    return flat
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(flat)).reshape(-1)


def save(path: str, premise: Premise) -> None:
  """``premise`` as JSON, written atomically."""
  atomic.write_text(path, json.dumps(premise.to_json(), indent=1))


def load(path: str) -> Premise:
  with open(path, encoding="utf-8") as fh:
    return Premise.from_json(json.load(fh))


def table(premises: Sequence[Premise], labels: dict, threshold: float) -> tables.Table:
  """The ``pretext`` table: one line per raw-distance mining method."""
  body = []
  for p in premises:
    body.append((labels.get(p.method, p.method), f"{p.batches} / {p.anchors}")
                + tuple(tables.format_cell(*p.values[k]) for k, _ in _COLUMNS))
  caption = (f"The premise of raw-distance mining on the labeled training patients, in training "
             f"batches: the mined positive against a random partner of the same batch (class: "
             f"mPCWP > {threshold:g} mmHg); mean over batches, 95% batch-bootstrap interval")
  return tables.Table(header=("Method", "Batches / anchors") + tuple(h for _, h in _COLUMNS),
                      body=tuple(body), caption=caption)
