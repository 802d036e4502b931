"""Triplet miners with static shapes: jittable, vmappable, no Python loops over samples.

Every miner returns one candidate triplet per anchor as ``Triplets(anchors, positives,
negatives, valid)``: int32 arrays of length ``n_anchors`` holding row indices into the candidate
set, and a bool mask. A row whose tuple could not be formed has ``valid = False`` and its positive
and negative point at the anchor itself, so that gathers stay in range; losses skip it.

Global batch. A miner's input is rectangular, ``(n_anchors, n_candidates)`` (a distance matrix)
or ``(n_candidates,)`` labels with ``num_anchors``: row ``i`` is candidate ``offset + i``. Each
device passes its own rows against the batch gathered from all devices with
``offset = parallel.global_offset(n_local)``; the column ``offset + i`` (the anchor itself) is never
a positive or a negative. A single device is the square case, ``offset = 0``.

Ties. Every "nearest"/"farthest"/"hardest" choice breaks ties towards the lowest candidate index
(``jnp.argmin``/``jnp.argmax``/``lax.top_k`` semantics; a NaN score counts as the best, as there).

Randomness. Random choices are uniform over the allowed candidates: each anchor draws from
``fold_in(fold_in(key, global anchor index), stream)`` with ``jax.random.randint`` over the
allowed candidates of its row of the global batch. Pass the *same* key on every device (the
step key, not a per-device key) and the mined triplets do not depend on how the batch is split
over devices. Which candidate a given key picks may change with the jax version; the
distribution does not.

Masks. ``mask`` / ``valid_labels`` are ``(n_candidates,)`` bool (the gathered batch): a False row
(padding, missing label) is never a positive or a negative, and as an anchor it yields an invalid
tuple. NaN labels and non-finite raw distances count as missing.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax


class Triplets(NamedTuple):
  anchors: jax.Array    # (n,) int32, global index of each anchor: offset + arange(n).
  positives: jax.Array  # (n,) int32
  negatives: jax.Array  # (n,) int32
  valid: jax.Array      # (n,) bool


class Candidates(NamedTuple):
  """Which candidates each anchor may pair with (see ``candidates``)."""
  anchors: jax.Array    # (n,) int32: offset + arange(n)
  allowed: jax.Array    # (n, N) bool: usable and not the anchor itself
  anchor_ok: jax.Array  # (n,) bool: the anchor itself is usable


# Streams folded into the per-anchor key so that positive and negative draws are independent.
_POSITIVE_STREAM, _NEGATIVE_STREAM = 0, 1


def candidates(n_anchors: int, n_candidates: int, offset=0,
               mask: Optional[jax.Array] = None) -> Candidates:
  """The anchors ``offset + arange(n_anchors)`` and, per anchor, the usable other candidates.

  ``mask`` ``(n_candidates,)`` bool marks the usable candidates (default: all).
  """
  if n_anchors > n_candidates:
    raise ValueError(f"{n_anchors} anchors but only {n_candidates} candidates: anchors are rows "
                     "of the candidate set")
  anchors = jnp.asarray(offset, jnp.int32) + jnp.arange(n_anchors, dtype=jnp.int32)
  others = jnp.arange(n_candidates, dtype=jnp.int32)[None, :] != anchors[:, None]
  if mask is None:
    return Candidates(anchors, others, jnp.ones((n_anchors,), bool))
  mask = jnp.asarray(mask, bool)
  if mask.shape != (n_candidates,):
    raise ValueError(f"mask/valid_labels has shape {mask.shape}, expected ({n_candidates},)")
  return Candidates(anchors, others & mask[None, :], mask[anchors])


def usable_labels(labels: jax.Array, valid_labels: Optional[jax.Array] = None) -> jax.Array:
  """``(n_candidates,)`` bool: the label is marked valid and, for float labels, finite."""
  labels = jnp.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be (n_candidates,), got shape {labels.shape}")
  ok = jnp.ones(labels.shape, bool) if valid_labels is None else jnp.asarray(valid_labels, bool)
  if jnp.issubdtype(labels.dtype, jnp.floating):
    ok = ok & jnp.isfinite(labels)
  return ok


def _as_float(x: jax.Array) -> jax.Array:
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _nearest(scores: jax.Array, allowed: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Row-wise lowest allowed score (lowest index on ties) and whether the row allows any."""
  # An allowed +inf is clipped to the largest float so that it still beats the disallowed fill.
  scores = _as_float(scores)
  scores = jnp.where(allowed, jnp.minimum(scores, jnp.finfo(scores.dtype).max), jnp.inf)
  return jnp.argmin(scores, axis=1).astype(jnp.int32), jnp.any(allowed, axis=1)


