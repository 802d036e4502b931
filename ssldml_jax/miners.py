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
(``jnp.argmin``/``jnp.argmax``/``lax.top_k`` semantics).

Randomness. Random choices are uniform over the allowed candidates and are drawn from
``fold_in(key, global anchor index)``: pass the *same* key on every device (the step key, not a
per-device key) and the mined triplets do not depend on how the batch is split over devices.

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


# Streams folded into the per-anchor key so that positive and negative draws are independent.
_POSITIVE_STREAM, _NEGATIVE_STREAM = 0, 1
# Bits per packed word of a row mask (see _pack_rows).
_WORD = 32


def _setup(n_anchors: int, n_candidates: int, offset, mask: Optional[jax.Array]):
  """Anchor ids, the (n, N) 'another usable candidate' mask and the per-anchor usability."""
  if n_anchors > n_candidates:
    raise ValueError(f"{n_anchors} anchors but only {n_candidates} candidates: anchors are rows "
                     "of the candidate set")
  anchors = jnp.asarray(offset, jnp.int32) + jnp.arange(n_anchors, dtype=jnp.int32)
  cols = jnp.arange(n_candidates, dtype=jnp.int32)
  others = cols[None, :] != anchors[:, None]
  if mask is None:
    return anchors, others, jnp.ones((n_anchors,), bool)
  mask = jnp.asarray(mask, bool)
  if mask.shape != (n_candidates,):
    raise ValueError(f"mask/valid_labels has shape {mask.shape}, expected ({n_candidates},)")
  return anchors, others & mask[None, :], mask[anchors]


def _argbest(scores: jax.Array, allowed: jax.Array, largest: bool):
  """Row-wise arg-min/max over allowed entries (lowest index on ties) and whether any exists.

  Equal to ``jnp.argmin``/``jnp.argmax`` (NaN counts as the best, a row with nothing allowed
  gives 0) but written as one float reduction and bit packing: XLA's CPU arg-reduction is a
  serial loop about 5x slower than a min, and integer or boolean row reductions become a
  reduce-window plus a reduce that do not fuse with what feeds them.
  """
  fill = -jnp.inf if largest else jnp.inf
  masked = jnp.where(allowed, scores, fill)
  best = (jnp.max if largest else jnp.min)(masked, axis=1, keepdims=True)
  hit = (masked == best) | jnp.isnan(masked)  # Never empty: the best is attained or NaN.
  return _first_set_bit(_pack_rows(hit)), jnp.any(_pack_rows(allowed) != 0, axis=1)


def _first_set_bit(packed: jax.Array) -> jax.Array:
  """Column of the lowest set bit of each packed row (``32 * words - 1`` for an empty row)."""
  words = packed.shape[1]
  w = jnp.sum(jnp.cumsum(packed != 0, axis=1, dtype=jnp.int32) == 0, axis=1)  # Empty words first.
  here = jnp.arange(words)[None, :] == w[:, None]
  word = jnp.sum(jnp.where(here, packed, 0), axis=1, dtype=jnp.uint32)
  bit = lax.population_count((word & (~word + jnp.uint32(1))) - jnp.uint32(1))  # Trailing zeros.
  return jnp.minimum(w * _WORD + bit.astype(jnp.int32), words * _WORD - 1).astype(jnp.int32)


def _anchor_keys(key: jax.Array, anchors: jax.Array, stream: int) -> jax.Array:
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, i), stream))(anchors)


