"""Per-anchor Python loops that mine and score triplets the way the reference code does.

The authors' PyTorch code mined on the fly with a loop over anchors: sort the anchor's row of the
raw-signal distance matrix, take a positive from the sorted order and a random negative, score
each triplet with its own tensor operations, sum, then one backward pass. These functions redo
that (with the positive fixed to the nearest neighbour, as the method says) so that the mining
benchmark can time this project's compiled miners against it and check that both give the same
loss. Nothing in the package calls them; they import torch, an optional benchmark dependency.

Both loops score a triplet as ``max(|a - p| - |a - n| + margin, 0)`` on L2-normalised embeddings
and average over anchors that have a triplet, the definition ``ssldml_jax.losses.triplet_loss``
uses with ``distance="euclidean"`` (and pytorch-metric-learning's ``TripletMarginLoss`` with a
``MeanReducer``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def _torch():
  import torch  # Optional peer (requirements-bench.txt): imported only when a loop runs.
  return torch


def _score(emb, triplets: list[tuple[int, int, int]], margin: float):
  """Mean triplet loss over ``triplets``, one small graph per triplet, then backward.

  Returns ``(loss, gradient w.r.t. emb)`` as NumPy; no triplet gives a zero loss and gradient.
  """
  torch = _torch()
  leaf = torch.tensor(emb, dtype=torch.float32, requires_grad=True)
  unit = torch.nn.functional.normalize(leaf, dim=1)
  terms = []
  for a, p, n in triplets:
    d_ap = torch.linalg.vector_norm(unit[a] - unit[p])
    d_an = torch.linalg.vector_norm(unit[a] - unit[n])
    terms.append(torch.relu(d_ap - d_an + margin))
  if not terms:
    return 0.0, np.zeros_like(np.asarray(emb, np.float32))
  loss = torch.stack(terms).mean()
  loss.backward()
  return float(loss.detach()), leaf.grad.numpy()


def distance_triplet_loop(emb: np.ndarray, raw_dist: np.ndarray, *, margin: float = 0.2,
                          neg_topk: Optional[int] = None,
                          rng: Optional[np.random.Generator] = None) -> tuple[float, np.ndarray]:
  """SSL-DML mining from a raw-signal distance matrix ``(B, B)``, one anchor at a time.

  Positive: the anchor's nearest other ECG. Negative: uniform over the rest, or over the
  ``neg_topk`` farthest of them (``neg_topk=1``: the farthest, deterministic). The same rule as
  ``miners.distance_miner``; only the random draws differ, so with ``neg_topk=1`` (and no ties)
  both select the same triplets.
  """
  if neg_topk is None or neg_topk > 1:
    if rng is None:
      raise ValueError("a random negative needs rng (or neg_topk=1)")
  b = raw_dist.shape[0]
  triplets = []
  for i in range(b):
    order = np.argsort(raw_dist[i], kind="stable")
    order = order[order != i]
    if len(order) < 2:
      continue
    pos, rest = order[0], order[1:]
    if neg_topk is not None:
      rest = rest[-neg_topk:]
    neg = rest[-1] if neg_topk == 1 else rest[rng.integers(len(rest))]
    triplets.append((i, int(pos), int(neg)))
  return _score(emb, triplets, margin)


def batch_hard_triplet_loop(emb: np.ndarray, labels: np.ndarray, *,
                            margin: float = 0.2) -> tuple[float, np.ndarray]:
  """Batch-hard mining (farthest same-label, nearest other-label), one anchor at a time.

  Distances are Euclidean between L2-normalised embeddings, recomputed per anchor from its row.
  """
  emb = np.asarray(emb, np.float32)
  unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
  triplets = []
  for i in range(len(emb)):
    row = np.linalg.norm(unit - unit[i], axis=1)
    order = np.argsort(row, kind="stable")
    same = labels[order] == labels[i]
    positives = order[same & (order != i)]
    negatives = order[~same]
    if len(positives) and len(negatives):
      triplets.append((i, int(positives[-1]), int(negatives[0])))
  return _score(emb, triplets, margin)
