"""The premise diagnostic: per-batch statistics against a loop, the batch bootstrap, and the
distances and positives ``measure`` uses against NumPy on the training stream of ecg_synth/tiny
(8 fake devices, as in a pmapped training step)."""

import math

import numpy as np
import pytest
from scipy import stats

from ssldml_jax import methods
from ssldml_jax.data import pipeline
from ssldml_jax.eval import premise


def test_batch_stats_match_a_loop():
  rng = np.random.default_rng(0)
  n, b, offset = 12, 5, 4
  pcwp = rng.uniform(5, 35, n)
  patients = np.array([0, 0, 1, 2, 2, 2, 3, 4, 5, 5, 6, 7])
  d = rng.random((b, n))
  positives = np.array([5, 3, 9, 0, 11])
  got = premise.batch_stats(d, positives, offset, pcwp, patients, 18.0,
                            np.random.default_rng(1))
  partner_rng = np.random.default_rng(1)
  pos_delta, rand_delta, pos_agree, rand_agree, same, pairs = [], [], [], [], [], []
  draws = partner_rng.integers(0, n - 1, size=b)
  for i in range(b):
    a = offset + i
    partner = draws[i] + (draws[i] >= a)      # uniform over the other n - 1
    assert partner != a
    pos_delta.append(abs(pcwp[a] - pcwp[positives[i]]))
    rand_delta.append(abs(pcwp[a] - pcwp[partner]))
    pos_agree.append((pcwp[a] > 18) == (pcwp[positives[i]] > 18))
    rand_agree.append((pcwp[a] > 18) == (pcwp[partner] > 18))
    same.append(patients[a] == patients[positives[i]])
    pairs += [(d[i, j], abs(pcwp[a] - pcwp[j])) for j in range(n)
              if j != a and patients[j] != patients[a]]
  want = {"delta_positive": np.mean(pos_delta), "delta_random": np.mean(rand_delta),
          "delta_gain": np.mean(rand_delta) - np.mean(pos_delta),
          "agree_positive": np.mean(pos_agree), "agree_random": np.mean(rand_agree),
          "same_patient": np.mean(same),
          "spearman": stats.spearmanr(*zip(*pairs)).statistic}
  assert got == pytest.approx(want, abs=1e-12)


def test_summary_is_the_batch_mean_with_a_batch_bootstrap():
  per_batch = [{k: float(i + j) for j, k in enumerate(premise.STATS)} for i in range(6)]
  per_batch[2]["spearman"] = math.nan          # a batch without a defined correlation
  p = premise.summarize("ssl_dml_dtw", per_batch, anchors=48, seed=3)
  draws = np.random.default_rng(3).integers(0, 6, size=(premise.N_RESAMPLES, 6))
  values = np.array([b["delta_random"] for b in per_batch])
  low, high = np.quantile(values[draws].mean(axis=1), [0.025, 0.975])
  assert p.values["delta_random"] == pytest.approx((values.mean(), low, high))
  assert p.values["spearman"][0] == pytest.approx(np.nanmean([b["spearman"] for b in per_batch]))
  assert (p.batches, p.anchors) == (6, 48)
  assert premise.Premise.from_json(p.to_json()) == p


def test_measure_mines_what_training_mines(ecg_synth_tiny, data_dir, monkeypatch):
  """The distances and positives of every batch are the Euclidean nearest neighbours of the
  decimated raw ECGs, computed here in NumPy over the same training stream."""
  c = methods.pretrain_config("ssl_dml_euclidean", "tiny")
  c.data.data_dir = data_dir
  c.data.per_device_batch_size = 4          # 8 devices x 4 = 32 of the 85 labeled ECGs
  c.mining.decimate = 3
  seen = []
  real = premise.batch_stats

  def spy(rows, positives, offset, pcwp, patients, threshold, rng):
    seen.append((rows, positives, offset, pcwp))
    return real(rows, positives, offset, pcwp, patients, threshold, rng)

  monkeypatch.setattr(premise, "batch_stats", spy)
  result = premise.measure(c, 18.0)
  batches = pipeline.make_train_iterator(c.data, seed=c.seed, split="train", num_epochs=1,
                                         require_pcwp=True)
  expected = list(batches)
  batches.close()
  assert len(seen) == len(expected) == 2 and result.batches == 2 and result.anchors == 64
  for (rows, positives, offset, pcwp), batch in zip(seen, expected):
    x = batch["ecg"].reshape(-1, *batch["ecg"].shape[2:]).astype(np.float64)
    t = x.shape[1] // 3 * 3                  # 500 samples: 166 runs of 3 and one of 2
    dec = np.concatenate([x[:, :t].reshape(len(x), -1, 3, 12).mean(2),
                          x[:, t:].mean(1, keepdims=True)], axis=1).reshape(len(x), -1)
    dist = np.sqrt(((dec[:, None] - dec[None]) ** 2).sum(-1))
    off = ~np.eye(len(x), dtype=bool)  # the diagonal is rounding noise of the Gram form, unused
    np.testing.assert_allclose(rows[off], dist[off], rtol=1e-4)
    np.fill_diagonal(dist, np.inf)
    np.testing.assert_array_equal(positives, dist.argmin(1))
    np.testing.assert_array_equal(pcwp, batch["pcwp"].reshape(-1))
    assert offset == 0
  with pytest.raises(ValueError, match="does not mine from raw distances"):
    premise.measure(methods.pretrain_config("simclr", "tiny"), 18.0)
