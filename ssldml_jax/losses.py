"""Metric and contrastive losses, written once for one device and for the global batch.

Tuple losses (``triplet_loss``, ``margin_loss``, ``angular_loss``) take the embedding matrix that a
miner's indices point into and average over the valid tuples. Pair losses
(``multi_similarity_loss``) take the same matrix plus labels. View losses (``ntxent_loss``,
``cmsc_loss``) take this device's two views and gather the others themselves.

Normalisation across devices. With ``axis_name`` set, each device returns
``n_devices * (sum of its own terms) / (number of terms over all devices)``, so the mean of the
per-device losses is exactly the single-device loss on the concatenated batch, and so is the
``pmean`` of the per-device parameter gradients (``all_gather``'s transpose sums every device's
contribution back onto the rows a device owns). A consequence worth knowing: each device's
gradient with respect to its *local* embeddings is ``n_devices`` times its rows of the
single-device gradient; the usual ``pmean`` of parameter gradients removes the factor.

No valid term gives a loss of exactly 0 with zero gradient, never NaN. Losses are computed in
float32 whatever the embedding dtype. ``normalize=True`` (the default, as in
pytorch-metric-learning) L2-normalises embeddings before distances are taken.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from ssldml_jax import distances, miners, parallel

MINERS = ("distance", "label", "class", "batch_hard", "semihard")
TUPLE_LOSSES = ("triplet", "margin", "angular")
# Stands in for -inf in masked softmax denominators: exp() of it is 0, yet a row with nothing kept
# still has a finite log-normaliser and gradient.
_MASKED_LOGIT = -1e30


def _masked_mean(terms: jax.Array, valid: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """Mean of ``terms[valid]`` over all devices, scaled so that pmean of it is the global mean."""
  total = jnp.sum(jnp.where(valid, terms, 0.0))
  count = jnp.sum(valid.astype(jnp.float32))
  if axis_name is not None:
    count = lax.psum(count, axis_name)
    total = total * lax.psum(1, axis_name)
  return total / jnp.maximum(count, 1.0)


def _prepare(emb: jax.Array, normalize: bool) -> jax.Array:
  emb = jnp.asarray(emb).astype(jnp.float32)
  return distances.l2_normalize(emb) if normalize else emb


def triplet_loss(emb: jax.Array, anchors: jax.Array, positives: jax.Array, negatives: jax.Array,
                 valid: jax.Array, margin: float = 0.2, squared: bool = True, *,
                 distance: Optional[str] = None, normalize: bool = True,
                 axis_name: Optional[str] = None) -> jax.Array:
  """``mean(max(d(a,p) - d(a,n) + margin, 0))`` over valid triplets.

  ``distance`` names an embedding distance (``config.mining.embedding_distance``); when None,
  ``squared`` picks squared or plain Euclidean. Every valid triplet counts in the mean, also the
  ones already satisfied (pytorch-metric-learning's ``MeanReducer``, not its default that averages
  over non-zero terms only).
  """
  dist = distances.get_paired(distance or ("squared_euclidean" if squared else "euclidean"))
  emb = _prepare(emb, normalize)
  a = emb[anchors]
  terms = jax.nn.relu(dist(a, emb[positives]) - dist(a, emb[negatives]) + margin)
  return _masked_mean(terms, valid, axis_name)


def margin_loss_params(beta: float = 1.2) -> dict:
  """The margin loss's learnable boundary; put it in the params tree the optimiser updates."""
  return {"beta": jnp.asarray(beta, jnp.float32)}


