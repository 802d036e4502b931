"""SSL-DML (``ssldml_jax/methods/ssl_dml.py``), checked for values against brute force on 8 fake
CPU devices: the raw-signal distances of its mining are dtaidistance's DTW of the decimated ECGs
(with and without a Sakoe-Chiba band given at the model rate), padded ECGs are +inf, and the
step's loss and mined distances are those of the brute-force nearest neighbour (and, with
``neg_topk=1``, the farthest ECG) among the real ones.
"""

import jax
import numpy as np
import pytest

from ssldml_jax import models, parallel, train_lib
from ssldml_jax.methods import ssl_dml
import step_fixtures  # tests/step_fixtures.py
from step_fixtures import DEVICES, N, PER_DEVICE

dtaidistance = pytest.importorskip("dtaidistance")
from dtaidistance import dtw_ndim  # noqa: E402

T = 120            # samples at the model rate: 24 after decimation by 5.
DECIMATE = 5
_config = step_fixtures.config


def _raw_distance_rows(config, ecg: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """SSL-DML's raw-signal distances ``(N, N)`` from the method's own code, under ``pmap``: each
  device's rows against the gathered batch (the one per-method internal these tests call)."""
  fn = jax.pmap(lambda x, m: ssl_dml.raw_distance_rows(config, "dtw", x, m, parallel.AXIS),
                axis_name=parallel.AXIS)
  rows = fn(ecg.reshape(DEVICES, PER_DEVICE, *ecg.shape[1:]), mask.reshape(DEVICES, PER_DEVICE))
  return np.asarray(rows).reshape(N, N)


def _brute_force_dtw(ecg: np.ndarray, window) -> np.ndarray:
  """dtaidistance's DTW between the signals decimated by their means of DECIMATE samples."""
  dec = ecg.astype(np.float64).reshape(N, T // DECIMATE, DECIMATE, 12).mean(axis=2)
  return np.array([[dtw_ndim.distance(a, b, window=window, use_c=True) for b in dec]
                   for a in dec])


def _nearest_and_farthest(dist: np.ndarray, real: np.ndarray):
  """Per real anchor: the nearest and the farthest other real ECG, and the gap between the
  nearest and the runner-up (relative), brute force."""
  pos, neg, gap = {}, {}, np.inf
  for a in np.flatnonzero(real):
    others = [j for j in np.flatnonzero(real) if j != a]
    order = sorted(others, key=lambda j: dist[a, j])
    pos[a], neg[a] = order[0], order[-1]
    gap = min(gap, (dist[a, order[1]] - dist[a, order[0]]) / dist[a, order[1]],
              (dist[a, order[-1]] - dist[a, order[-2]]) / dist[a, order[-1]])
  return pos, neg, gap


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


# Band of 7 samples at the model rate: ceil(7 / 5) = 2 decimated samples (1 would be Euclidean).
@pytest.mark.parametrize("window,decimated_window", [(None, None), (7, 2)])
def test_dtw_mined_triplets_are_brute_force_neighbours(window, decimated_window):
  config = _config("ssl_dml_dtw.py:tiny", **{"mining.dtw_window": window,
                                              "mining.decimate": DECIMATE,
                                              "mining.neg_topk": 1})
  ecg = step_fixtures.ecgs(0, N, T)
  real = np.ones(N, bool)
  real[-6:] = False                 # Device 6 half padded, device 7 all padding.
  # Padding as copies of real ECGs: the nearest possible neighbours, should the mask leak.
  ecg[-6:] = ecg[:6]

  want = _brute_force_dtw(ecg, decimated_window)
  got = _raw_distance_rows(config, ecg, real)
  both = real[:, None] & real[None, :]
  assert np.isinf(got[~both]).all()
  pairs = both & ~np.eye(N, dtype=bool)
  np.testing.assert_allclose(got[pairs], want[pairs], rtol=1e-4)
  # An ECG's float32 distance to itself is not exactly 0 (see ssldml_jax/dtw.py); the miner
  # never pairs an anchor with itself.
  assert np.abs(np.diag(got)[real]).max() < 1e-3 * want[pairs].min()
  # The band matters for these signals, and so does the rounding of its width.
  pos, neg, gap = _nearest_and_farthest(want, real)
  if decimated_window is not None:
    assert pos != _nearest_and_farthest(_brute_force_dtw(ecg, None), real)[0]
    assert pos != _nearest_and_farthest(_brute_force_dtw(ecg, 1), real)[0]
  assert gap > 2e-4  # No near-ties: within the 1e-4 checked above, the same neighbours.

  program = train_lib.build_program(config, 1)
  state = program.init_state(jax.random.PRNGKey(0), T)
  batch = step_fixtures.device_batch(ecg, real)
  metrics = jax.device_get(program.eval_step(parallel.replicate(state), batch,
                                             parallel.replicate(jax.random.PRNGKey(1))))
  encoder = models.build_encoder(config.model)
  emb = _unit(np.asarray(encoder.apply({"params": state.params["encoder"],
                                        "batch_stats": state.batch_stats["encoder"]}, ecg),
                         np.float64))
  anchors = sorted(pos)
  d_ap = np.array([np.linalg.norm(emb[a] - emb[pos[a]]) for a in anchors])
  d_an = np.array([np.linalg.norm(emb[a] - emb[neg[a]]) for a in anchors])
  terms = np.maximum(d_ap - d_an + config.loss.margin, 0.0)
  expected = {"loss": terms.mean(), "d_pos": d_ap.mean(), "d_neg": d_an.mean(),
              "active_triplets": np.mean(terms > 0), "valid_triplets": 1.0}
  for key, value in expected.items():
    assert metrics[key][0] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    np.testing.assert_array_equal(metrics[key], metrics[key][0])  # The same on every device.
