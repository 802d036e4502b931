"""Miners against brute-force NumPy loops with the same tie-breaking (lowest index wins)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssldml_jax import distances, miners

N, ROWS, OFFSET = 12, 5, 4  # 12 candidates; the anchors are rows 4..8 (a device's slice).


def _allowed(i, n, mask):
  return [j for j in range(n) if j != i and mask[j]]


def _first_best(values, idx, largest):
  """Lowest index among the best values, as the miners promise."""
  best = max(values[j] for j in idx) if largest else min(values[j] for j in idx)
  return min(j for j in idx if values[j] == best)


def _raw_problem(seed):
  rng = np.random.default_rng(seed)
  dist = rng.integers(0, 4, size=(ROWS, N)).astype(np.float32)  # Small integers: many ties.
  dist[1, 7] = np.nan
  dist[2, 3] = np.inf
  mask = np.ones(N, bool)
  mask[10] = False
  return dist, mask


# One compile per miner variant for the whole module: fixed shapes, offset traced.
distance_miner = jax.jit(miners.distance_miner, static_argnames="neg_topk")
label_miner = jax.jit(miners.label_miner, static_argnames="num_anchors")
class_miner = jax.jit(miners.class_miner, static_argnames="num_anchors")
batch_hard_miner = jax.jit(miners.batch_hard_miner)
semihard_miner = jax.jit(miners.semihard_miner)


@pytest.mark.parametrize("neg_topk", [None, 1, 3])
def test_distance_miner_matches_brute_force(neg_topk):
  for seed in range(3):
    dist, mask = _raw_problem(seed)
    t = distance_miner(dist, jax.random.key(seed), neg_topk, offset=OFFSET, mask=mask)
    np.testing.assert_array_equal(t.anchors, OFFSET + np.arange(ROWS))
    for r in range(ROWS):
      i = OFFSET + r
      cands = [j for j in _allowed(i, N, mask) if np.isfinite(dist[r, j])]
      pos = _first_best(dist[r], cands, largest=False) if cands else None
      negs = [j for j in cands if j != pos]
      if neg_topk is not None:
        negs = sorted(negs, key=lambda j: (-dist[r, j], j))[:neg_topk]
      assert bool(t.valid[r]) == (mask[i] and pos is not None and bool(negs))
      if not t.valid[r]:
        assert t.positives[r] == t.negatives[r] == i
        continue
      assert t.positives[r] == pos
      assert int(t.negatives[r]) in negs
      if neg_topk == 1:
        assert t.negatives[r] == negs[0]


def test_distance_miner_negative_is_uniform_and_vmappable():
  dist, mask = _raw_problem(0)
  keys = jax.random.split(jax.random.key(1), 3000)
  t = jax.vmap(lambda k: distance_miner(dist, k, None, offset=OFFSET, mask=mask))(keys)
  r = 0
  i = OFFSET + r
  cands = [j for j in _allowed(i, N, mask) if np.isfinite(dist[r, j])]
  negs = [j for j in cands if j != _first_best(dist[r], cands, largest=False)]
  counts = np.bincount(np.asarray(t.negatives[:, r]), minlength=N)
  assert set(np.flatnonzero(counts)) == set(negs)
  expected = len(keys) / len(negs)
  sigma = np.sqrt(expected * (1 - 1 / len(negs)))
  assert np.all(np.abs(counts[negs] - expected) < 5 * sigma), counts


def test_rows_with_offset_equal_slices_of_the_square_problem():
  """A device mining its rows against the global batch sees what one device sees."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(N, 3)).astype(np.float32)
  square = np.asarray(distances.euclidean(x))
  labels = rng.integers(0, 2, N)
  key = jax.random.key(7)
  rows = slice(OFFSET, OFFSET + ROWS)
  pairs = [
      (distance_miner(square, key, None), distance_miner(square[rows], key, None, offset=OFFSET)),
      (class_miner(labels, key), class_miner(labels, key, offset=OFFSET, num_anchors=ROWS)),
      (semihard_miner(square, labels, 0.5, key),
       semihard_miner(square[rows], labels, 0.5, key, offset=OFFSET)),
  ]
  for full, part in pairs:
    for a, b in zip(full, part):
      np.testing.assert_array_equal(np.asarray(a)[rows], b)


def test_label_miner_matches_brute_force():
  rng = np.random.default_rng(0)
  labels = rng.integers(5, 12, N).astype(np.float32)  # Integers: ties in |y_j - y_i|.
  labels[2] = np.nan
  valid_labels = np.ones(N, bool)
  valid_labels[6] = False
  t = label_miner(labels, offset=OFFSET, num_anchors=ROWS, valid_labels=valid_labels)
  ok = valid_labels & np.isfinite(labels)
  for r in range(ROWS):
    i = OFFSET + r
    cands = _allowed(i, N, ok)
    gap = np.abs(labels - labels[i])
    pos = _first_best(gap, cands, largest=False)
    neg = _first_best(gap, [j for j in cands if j != pos], largest=True)
    valid = ok[i] and gap[neg] > gap[pos]
    assert bool(t.valid[r]) == valid
    if valid:
      assert (t.positives[r], t.negatives[r]) == (pos, neg)
  # Anchor 2 (label 2) has two closest (1, 3) and two farthest (0, 4): the lowest index wins.
  t = label_miner(np.array([0.0, 1.0, 2.0, 1.0, 0.0], np.float32))
  assert (t.positives[2], t.negatives[2]) == (1, 0)
  # All labels equal: no triplet orders anything.
  assert not label_miner(np.full(N, 3.0, np.float32)).valid.any()