def _farthest(scores: jax.Array, allowed: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Row-wise highest allowed score (lowest index on ties) and whether the row allows any."""
  scores = _as_float(scores)
  scores = jnp.where(allowed, jnp.maximum(scores, jnp.finfo(scores.dtype).min), -jnp.inf)
  return jnp.argmax(scores, axis=1).astype(jnp.int32), jnp.any(allowed, axis=1)


def _uniform_choice(key: jax.Array, anchors: jax.Array, allowed: jax.Array,
                    stream: int) -> tuple[jax.Array, jax.Array]:
  """Per row, a column drawn uniformly among the allowed ones, and whether the row allows any.

  Row ``r`` draws ``k`` with ``jax.random.randint`` from ``fold_in(fold_in(key, anchors[r]),
  stream)`` and takes its ``k``-th allowed column: the draw depends on the anchor's global index
  and its row only, not on which device holds the row. One number per row: ``jax.random.choice``
  with ``p`` searches the cumulative probabilities and made the mining step 2-3x slower on a GPU,
  ``jax.random.categorical`` draws a number per column and made it up to 2x slower on a CPU.
  A row with nothing allowed gets column 0; callers mark it invalid.
  """
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, i), stream))(anchors)
  rank = jnp.cumsum(allowed, axis=1, dtype=jnp.int32)  # Allowed columns up to each column.
  count = rank[:, -1]
  k = jax.vmap(lambda kk, c: jax.random.randint(kk, (), 0, jnp.maximum(c, 1)))(keys, count)
  return jnp.argmax(rank > k[:, None], axis=1).astype(jnp.int32), count > 0


def _finish(anchors, pos, neg, valid) -> Triplets:
  return Triplets(anchors, jnp.where(valid, pos, anchors), jnp.where(valid, neg, anchors), valid)


def distance_miner(raw_dist: jax.Array, key: jax.Array, neg_topk: Optional[int] = None,
                   offset=0, mask: Optional[jax.Array] = None) -> Triplets:
  """SSL-DML mining from a raw-signal distance (e.g. DTW) ``(n_anchors, n_candidates)``.

  Positive: the nearest other candidate. Negative: uniform among the candidates other than the
  anchor and its positive, or, with ``neg_topk=k``, uniform among the ``k`` farthest of those
  (``neg_topk=1`` is the deterministic farthest). Valid when both exist (at least 3 usable
  candidates). Non-finite distances are treated as missing.
  """
  raw_dist = jnp.asarray(raw_dist)
  if raw_dist.ndim != 2:
    raise ValueError(f"raw_dist must be (n_anchors, n_candidates), got shape {raw_dist.shape}")
  if neg_topk is not None and neg_topk < 1:
    raise ValueError(f"neg_topk={neg_topk} must be >= 1 or None (config.mining.neg_topk)")
  n, num = raw_dist.shape
  anchors, usable, anchor_ok = candidates(n, num, offset, mask)
  usable = usable & jnp.isfinite(raw_dist)
  pos, has_pos = _nearest(raw_dist, usable)
  neg_allowed = usable & (jnp.arange(num)[None, :] != pos[:, None])
  if neg_topk is None:
    neg, has_neg = _uniform_choice(key, anchors, neg_allowed, _NEGATIVE_STREAM)
  else:
    # Allowed distances are finite, so the -inf fill sorts last and the first
    # min(k, allowed count) of the top k are exactly the allowed ones among the k farthest.
    top, cols = lax.top_k(jnp.where(neg_allowed, raw_dist, -jnp.inf), min(neg_topk, num))
    pick, has_neg = _uniform_choice(key, anchors, top > -jnp.inf, _NEGATIVE_STREAM)
    neg = jnp.take_along_axis(cols, pick[:, None], axis=1)[:, 0]
  return _finish(anchors, pos, neg, anchor_ok & has_pos & has_neg)


def label_miner(labels: jax.Array, *, offset=0, num_anchors: Optional[int] = None,
                valid_labels: Optional[jax.Array] = None) -> Triplets:
  """Supervised DML with a regression label (mPCWP): positive = closest label, negative = farthest.

  ``labels`` ``(n_candidates,)``; anchors are ``offset + arange(num_anchors)`` (default: all).
  Valid only when the negative's label is strictly farther from the anchor's than the positive's
  (otherwise, e.g. all labels equal, the triplet carries no ordering).
  """
  ok = usable_labels(labels, valid_labels)
  labels = jnp.asarray(labels, jnp.float32)
  num = labels.shape[0]
  n = num if num_anchors is None else num_anchors
  anchors, usable, anchor_ok = candidates(n, num, offset, ok)
  gap = jnp.abs(labels[None, :] - labels[anchors][:, None])
  gap = jnp.where(usable, gap, 0.0)  # NaN labels must not reach argmin/argmax.
  pos, has_pos = _nearest(gap, usable)
  neg, has_neg = _farthest(gap, usable & (jnp.arange(num)[None, :] != pos[:, None]))
  rows = jnp.arange(n)
  ordered = gap[rows, neg] > gap[rows, pos]
  return _finish(anchors, pos, neg, anchor_ok & has_pos & has_neg & ordered)


def _classes(labels: jax.Array, valid_labels: Optional[jax.Array], offset,
             num_anchors: Optional[int]):
  """Candidates of the class-label miners and, per anchor, which candidates share its label."""
  ok = usable_labels(labels, valid_labels)
  labels = jnp.asarray(labels)
  num = labels.shape[0]
  c = candidates(num if num_anchors is None else num_anchors, num, offset, ok)
  return c, labels[None, :] == labels[c.anchors][:, None]


def class_miner(labels: jax.Array, key: jax.Array, *, offset=0, num_anchors: Optional[int] = None,
                valid_labels: Optional[jax.Array] = None) -> Triplets:
  """Class labels (e.g. mPCWP > 18): random same-class positive, random other-class negative.

  Valid when the anchor's class has another member and some other class is present.
  """
  (anchors, usable, anchor_ok), same = _classes(labels, valid_labels, offset, num_anchors)
  pos, has_pos = _uniform_choice(key, anchors, usable & same, _POSITIVE_STREAM)
  neg, has_neg = _uniform_choice(key, anchors, usable & ~same, _NEGATIVE_STREAM)
  return _finish(anchors, pos, neg, anchor_ok & has_pos & has_neg)


def batch_hard_miner(emb_dist: jax.Array, labels: jax.Array, *, offset=0,
                     valid_labels: Optional[jax.Array] = None) -> Triplets:
  """Batch-hard (Hermans et al. 2017): farthest same-class positive, nearest other-class negative.

  ``emb_dist`` ``(n_anchors, n_candidates)`` embedding distances (indices carry no gradient).
  """
  emb_dist = jnp.asarray(emb_dist)
  (anchors, usable, anchor_ok), same = _classes(labels, valid_labels, offset, emb_dist.shape[0])
  pos, has_pos = _farthest(emb_dist, usable & same)
  neg, has_neg = _nearest(emb_dist, usable & ~same)
  return _finish(anchors, pos, neg, anchor_ok & has_pos & has_neg)


def semihard_miner(emb_dist: jax.Array, labels: jax.Array, margin: float, key: jax.Array, *,
                   offset=0, valid_labels: Optional[jax.Array] = None) -> Triplets:
  """FaceNet semi-hard negatives (Schroff et al. 2015), one triplet per anchor.

  Positive: uniform among the same-class candidates. Negative: among the other-class candidates
  with ``d(a,p) < d(a,n) < d(a,p) + margin``, the hardest (smallest ``d(a,n)``, as TensorFlow's
  semi-hard triplet loss picks); when none qualifies, uniform among all other-class candidates.
  """
  emb_dist = jnp.asarray(emb_dist)
  n = emb_dist.shape[0]
  (anchors, usable, anchor_ok), same = _classes(labels, valid_labels, offset, n)
  pos, has_pos = _uniform_choice(key, anchors, usable & same, _POSITIVE_STREAM)
  d_ap = emb_dist[jnp.arange(n), pos][:, None]
  neg_allowed = usable & ~same
  semihard = neg_allowed & (emb_dist > d_ap) & (emb_dist < d_ap + margin)
  hard, has_semihard = _nearest(emb_dist, semihard)
  fallback, has_neg = _uniform_choice(key, anchors, neg_allowed, _NEGATIVE_STREAM)
  neg = jnp.where(has_semihard, hard, fallback)
  return _finish(anchors, pos, neg, anchor_ok & has_pos & has_neg)
