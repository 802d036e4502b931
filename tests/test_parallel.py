"""The cross-device helpers (``ssldml_jax/parallel.py``) on 8 fake CPU devices, and
``initialize_distributed``: what each launcher's environment makes it call
(``jax.distributed.initialize`` and ``jax.config.update`` are replaced by recorders: the real ones
would join a cluster, or change this process's backend settings)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssldml_jax import parallel


def _mapped(fn):
  return jax.pmap(fn, axis_name=parallel.AXIS)


def test_gather_offset_and_reductions_follow_device_order():
  x = np.arange(8 * 3 * 2, dtype=np.float32).reshape(8, 3, 2)
  gathered, offset, mean, total = _mapped(lambda a: (
      parallel.gather_global(a), parallel.global_offset(a.shape[0]), parallel.pmean(a.sum()),
      parallel.psum(a.sum())))(x)
  for d in range(8):  # every device holds the whole batch, device-major
    np.testing.assert_array_equal(gathered[d], x.reshape(24, 2))
    assert int(offset[d]) == 3 * d
  np.testing.assert_allclose(np.asarray(total), x.sum())
  np.testing.assert_allclose(np.asarray(mean), x.sum() / 8)


def test_no_axis_is_the_identity():
  x = jnp.arange(6.0).reshape(3, 2)
  assert parallel.gather_global(x, None) is x
  assert parallel.pmean(x, None) is x and parallel.psum(x, None) is x
  assert int(parallel.global_offset(3, None)) == 0


def test_gathered_gradients_return_to_their_rows():
  """all_gather's transpose sums each device's cotangents onto the rows it owns."""
  x = np.random.default_rng(0).normal(size=(8, 2, 3)).astype(np.float32)
  w = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
  grad = _mapped(jax.grad(lambda a: jnp.sum(parallel.gather_global(a) * w)))(x)
  np.testing.assert_allclose(np.asarray(grad).reshape(16, 3), 8 * w)


def test_device_keys_differ_by_device_and_step_only():
  key = jax.random.PRNGKey(0)
  keys = _mapped(lambda s: jax.random.key_data(parallel.device_key(key, s)))(
      np.zeros(8, np.int32))
  again = _mapped(lambda s: jax.random.key_data(parallel.device_key(key, s)))(
      np.zeros(8, np.int32))
  later = _mapped(lambda s: jax.random.key_data(parallel.device_key(key, s)))(
      np.ones(8, np.int32))
  rows = {tuple(np.asarray(k).ravel()) for k in keys}
  assert len(rows) == 8
  np.testing.assert_array_equal(keys, again)
  assert not rows & {tuple(np.asarray(k).ravel()) for k in later}
  single = jax.random.key_data(parallel.device_key(key, 0, None))
  np.testing.assert_array_equal(single, jax.random.key_data(jax.random.fold_in(key, 0)))


def test_replicate_and_shard_batch():
  tree = {"a": np.arange(3.0), "b": np.float32(2.0)}
  rep = parallel.replicate(tree)
  assert rep["a"].shape == (8, 3) and rep["b"].shape == (8,)
  np.testing.assert_array_equal(parallel.unreplicate(rep)["a"], tree["a"])
  assert float(parallel.unreplicate(rep)["b"]) == 2.0
  batch = {"ecg": np.arange(16 * 5).reshape(16, 5)}
  shards = parallel.shard_batch(batch)
  assert shards["ecg"].shape == (8, 2, 5)
  np.testing.assert_array_equal(shards["ecg"][3], batch["ecg"][6:8])
  with pytest.raises(ValueError, match="batch of 12 does not split over 8 devices"):
    parallel.shard_batch({"ecg": np.zeros((12, 5))})


# --- initialize_distributed -----------------------------------------------------------------

ENV = (parallel.ENV_COORDINATOR, parallel.ENV_NUM_PROCESSES, parallel.ENV_PROCESS_ID,
       parallel.ENV_MULTIHOST, parallel.ENV_LOCAL_DEVICE_IDS)


@pytest.fixture
def calls(monkeypatch):
  """Clears the launchers' variables; returns the list of recorded calls."""
  recorded = []
  for name in ENV:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(jax.distributed, "initialize",
                      lambda **kwargs: recorded.append(("initialize", kwargs)))
  monkeypatch.setattr(jax.config, "update", lambda *args: recorded.append(("update", args)))
  return recorded


def test_single_process_does_nothing(calls):
  parallel.initialize_distributed()
  assert calls == []


def test_coordinator_environment_joins_with_gloo(calls, monkeypatch):
  # launch/multiprocess.sh
  monkeypatch.setenv(parallel.ENV_COORDINATOR, "127.0.0.1:1234")
  monkeypatch.setenv(parallel.ENV_NUM_PROCESSES, "3")
  monkeypatch.setenv(parallel.ENV_PROCESS_ID, "2")
  parallel.initialize_distributed()
  assert calls == [
      ("update", ("jax_cpu_collectives_implementation", "gloo")),
      ("initialize", {"coordinator_address": "127.0.0.1:1234", "num_processes": 3,
                      "process_id": 2})]


@pytest.mark.parametrize("ids,expected", [(None, None), ("0,1,2,3", [0, 1, 2, 3]), ("5", [5])])
def test_multihost_auto_detects_with_the_local_devices(calls, monkeypatch, ids, expected):
  # launch/tpu_pod.sh (no device ids) and launch/slurm_gpu.sbatch (all GPUs of the node).
  monkeypatch.setenv(parallel.ENV_MULTIHOST, "1")
  if ids is not None:
    monkeypatch.setenv(parallel.ENV_LOCAL_DEVICE_IDS, ids)
  parallel.initialize_distributed()
  assert calls == [("initialize", {"local_device_ids": expected})]


def test_multihost_needs_the_value_1(calls, monkeypatch):
  monkeypatch.setenv(parallel.ENV_MULTIHOST, "0")
  parallel.initialize_distributed()
  assert calls == []