def margin_loss(emb: jax.Array, anchors: jax.Array, positives: jax.Array, negatives: jax.Array,
                valid: jax.Array, beta: jax.Array, margin: float = 0.2, nu: float = 0.0, *,
                normalize: bool = True, axis_name: Optional[str] = None) -> jax.Array:
  """Margin loss (Wu et al. 2017) with a learnable boundary ``beta`` (a scalar parameter).

  Per triplet ``max(d(a,p) - beta + margin, 0) + max(beta - d(a,n) + margin, 0)`` with Euclidean
  ``d``, averaged over valid triplets, plus ``nu * beta`` (the paper's regulariser). ``beta``
  must come from the parameters being differentiated (see ``margin_loss_params``) for it to learn.
  """
  emb = _prepare(emb, normalize)
  a = emb[anchors]
  d_ap = distances.paired_euclidean(a, emb[positives])
  d_an = distances.paired_euclidean(a, emb[negatives])
  terms = jax.nn.relu(d_ap - beta + margin) + jax.nn.relu(beta - d_an + margin)
  return _masked_mean(terms, valid, axis_name) + nu * beta


def angular_loss(emb: jax.Array, anchors: jax.Array, positives: jax.Array, negatives: jax.Array,
                 valid: jax.Array, alpha: float = 40.0, *, smooth: bool = False,
                 normalize: bool = True, axis_name: Optional[str] = None) -> jax.Array:
  """Angular loss (Wang et al. 2017) on mined triplets; ``alpha`` in degrees.

  Hinge form: ``max(|a-p|^2 - 4 tan^2(alpha) |n - (a+p)/2|^2, 0)``. ``smooth=True`` uses the
  paper's smooth form for normalised embeddings, ``softplus(4 tan^2 (a+p).n - 2 (1+tan^2) a.p)``,
  which equals pytorch-metric-learning's ``AngularLoss`` when each anchor has one negative.
  """
  tan2 = math.tan(math.radians(alpha)) ** 2
  emb = _prepare(emb, normalize)
  a, p, n = emb[anchors], emb[positives], emb[negatives]
  if smooth:
    f = 4.0 * tan2 * jnp.sum((a + p) * n, -1) - 2.0 * (1.0 + tan2) * jnp.sum(a * p, -1)
    terms = jax.nn.softplus(f)
  else:
    terms = jax.nn.relu(distances.paired_squared_euclidean(a, p)
                        - 4.0 * tan2 * distances.paired_squared_euclidean(n, 0.5 * (a + p)))
  return _masked_mean(terms, valid, axis_name)


def _log1p_sum_exp(x: jax.Array, keep: jax.Array) -> jax.Array:
  """Row-wise ``log(1 + sum_{keep} exp(x))``, stable, finite gradient when nothing is kept."""
  x = jnp.where(keep, x, _MASKED_LOGIT)
  x = jnp.concatenate([x, jnp.zeros(x.shape[:-1] + (1,), x.dtype)], axis=-1)
  return jax.nn.logsumexp(x, axis=-1)


def multi_similarity_loss(emb: jax.Array, labels: jax.Array, *, alpha: float = 2.0,
                          beta: float = 50.0, base: float = 0.5, offset=0,
                          num_anchors: Optional[int] = None,
                          valid_labels: Optional[jax.Array] = None,
                          axis_name: Optional[str] = None) -> jax.Array:
  """Multi-similarity loss (Wang et al. 2019) over all pairs, cosine similarity ``S``.

  Per anchor ``i`` (rows ``offset + arange(num_anchors)`` of ``emb``):
  ``1/alpha log(1 + sum_P exp(-alpha (S - base))) + 1/beta log(1 + sum_N exp(beta (S - base)))``
  over same-label others ``P`` and other-label ``N``, averaged over anchors with a valid label.
  Like pytorch-metric-learning's ``MultiSimilarityLoss``, it does no pair mining of its own.
  """
  ok = miners.usable_labels(labels, valid_labels)
  labels = jnp.asarray(labels)
  emb = _prepare(emb, True)
  num = emb.shape[0]
  n = num if num_anchors is None else num_anchors
  anchor_ids, usable, anchor_ok = miners.candidates(n, num, offset, ok)
  sim = jnp.matmul(emb[anchor_ids], emb.T, precision=lax.Precision.HIGHEST)
  same = labels[None, :] == labels[anchor_ids][:, None]
  pos_term = _log1p_sum_exp(-alpha * (sim - base), usable & same) / alpha
  neg_term = _log1p_sum_exp(beta * (sim - base), usable & ~same) / beta
  return _masked_mean(pos_term + neg_term, anchor_ok, axis_name)


