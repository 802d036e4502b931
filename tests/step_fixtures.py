"""What the tests of the pretraining step share: ECG-like batches placed on the fake devices."""

import os

import jax
import numpy as np

from ssldml_jax import cli, parallel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES, PER_DEVICE = 8, 4
N = DEVICES * PER_DEVICE
SMALL = {"data.per_device_batch_size": PER_DEVICE, "model.stage_sizes": (1,),
         "model.dropout": 0.0}


def config(spec: str, **overrides):
  """``configs/<spec>`` shrunk to one block per stage and ``PER_DEVICE`` ECGs per device."""
  c = cli.load_config_file(os.path.join(REPO, "configs", spec))
  c.update_from_flattened_dict({**SMALL, **overrides})
  return c


def device_batch(ecg: np.ndarray, mask: np.ndarray, pcwp: np.ndarray = None,
                 patient_key: np.ndarray = None) -> dict:
  """A global batch sharded over the local devices; mPCWP unknown and one patient per ECG unless
  given."""
  n = len(ecg)
  batch = {"ecg": ecg, "mask": mask,
           "pcwp": np.full(n, np.nan, np.float32) if pcwp is None else pcwp,
           "patient_key": np.arange(n, dtype=np.int32) if patient_key is None else patient_key}
  return jax.device_put(parallel.shard_batch(batch), parallel.device_sharding())


def ecgs(seed: int, n: int, t: int) -> np.ndarray:
  """(n, t, 12) ECG-like signals: beats of P, QRS and T bumps whose timing, width and lead gains
  vary from ECG to ECG, so that the DTW nearest neighbour is often not the Euclidean one."""
  rng = np.random.default_rng(seed)
  time = np.arange(t, dtype=np.float64)
  out = np.empty((n, t, 12))
  for i in range(n):
    period = rng.uniform(35, 60)
    beat = np.mod(time - rng.uniform(0, period), period)
    wave = sum(amp * np.exp(-0.5 * ((beat - mu * period) / (sd * period)) ** 2)
               for mu, sd, amp in ((0.2, 0.05, rng.uniform(0.1, 0.3)),
                                   (0.45, rng.uniform(0.02, 0.04), rng.uniform(0.8, 1.6)),
                                   (0.75, 0.08, rng.uniform(0.2, 0.5))))
    out[i] = wave[:, None] * rng.uniform(-1.0, 1.0, 12) + rng.normal(0, 0.02, (t, 12))
  return out.astype(np.float32)
