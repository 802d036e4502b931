"""The per-device steps, checked for values against brute force on 8 fake CPU devices.

- SSL-DML's mining inside the compiled step: the raw-signal distances are dtaidistance's DTW of
  the decimated ECGs (with and without a Sakoe-Chiba band given at the model rate), padded ECGs
  are +inf, and the step's loss and mined distances are those of the brute-force nearest
  neighbour (and, with ``neg_topk=1``, the farthest ECG) among the real ones.
- bfloat16: one train step of every method family stays finite, keeps float32 state and lands
  within a bound derived from bfloat16's precision of the float32 step.
"""

import os

import jax
import ml_dtypes
import numpy as np
import pytest

from ssldml_jax import cli, models, parallel, steps, train_lib

dtaidistance = pytest.importorskip("dtaidistance")
from dtaidistance import dtw_ndim  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES, PER_DEVICE = 8, 4
N = DEVICES * PER_DEVICE
T = 120            # samples at the model rate: 24 after decimation by 5.
DECIMATE = 5
SMALL = {"data.per_device_batch_size": PER_DEVICE, "model.stage_sizes": (1,),
         "model.dropout": 0.0}


def _config(spec: str, **overrides):
  config = cli.load_config_file(os.path.join(REPO, "configs", spec))
  config.update_from_flattened_dict({**SMALL, **overrides})
  return config