def _views(z1, z2, mask, axis_name):
  """Unit-norm local views, gathered views, gathered and local masks, this device's offset."""
  if z2.shape != z1.shape or z1.ndim != 2:
    raise ValueError(f"the two views must both be (B, D), got {z1.shape} and {z2.shape}")
  b = z1.shape[0]
  mask = jnp.ones((b,), bool) if mask is None else jnp.asarray(mask, bool)
  local = (_prepare(z1, True), _prepare(z2, True))
  gathered = tuple(parallel.gather_global(z, axis_name) for z in local)
  return (local, gathered, parallel.gather_global(mask, axis_name), mask,
          parallel.global_offset(b, axis_name))


def ntxent_loss(z1: jax.Array, z2: jax.Array, temperature: float = 0.1, *,
                mask: Optional[jax.Array] = None, axis_name: Optional[str] = None) -> jax.Array:
  """SimCLR's NT-Xent over the 2N views of the (global) batch.

  ``z1[i]`` and ``z2[i]`` are two views of example ``i``; each view's positive is its partner and
  its negatives are the other ``2N - 2`` views; cosine similarity over ``temperature``; mean over
  all ``2N`` views. ``mask`` ``(B,)`` drops padded examples as anchors and as negatives.
  """
  (l1, l2), (g1, g2), gmask, mask, offset = _views(z1, z2, mask, axis_name)
  num = g1.shape[0]
  views = jnp.concatenate([g1, g2])                    # (2N, D)
  view_ok = jnp.concatenate([gmask, gmask])
  local = jnp.concatenate([l1, l2])                    # (2b, D)
  b = l1.shape[0]
  rows = offset + jnp.arange(b)
  self_idx = jnp.concatenate([rows, rows + num])
  pos_idx = jnp.concatenate([rows + num, rows])
  logits = jnp.matmul(local, views.T, precision=lax.Precision.HIGHEST) / temperature
  cols = jnp.arange(2 * num)
  keep = view_ok[None, :] & (cols[None, :] != self_idx[:, None])
  log_norm = jax.nn.logsumexp(jnp.where(keep, logits, _MASKED_LOGIT), axis=1)
  terms = log_norm - logits[jnp.arange(2 * b), pos_idx]
  return _masked_mean(terms, jnp.concatenate([mask, mask]), axis_name)


def cmsc_loss(z1: jax.Array, z2: jax.Array, temperature: float = 0.1, *,
              patient_ids: Optional[jax.Array] = None, mask: Optional[jax.Array] = None,
              axis_name: Optional[str] = None) -> jax.Array:
  """CLOCS contrastive multi-segment coding (Kiyasseh et al. 2021).

  ``z1[i]``, ``z2[i]``: embeddings of two adjacent, non-overlapping temporal segments of ECG ``i``.
  Only cross-segment similarities ``S = cos(z1, z2) / temperature`` are contrasted. Each positive
  pair ``(i, j)`` (``i == j``, or the same patient when ``patient_ids`` is given) contributes
  ``-log softmax_j S[i, :]`` (segment 1 -> 2) and ``-log softmax_i S[:, j]`` (2 -> 1); the loss is
  the mean over positive pairs, averaged over the two directions.
  """
  (l1, l2), (g1, g2), gmask, mask, offset = _views(z1, z2, mask, axis_name)
  b = l1.shape[0]
  rows = offset + jnp.arange(b)
  if patient_ids is None:
    gids = jnp.arange(g1.shape[0])
  else:
    gids = parallel.gather_global(jnp.asarray(patient_ids), axis_name)
  positive = (gids[None, :] == gids[rows][:, None]) & gmask[None, :] & mask[:, None]  # (b, N)

  def direction(local, others):
    logits = jnp.matmul(local, others.T, precision=lax.Precision.HIGHEST) / temperature
    log_norm = jax.nn.logsumexp(jnp.where(gmask[None, :], logits, _MASKED_LOGIT), axis=1)
    return log_norm[:, None] - logits           # (b, N): -log softmax per pair

  terms = jnp.concatenate([direction(l1, g2), direction(l2, g1)])
  return _masked_mean(terms, jnp.concatenate([positive, positive]), axis_name)