def _anchor_uniforms(key: jax.Array, anchors: jax.Array, stream: int) -> jax.Array:
  """``jax.random.uniform(fold_in(fold_in(key, anchor), stream))`` for every anchor, float32.

  For the default key (threefry2x32, partitionable bits) the three hashes are written out as
  plain integer arithmetic: XLA:CPU runs jax's own threefry as a 5-trip while loop of small
  kernels, three times in a row, which cost more than the rest of the negative draw. Any other
  key implementation goes through jax.random; tests/test_miner_kernels.py checks they agree bit
  for bit.
  """
  typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
  impl = str(jax.random.key_impl(key)) if typed else str(jax.config.jax_default_prng_impl)
  if impl != "threefry2x32" or not jax.config.jax_threefry_partitionable:
    return jax.vmap(jax.random.uniform)(_anchor_keys(key, anchors, stream))
  data = jax.random.key_data(key) if typed else jnp.asarray(key, jnp.uint32)
  zero = jnp.zeros(anchors.shape, jnp.uint32)
  k0, k1 = _threefry2x32(data[0], data[1], zero, anchors.astype(jnp.uint32))  # fold_in(key, i)
  k0, k1 = _threefry2x32(k0, k1, zero, zero + jnp.uint32(stream))           # fold_in(., stream)
  b0, b1 = _threefry2x32(k0, k1, zero, zero)                                 # 32 random bits
  mantissa = ((b0 ^ b1) >> jnp.uint32(9)) | jnp.uint32(0x3F800000)           # in [1, 2)
  return lax.bitcast_convert_type(mantissa, jnp.float32) - jnp.float32(1.0)


def _threefry2x32(k0, k1, x0, x1):
  """The Threefry-2x32 block cipher, 20 rounds (Salmon et al., SC 2011), on uint32 arrays."""
  rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
  ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(0x1BD11BDA))
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for group in range(5):
    for r in rotations[group % 2]:
      x0 = x0 + x1
      x1 = x0 ^ ((x1 << jnp.uint32(r)) | (x1 >> jnp.uint32(32 - r)))
    x0 = x0 + ks[(group + 1) % 3]
    x1 = x1 + ks[(group + 2) % 3] + jnp.uint32(group + 1)
  return x0, x1


def _random_choice(key: jax.Array, anchors: jax.Array, allowed: jax.Array, stream: int):
  """One allowed column per row, uniformly at random, and whether any exists.

  One uniform number per row picks the k-th allowed column (k = floor(u * count)): drawing a
  score for every column instead costs B^2 random numbers, the most expensive part of mining.
  """
  return _random_bit(key, anchors, _pack_rows(allowed), allowed.shape[1], stream)


def _random_bit(key: jax.Array, anchors: jax.Array, packed: jax.Array, num: int, stream: int):
  """``_random_choice`` given the allowed mask packed by ``_pack_rows`` (``num`` columns)."""
  u = _anchor_uniforms(key, anchors, stream)
  pop = lax.population_count(packed).astype(jnp.int32)
  count = jnp.sum(pop, axis=1)
  k = jnp.minimum(jnp.floor(u * count).astype(jnp.int32), jnp.maximum(count - 1, 0))
  return jnp.minimum(_kth_set_bit(packed, pop, k), num - 1), count > 0


