"""``parallel.initialize_distributed``: what each launcher's environment makes it call.

``jax.distributed.initialize`` and ``jax.config.update`` are replaced by recorders (the real ones
would join a cluster, or change this process's backend settings).
"""

import jax
import pytest

from ssldml_jax import parallel

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