def _raw_distance_rows(config, ecg: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """SSL-DML's raw-signal distances ``(N, N)`` from the method's own code, under ``pmap``: each
  device's rows against the gathered batch (the one per-method internal these tests call)."""
  fn = jax.pmap(lambda x, m: steps.raw_distance_rows(config, x, m, parallel.AXIS),
                axis_name=parallel.AXIS)
  rows = fn(ecg.reshape(DEVICES, PER_DEVICE, *ecg.shape[1:]), mask.reshape(DEVICES, PER_DEVICE))
  return np.asarray(rows).reshape(N, N)


def _device_batch(ecg: np.ndarray, mask: np.ndarray, pcwp: np.ndarray = None,
                  patient_key: np.ndarray = None) -> dict:
  n = len(ecg)
  batch = {"ecg": ecg, "mask": mask,
           "pcwp": np.full(n, np.nan, np.float32) if pcwp is None else pcwp,
           "patient_key": np.arange(n, dtype=np.int32) if patient_key is None else patient_key}
  return jax.device_put(parallel.shard_batch(batch), parallel.device_sharding())


def _ecgs(seed: int) -> np.ndarray:
  """(N, T, 12) ECG-like signals: beats of P, QRS and T bumps whose timing, width and lead gains
  vary from ECG to ECG, so that the DTW nearest neighbour is often not the Euclidean one."""
  rng = np.random.default_rng(seed)
  t = np.arange(T, dtype=np.float64)
  out = np.empty((N, T, 12))
  for i in range(N):
    period = rng.uniform(35, 60)
    beat = np.mod(t - rng.uniform(0, period), period)
    wave = sum(amp * np.exp(-0.5 * ((beat - mu * period) / (sd * period)) ** 2)
               for mu, sd, amp in ((0.2, 0.05, rng.uniform(0.1, 0.3)),
                                   (0.45, rng.uniform(0.02, 0.04), rng.uniform(0.8, 1.6)),
                                   (0.75, 0.08, rng.uniform(0.2, 0.5))))
    out[i] = wave[:, None] * rng.uniform(-1.0, 1.0, 12) + rng.normal(0, 0.02, (T, 12))
  return out.astype(np.float32)


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
  ecg = _ecgs(0)
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
  metrics = jax.device_get(program.eval_step(parallel.replicate(state), _device_batch(ecg, real),
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


# --- bfloat16 ------------------------------------------------------------------------------------

FAMILIES = {"ssl_dml": "ssl_dml_euclidean.py:tiny", "supervised_dml": "supervised_dml.py:tiny",
            "supervised": "supervised.py:tiny", "simclr": "simclr.py:tiny",
            "clocs_cmsc": "clocs_cmsc.py:tiny"}
# Activations a bfloat16 step rounds between the input and the loss: the encoder's stem
# convolution and BatchNorm, the block's two convolutions, two BatchNorms and residual sum, the
# embedding (8); the probe head's hidden layer, BatchNorm and output (3); the projection head's
# two layers (2).
ROUNDINGS = {"ssl_dml": 8, "supervised_dml": 11, "supervised": 11, "simclr": 10, "clocs_cmsc": 10}
UNIT_ROUNDOFF = 2.0 ** -8  # bfloat16 keeps 8 significant bits.


def _to_bfloat16_and_back(tree):
  return jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32), tree)


def _flat(leaves) -> np.ndarray:
  return np.concatenate([np.ravel(x) for x in leaves]).astype(np.float64)


def _relative(a, b) -> float:
  a, b = _flat(a), _flat(b)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("method", sorted(FAMILIES))
def test_bfloat16_train_step_is_close_to_float32(method):
  """One pmapped train step in bfloat16 against float32 from the same state and batch.

  The bound. bfloat16 rounds to 8 significant bits (unit roundoff u = 2^-8): the network input,
  every weight and each of the L activations listed in ROUNDINGS. ``e_ref``, the change of a
  quantity when the float32 step is given its input and weights rounded to bfloat16, measures
  what one rounding stage does to it at this conditioning (it grows with the loss's temperature,
  the depth, the data). Roundings of different stages are independent and unbiased, so their
  errors add in quadrature: the gradient's error is within sqrt(L + 1) e_ref. BatchNorm's new
  statistics are means over batch x time of the activations, which average the per-element
  roundings away and keep the weights' (common to every element): within 2 e_ref, unless the
  reductions themselves run in bfloat16. The loss, a float32 mean over N examples each off by
  at most about sqrt(L + 1) u, is within sqrt((L + 1) / N) u.
  """
  rng = np.random.default_rng(0)
  ecg = _ecgs(1)
  batch = dict(ecg=ecg, mask=np.ones(N, bool), pcwp=rng.uniform(5, 35, N).astype(np.float32),
               patient_key=(np.arange(N) // 2).astype(np.int32))  # CMSC: two ECGs a patient
  rng_key = parallel.replicate(jax.random.PRNGKey(1))
  float32 = train_lib.build_program(_config(FAMILIES[method]), 1)
  bfloat16 = train_lib.build_program(_config(FAMILIES[method], **{"model.dtype": "bfloat16"}), 1)
  state = float32.init_state(jax.random.PRNGKey(0), T)
  # The bfloat16 model keeps float32 parameters (and statistics): the same initial state.
  same = jax.tree.map(lambda a, b: a.dtype == b.dtype and np.array_equal(a, b),
                      bfloat16.init_state(jax.random.PRNGKey(0), T), state)
  assert all(jax.tree.leaves(same))

  def step(program, state, batch):
    new, metrics = program.train_step(parallel.replicate(state), _device_batch(**batch), rng_key)
    return train_lib.first_replica(new), jax.device_get(metrics)

  ref, ref_metrics = step(float32, state, batch)
  rounded, rounded_metrics = step(
      float32, state.replace(params=_to_bfloat16_and_back(state.params)),
      dict(batch, ecg=_to_bfloat16_and_back(ecg)))
  half, half_metrics = step(bfloat16, state, batch)

  for leaf in jax.tree.leaves((half.params, half.batch_stats, half.opt_state)):
    if np.issubdtype(np.asarray(leaf).dtype, np.floating):
      assert np.asarray(leaf).dtype == np.float32 and np.isfinite(leaf).all()
  assert all(np.isfinite(v).all() for v in half_metrics.values())
  assert half_metrics["nonfinite"][0] == 0

  n_params = len(jax.tree.leaves(state.params))
  # Adam's first moment after one step is 0.1 x the gradient, leaf by leaf.
  grads = lambda s: [x for x in jax.tree.leaves(s.opt_state) if np.ndim(x)][:n_params]  # noqa: E731
  stat_updates = lambda s: [a - b for a, b in zip(jax.tree.leaves(s.batch_stats),  # noqa: E731
                                                  jax.tree.leaves(state.batch_stats))]
  rounds = ROUNDINGS[method]
  for name, of, factor in (("gradient", grads, np.sqrt(rounds + 1)),
                           ("BatchNorm update", stat_updates, 2.0)):
    e_ref = _relative(of(rounded), of(ref))
    error = _relative(of(half), of(ref))
    assert 0 < error <= factor * e_ref, (name, error, e_ref)
  loss_error = abs(half_metrics["loss"][0] / ref_metrics["loss"][0] - 1)
  assert loss_error <= np.sqrt((rounds + 1) / N) * UNIT_ROUNDOFF, loss_error
  assert np.isfinite(rounded_metrics["loss"]).all()