def test_class_miner_properties():
  labels = np.array([0, 1, 1, 0, 1, 2, 1, 0, 1, 1, 0, 1])
  valid_labels = np.ones(N, bool)
  valid_labels[3] = False
  for seed in range(3):
    t = class_miner(labels, jax.random.key(seed), valid_labels=valid_labels)
    for i in range(N):
      cands = _allowed(i, N, valid_labels)
      same = [j for j in cands if labels[j] == labels[i]]
      other = [j for j in cands if labels[j] != labels[i]]
      assert bool(t.valid[i]) == bool(valid_labels[i] and same and other)
      if t.valid[i]:
        assert int(t.positives[i]) in same and int(t.negatives[i]) in other
  # Class 2 has a single member: no positive.
  assert not t.valid[5]
  assert not class_miner(np.zeros(N, np.int32), jax.random.key(0)).valid.any()


def _emb_problem(seed):
  rng = np.random.default_rng(seed)
  dist = rng.integers(0, 5, size=(ROWS, N)).astype(np.float32)
  labels = rng.integers(0, 3, N)
  return dist, labels


def test_batch_hard_miner_matches_brute_force():
  for seed in range(3):
    dist, labels = _emb_problem(seed)
    t = batch_hard_miner(dist, labels, offset=OFFSET)
    for r in range(ROWS):
      i = OFFSET + r
      cands = _allowed(i, N, np.ones(N, bool))
      same = [j for j in cands if labels[j] == labels[i]]
      other = [j for j in cands if labels[j] != labels[i]]
      assert bool(t.valid[r]) == bool(same and other)
      if same and other:
        assert t.positives[r] == _first_best(dist[r], same, largest=True)
        assert t.negatives[r] == _first_best(dist[r], other, largest=False)


def test_semihard_miner_matches_brute_force():
  margin = 1.5
  seen_semihard = seen_fallback = 0
  for seed in range(4):
    dist, labels = _emb_problem(seed)
    t = semihard_miner(dist, labels, margin, jax.random.key(seed), offset=OFFSET)
    for r in range(ROWS):
      i = OFFSET + r
      cands = _allowed(i, N, np.ones(N, bool))
      same = [j for j in cands if labels[j] == labels[i]]
      other = [j for j in cands if labels[j] != labels[i]]
      assert bool(t.valid[r]) == bool(same and other)
      if not t.valid[r]:
        continue
      p = int(t.positives[r])
      assert p in same
      d_ap = dist[r, p]
      semi = [j for j in other if d_ap < dist[r, j] < d_ap + margin]
      if semi:
        seen_semihard += 1
        assert t.negatives[r] == _first_best(dist[r], semi, largest=False)
      else:
        seen_fallback += 1
        assert int(t.negatives[r]) in other
  assert seen_semihard and seen_fallback  # Both branches were exercised.


def test_batch_hard_matches_pytorch_metric_learning():
  torch = pytest.importorskip("torch")
  pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
  pml_distances = pytest.importorskip("pytorch_metric_learning.distances")
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(N, 4)).astype(np.float32)
  labels = rng.integers(0, 3, N)
  labels[0] = 5  # A singleton class: no positive, so no triplet.
  miner = pml_miners.BatchHardMiner(distance=pml_distances.LpDistance(normalize_embeddings=False))
  a, p, n = (x.numpy() for x in miner(torch.from_numpy(emb), torch.from_numpy(labels)))
  t = batch_hard_miner(distances.euclidean(emb), labels)
  np.testing.assert_array_equal(np.flatnonzero(t.valid), a)
  np.testing.assert_array_equal(np.asarray(t.positives)[a], p)
  np.testing.assert_array_equal(np.asarray(t.negatives)[a], n)


def test_new_values_do_not_recompile():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def mine(dist, key, offset):
    return miners.distance_miner(dist, key, 2, offset=offset)

  for seed in range(3):
    dist, _ = _raw_problem(seed)
    mine(np.nan_to_num(dist), jax.random.key(seed), jnp.int32(seed))


def test_bad_shapes_are_reported():
  with pytest.raises(ValueError, match="anchors"):
    miners.distance_miner(np.zeros((4, 3)), jax.random.key(0))
  with pytest.raises(ValueError, match="neg_topk"):
    miners.distance_miner(np.zeros((3, 3)), jax.random.key(0), neg_topk=0)
  with pytest.raises(ValueError, match="labels"):
    miners.label_miner(np.zeros((3, 2)))