def _pack_rows(mask: jax.Array) -> jax.Array:
  """``(n, N)`` bool as ``(n, ceil(N / 32))`` uint32; column ``32 w + b`` is bit ``b`` of word w.

  Everything after the packing works on 32x fewer elements, and XLA:CPU fuses the packing with
  whatever produced the mask into one reduction; a row-long cumulative sum would be a slow
  reduce-window instead (3 ms at 1024 x 1024).
  """
  n, num = mask.shape
  words = -(-num // _WORD)
  padded = jnp.pad(mask, ((0, 0), (0, words * _WORD - num))).reshape(n, words, _WORD)
  bits = padded.astype(jnp.uint32) << jnp.arange(_WORD, dtype=jnp.uint32)
  return jnp.sum(bits, axis=2, dtype=jnp.uint32)  # Disjoint bits: the sum is a bitwise or.


def _kth_set_bit(packed: jax.Array, pop: jax.Array, k: jax.Array) -> jax.Array:
  """Column of the (k+1)-th set bit of each packed row (``pop``: its words' popcounts).

  Past the end of the row (``>= 32 * words``) when the row has at most ``k`` set bits.
  """
  words = packed.shape[1]
  through = jnp.cumsum(pop, axis=1)                                 # Set bits up to each word.
  w = jnp.minimum(jnp.sum(through <= k[:, None], axis=1), words - 1)
  here = jnp.arange(words)[None, :] == w[:, None]
  word = jnp.sum(jnp.where(here, packed, 0), axis=1, dtype=jnp.uint32)
  rank = k - jnp.sum(jnp.where(here, through - pop, 0), axis=1)   # Set bits to skip in `word`.
  bit = jnp.zeros_like(k)
  for width in (16, 8, 4, 2, 1):  # Binary search: the wanted bit is above the lower `width`?
    low = lax.population_count((word >> bit.astype(jnp.uint32)) & jnp.uint32((1 << width) - 1))
    low = low.astype(jnp.int32)
    above = rank >= low
    rank = jnp.where(above, rank - low, rank)
    bit = jnp.where(above, bit + width, bit)
  return jnp.where(k < through[:, -1], w * _WORD + bit, words * _WORD).astype(jnp.int32)


def _finish(anchors, pos, neg, valid) -> Triplets:
  return Triplets(anchors, jnp.where(valid, pos, anchors), jnp.where(valid, neg, anchors), valid)


def _check_labels(labels: jax.Array, valid_labels: Optional[jax.Array]) -> jax.Array:
  labels = jnp.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be (n_candidates,), got shape {labels.shape}")
  ok = jnp.ones(labels.shape, bool) if valid_labels is None else jnp.asarray(valid_labels, bool)
  if jnp.issubdtype(labels.dtype, jnp.floating):
    ok = ok & jnp.isfinite(labels)
  return ok


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
  anchors, usable, anchor_ok = _setup(n, num, offset, mask)
  usable = usable & jnp.isfinite(raw_dist)
  pos, has_pos = _argbest(raw_dist, usable, largest=False)
  if neg_topk is not None and neg_topk < num:
    neg_allowed = usable & (jnp.arange(num)[None, :] != pos[:, None])
    _, top = lax.top_k(jnp.where(neg_allowed, raw_dist, -jnp.inf), neg_topk)
    in_top = jnp.zeros((n, num), bool).at[jnp.arange(n)[:, None], top].set(True)
    neg, has_neg = _random_choice(key, anchors, neg_allowed & in_top, _NEGATIVE_STREAM)
  else:
    # The usable set less the positive, by clearing one bit of the packed usable mask (which
    # _argbest packed already) instead of another pass over the (n, N) matrix.
    bits = _pack_rows(usable)
    pos_bit = jnp.where(jnp.arange(bits.shape[1])[None, :] == (pos // _WORD)[:, None],
                        jnp.uint32(1) << (pos % _WORD).astype(jnp.uint32)[:, None], 0)
    neg, has_neg = _random_bit(key, anchors, bits & ~pos_bit.astype(jnp.uint32), num,
                               _NEGATIVE_STREAM)
  return _finish(anchors, pos, neg, anchor_ok & has_pos & has_neg)


def label_miner(labels: jax.Array, *, offset=0, num_anchors: Optional[int] = None,
                valid_labels: Optional[jax.Array] = None) -> Triplets:
  """Supervised DML with a regression label (mPCWP): positive = closest label, negative = farthest.

  ``labels`` ``(n_candidates,)``; anchors are ``offset + arange(num_anchors)`` (default: all).
  Valid only when the negative's label is strictly farther from the anchor's than the positive's
  (otherwise, e.g. all labels equal, the triplet carries no ordering).
  """
  ok = _check_labels(labels, valid_labels)
  labels = jnp.asarray(labels, jnp.float32)
  num = labels.shape[0]
  n = num if num_anchors is None else num_anchors
  anchors, usable, anchor_ok = _setup(n, num, offset, ok)
  gap = jnp.abs(labels[None, :] - labels[anchors][:, None])
  gap = jnp.where(usable, gap, 0.0)  # NaN labels must not reach argmin/argmax.
  pos, has_pos = _argbest(gap, usable, largest=False)
  neg_allowed = usable & (jnp.arange(num)[None, :] != pos[:, None])
  neg, has_neg = _argbest(gap, neg_allowed, largest=True)
  rows = jnp.arange(n)
  ordered = gap[rows, neg] > gap[rows, pos]
  return _finish(anchors, pos, neg, anchor_ok & has_pos & has_neg & ordered)


def class_miner(labels: jax.Array, key: jax.Array, *, offset=0, num_anchors: Optional[int] = None,
                valid_labels: Optional[jax.Array] = None) -> Triplets:
  """Class labels (e.g. mPCWP > 18): random same-class positive, random other-class negative.

  Valid when the anchor's class has another member and some other class is present.
  """
  ok = _check_labels(labels, valid_labels)
  labels = jnp.asarray(labels)
  num = labels.shape[0]
  n = num if num_anchors is None else num_anchors
  anchors, usable, anchor_ok = _setup(n, num, offset, ok)
  same = labels[None, :] == labels[anchors][:, None]
  pos, has_pos = _random_choice(key, anchors, usable & same, _POSITIVE_STREAM)
  neg, has_neg = _random_choice(key, anchors, usable & ~same, _NEGATIVE_STREAM)
  return _finish(anchors, pos, neg, anchor_ok & has_pos & has_neg)


def batch_hard_miner(emb_dist: jax.Array, labels: jax.Array, *, offset=0,
                     valid_labels: Optional[jax.Array] = None) -> Triplets:
  """Batch-hard (Hermans et al. 2017): farthest same-class positive, nearest other-class negative.

  ``emb_dist`` ``(n_anchors, n_candidates)`` embedding distances (indices carry no gradient).
  """
  emb_dist = jnp.asarray(emb_dist)
  ok = _check_labels(labels, valid_labels)
  n, num = emb_dist.shape
  anchors, usable, anchor_ok = _setup(n, num, offset, ok)
  labels = jnp.asarray(labels)
  same = labels[None, :] == labels[anchors][:, None]
  pos, has_pos = _argbest(emb_dist, usable & same, largest=True)
  neg, has_neg = _argbest(emb_dist, usable & ~same, largest=False)
  return _finish(anchors, pos, neg, anchor_ok & has_pos & has_neg)


def semihard_miner(emb_dist: jax.Array, labels: jax.Array, margin: float, key: jax.Array, *,
                   offset=0, valid_labels: Optional[jax.Array] = None) -> Triplets:
  """FaceNet semi-hard negatives (Schroff et al. 2015), one triplet per anchor.

  Positive: uniform among the same-class candidates. Negative: among the other-class candidates
  with ``d(a,p) < d(a,n) < d(a,p) + margin``, the hardest (smallest ``d(a,n)``, as TensorFlow's
  semi-hard triplet loss picks); when none qualifies, uniform among all other-class candidates.
  """
  emb_dist = jnp.asarray(emb_dist)
  ok = _check_labels(labels, valid_labels)
  n, num = emb_dist.shape
  anchors, usable, anchor_ok = _setup(n, num, offset, ok)
  labels = jnp.asarray(labels)
  same = labels[None, :] == labels[anchors][:, None]
  pos, has_pos = _random_choice(key, anchors, usable & same, _POSITIVE_STREAM)
  d_ap = emb_dist[jnp.arange(n), pos][:, None]
  neg_allowed = usable & ~same
  semihard = neg_allowed & (emb_dist > d_ap) & (emb_dist < d_ap + margin)
  hard, has_semihard = _argbest(emb_dist, semihard, largest=False)
  fallback, has_neg = _random_choice(key, anchors, neg_allowed, _NEGATIVE_STREAM)
  neg = jnp.where(has_semihard, hard, fallback)
  return _finish(anchors, pos, neg, anchor_ok & has_pos & has_neg)