def global_triplet_loss(local_emb: jax.Array, key: Optional[jax.Array] = None, *,
                        miner: str = "distance", loss: str = "triplet",
                        raw_dist_rows: Optional[jax.Array] = None,
                        labels: Optional[jax.Array] = None,
                        valid_labels: Optional[jax.Array] = None,
                        neg_topk: Optional[int] = None, margin: float = 0.2,
                        distance: str = "euclidean", normalize: bool = True,
                        beta: Optional[jax.Array] = None, alpha: float = 40.0,
                        axis_name: Optional[str] = parallel.AXIS
                        ) -> tuple[jax.Array, miners.Triplets]:
  """Mine this device's anchors against the global batch and return its share of the loss.

  Inputs are local: ``local_emb`` ``(b, D)``; ``raw_dist_rows`` ``(b, N)``, the raw-signal
  distances from this device's ECGs to the gathered batch (``miner="distance"``); ``labels`` and
  ``valid_labels`` ``(b,)`` (the other miners). ``key`` must be the same on every device. Under
  ``axis_name=None`` this is the single-device loss. Returns ``(loss, triplets)``; the triplets
  index the gathered batch (``triplets.valid.sum()`` counts this device's valid ones).
  """
  if miner not in MINERS:
    raise ValueError(f"miner={miner!r}; choose one of {', '.join(MINERS)}")
  if loss not in TUPLE_LOSSES:
    raise ValueError(f"config.loss.name={loss!r} is not a triplet loss; choose one of "
                     + ", ".join(TUPLE_LOSSES))
  if key is None and miner in ("distance", "class", "semihard"):
    raise ValueError(f"miner={miner!r} draws at random: pass a key (the same on every device)")
  b = local_emb.shape[0]
  emb = parallel.gather_global(local_emb, axis_name)
  offset = parallel.global_offset(b, axis_name)
  if miner != "distance":
    if labels is None:
      raise ValueError(f"miner={miner!r} needs labels")
    labels = parallel.gather_global(jnp.asarray(labels), axis_name)
    if valid_labels is not None:
      valid_labels = parallel.gather_global(jnp.asarray(valid_labels, bool), axis_name)
  if miner in ("batch_hard", "semihard"):
    ready = lax.stop_gradient(_prepare(emb, normalize))
    emb_dist = distances.get(distance)(ready[offset + jnp.arange(b)], ready)

  if miner == "distance":
    if raw_dist_rows is None:
      raise ValueError("miner='distance' needs raw_dist_rows")
    t = miners.distance_miner(raw_dist_rows, key, neg_topk, offset=offset)
  elif miner == "label":
    t = miners.label_miner(labels, offset=offset, num_anchors=b, valid_labels=valid_labels)
  elif miner == "class":
    t = miners.class_miner(labels, key, offset=offset, num_anchors=b, valid_labels=valid_labels)
  elif miner == "batch_hard":
    t = miners.batch_hard_miner(emb_dist, labels, offset=offset, valid_labels=valid_labels)
  else:
    t = miners.semihard_miner(emb_dist, labels, margin, key, offset=offset,
                              valid_labels=valid_labels)

  if loss == "triplet":
    value = triplet_loss(emb, *t, margin=margin, distance=distance, normalize=normalize,
                         axis_name=axis_name)
  elif loss == "margin":
    if beta is None:
      raise ValueError("loss='margin' needs beta (see margin_loss_params)")
    value = margin_loss(emb, *t, beta=beta, margin=margin, normalize=normalize,
                        axis_name=axis_name)
  else:
    value = angular_loss(emb, *t, alpha=alpha, normalize=normalize, axis_name=axis_name)
  return value, t
