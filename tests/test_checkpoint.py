"""Checkpoints: round trip, keep-K, fallback from an unreadable step, the resumed metrics log."""

import json
import os

import jax
import numpy as np
import pytest

from ssldml_jax import checkpoint, metrics_log


def _tree(scale: float) -> dict:
  return {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3) * scale,
                     "b": np.float32(scale) * np.ones(3, np.float32)},
          "step": np.asarray(int(scale), np.int32),
          "rng": np.asarray(jax.random.PRNGKey(int(scale))),
          "empty": {}}


def _assert_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(x, y)


def test_round_trip_and_keep(tmp_path):
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep=2)
  for step in (1, 2, 3):
    ckpts.save(step, _tree(step), {"data_state": [f"state{step}"], "total_steps": 3})
  ckpts.save(3, _tree(99), {})  # An existing step is not written twice.
  ckpts.wait()
  assert ckpts.steps() == [2, 3]
  step, state, meta = ckpts.restore_latest(_tree(0))
  ckpts.close()
  assert step == 3 and meta["data_state"] == ["state3"] and meta["step"] == 3
  _assert_equal(state, _tree(3))
  assert checkpoint.latest_readable_meta(str(tmp_path))["total_steps"] == 3


def test_no_checkpoint_is_none(tmp_path):
  ckpts = checkpoint.Checkpoints(str(tmp_path))
  assert ckpts.restore_latest(_tree(0)) is None
  ckpts.close()
  assert checkpoint.latest_readable_meta(str(tmp_path)) is None


# A failed read leaves a tensorstore callback for an event loop orbax has already closed; Python
# reports it when the objects are collected. Harmless, and only on damaged checkpoints.
_CLOSED_LOOP = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@_CLOSED_LOOP
def test_unreadable_latest_falls_back_with_a_message(tmp_path, capsys):
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep=3)
  for step in (2, 4):
    ckpts.save(step, _tree(step), {"data_state": [str(step)]})
  ckpts.close()
  # A visible but damaged step, as a disk error or a hand-deleted file leaves it.
  state_dir = tmp_path / "checkpoints" / "4" / "state"
  for name in os.listdir(state_dir):
    if name.startswith("manifest") or name == "_METADATA":
      os.remove(state_dir / name)

  reader = checkpoint.Checkpoints(str(tmp_path), read_only=True)
  assert reader.restore_latest(_tree(0))[0] == 2  # A reader falls back but moves nothing.
  reader.close()
  assert (tmp_path / "checkpoints" / "4").exists()

  ckpts = checkpoint.Checkpoints(str(tmp_path), keep=3)
  step, state, meta = ckpts.restore_latest(_tree(0))
  assert step == 2 and meta["data_state"] == ["2"]
  _assert_equal(state, _tree(2))
  err = capsys.readouterr().err
  assert "checkpoint step 4" in err and "unreadable" in err and "falling back" in err
  assert not (tmp_path / "checkpoints" / "4").exists()
  assert os.listdir(tmp_path / checkpoint.UNREADABLE_DIR)
  # The resumed run can write step 4 again.
  ckpts.save(4, _tree(5), {})
  ckpts.wait()
  assert ckpts.steps() == [2, 4]
  ckpts.close()


@_CLOSED_LOOP
def test_nothing_readable_is_an_error(tmp_path):
  ckpts = checkpoint.Checkpoints(str(tmp_path))
  ckpts.save(1, _tree(1), {})
  ckpts.close()
  os.remove(tmp_path / "checkpoints" / "1" / "state" / "manifest.ocdbt")
  with pytest.raises(checkpoint.CheckpointError, match="no readable checkpoint in .*checkpoints"):
    with checkpoint.Checkpoints(str(tmp_path)) as ckpts:
      ckpts.restore_latest(_tree(0))


def test_another_models_checkpoint_is_refused_and_left_alone(tmp_path):
  ckpts = checkpoint.Checkpoints(str(tmp_path))
  ckpts.save(1, _tree(1), {})
  ckpts.close()
  wrong_shape = _tree(0)
  wrong_shape["params"]["w"] = np.zeros((3, 3), np.float32)
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"another model or optimiser \(\['params'\]\['w'\] is "
                           r"float32\[2, 3\] there, float32\[3, 3\] here"):
    with checkpoint.Checkpoints(str(tmp_path)) as ckpts:
      ckpts.restore_latest(wrong_shape)
  extra = dict(_tree(0), more={"x": np.zeros(2, np.float32)})
  with pytest.raises(checkpoint.CheckpointError, match=r"this config has \['more'\]\['x'\]"):
    with checkpoint.Checkpoints(str(tmp_path)) as ckpts:
      ckpts.restore_latest(extra)
  assert (tmp_path / "checkpoints" / "1").exists()


def test_resumed_log_drops_the_killed_runs_later_steps(tmp_path):
  log = metrics_log.MetricsLog(str(tmp_path), total_steps=10, progress_bar=False)
  for step in range(1, 7):
    log.write(step, {"loss": 1.0 / step, "bad": float("nan")})
  log.close()
  with open(tmp_path / metrics_log.METRICS_FILE, "a") as f:
    f.write('{"step": 7, "loss"')  # Torn by a kill mid-write.
  log = metrics_log.MetricsLog(str(tmp_path), total_steps=10, initial_step=4, progress_bar=False)
  log.write(5, {"loss": 0.5})
  log.close()
  records = metrics_log.read_metrics(str(tmp_path))
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
  assert records[0]["bad"] == "nan" and records[-1]["loss"] == 0.5
  assert os.listdir(tmp_path / metrics_log.TENSORBOARD_DIR)


def test_config_json_round_trip(tmp_path):
  from ssldml_jax import methods
  config = methods.pretrain_config("supervised_dml_regression", "tiny")
  metrics_log.write_config(str(tmp_path), config)
  back = metrics_log.read_config(str(tmp_path))
  assert back.method == "supervised_dml_regression" and back.model.stage_sizes == (1, 1, 1, 1)
  assert json.loads(back.to_json()) == json.loads(config.to_json())
