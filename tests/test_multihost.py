"""Multi-process training: 2 processes x 2 devices train like 1 process x 4, and resume on 1.

The input test splits the training stream the way 2 or 4 processes would, in this process. The
run test starts real processes: ``launch/multiprocess.sh`` runs 2 processes of 2 fake CPU devices
joined by ``jax.distributed`` (gloo collectives) for a few steps of a tiny SSL-DML pretraining,
while one process of 4 devices trains the same config uninterrupted as the reference; then that
process resumes the 2-process checkpoint (2 -> 1 processes) to the end. Both workdirs must log
the same losses and end with the same encoder.

Run as a script (``python tests/test_multihost.py REFERENCE_DIR RESUME_DIR``), this file is that
single process: it trains the reference, waits for a line on stdin (the 2-process run is done),
then resumes. One process for both runs compiles the step once.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from ssldml_jax import cli, config_defaults, metrics_log, train_lib
from ssldml_jax.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = "configs/ssl_dml_euclidean.py:tiny"  # Euclidean mining: DTW compiles slower.
PER_DEVICE = 4
GLOBAL_BATCH = 4 * PER_DEVICE
STEPS_ON_TWO = 3   # The 2-process run stops (and checkpoints) here ...
TOTAL_STEPS = 5    # ... and the 1-process run resumes it to here.
OVERRIDES = {
    "data.per_device_batch_size": PER_DEVICE,
    "model.stage_sizes": (1,),        # Compiles in half the time of the tiny default.
    "train.log_every_steps": 1,
    "train.checkpoint_every_steps": 2,
    "train.keep_checkpoints": 10,
    "train.eval_batches": 0,
    "train.progress_bar": False,
}
# Dropout stays on (tiny: 0.1): its masks come from per-device keys, so equal losses also show
# that each row of the global batch lands on the same global device either way.


def _config(num_steps: int):
  config = cli.load_config_file(os.path.join(REPO, SPEC))
  for key, value in {**OVERRIDES, "train.num_steps": num_steps}.items():
    section, name = key.split(".")
    config[section][name] = value
  return config


def _flags(num_steps: int) -> list[str]:
  return ([f"--config={os.path.join(REPO, SPEC)}", f"--config.train.num_steps={num_steps}"]
          + [f"--config.{key}={value}" for key, value in OVERRIDES.items()])


def _single_process(reference_dir: str, resume_dir: str) -> None:
  """The script mode: the uninterrupted reference, then (on a line of stdin) the resume."""
  train_lib.train_and_evaluate(_config(TOTAL_STEPS), reference_dir)
  print("reference done", flush=True)
  sys.stdin.readline()
  train_lib.train_and_evaluate(_config(TOTAL_STEPS), resume_dir)


# --- The input stream ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_config(ecg_synth_tiny, data_dir):
  c = config_defaults.base_config().data
  c.name, c.data_dir, c.sampling_rate = "ecg_synth/tiny", data_dir, 100
  c.per_device_batch_size = PER_DEVICE
  c.build_if_missing = False
  return c


def _take(data_config, num_batches: int, *, process_count: int, process_index: int = 0,
          state: bytes = None, seed: int = 0):
  it = pipeline.make_train_iterator(
      data_config, seed=seed, num_devices=4 // process_count, process_index=process_index,
      process_count=process_count)
  try:
    if state is not None:
      it.set_state(state)
    return [next(it) for _ in range(num_batches)], it.get_state()
  finally:
    it.close()


def test_global_batches_do_not_depend_on_process_count(data_config):
  num_batches = 9  # 115 unlabeled records: 7.2 global batches of 16 an epoch; crosses into the 2nd.
  one, state_one = _take(data_config, num_batches, process_count=1)
  for count in (2, 4):
    parts = [_take(data_config, num_batches, process_count=count, process_index=p)
             for p in range(count)]
    assert len({state for _, state in parts}) == 1  # Every process is at the same position.
    assert parts[0][1] == state_one
    for k in range(num_batches):
      ids = [part[0][k]["ecg_id"] for part in parts]
      # Each process read only its own rows, and its rows sit where its devices are in the
      # device-major global batch.
      assert not set.intersection(*(set(i.ravel()) for i in ids))
      np.testing.assert_array_equal(np.concatenate(ids), one[k]["ecg_id"])
      np.testing.assert_array_equal(
          np.concatenate([part[0][k]["ecg"] for part in parts]), one[k]["ecg"])
  first_epoch = np.concatenate([b["ecg_id"].ravel() for b in one])[:115]
  assert len(set(first_epoch)) == 115  # Every record once an epoch, none dropped.
  assert json.loads(state_one)["position"] == num_batches * GLOBAL_BATCH

  # A position saved by 2 processes resumes 1 process at the next global batch, and vice versa.
  four, _ = _take(data_config, num_batches + 2, process_count=1)
  _, state_two = _take(data_config, num_batches, process_count=2, process_index=1)
  resumed, _ = _take(data_config, 2, process_count=1, state=state_two)
  for got, want in zip(resumed, four[num_batches:]):
    np.testing.assert_array_equal(got["ecg_id"], want["ecg_id"])
  back, _ = _take(data_config, 1, process_count=2, process_index=1, state=state_one)
  np.testing.assert_array_equal(back[0]["ecg_id"], four[num_batches]["ecg_id"][2:])

  with pytest.raises(ValueError, match="another record stream .*seed 0 there, 1 here"):
    _take(data_config, 1, process_count=1, state=state_one, seed=1)


# --- Real processes -----------------------------------------------------------------------------

def _losses(workdir: str) -> tuple[list[int], list[float]]:
  rows = [r for r in metrics_log.read_metrics(workdir) if "loss" in r]
  return [r["step"] for r in rows], [r["loss"] for r in rows]


def _meta(workdir: str, step: int) -> dict:
  with open(os.path.join(workdir, "checkpoints", str(step), "meta", "metadata")) as f:
    return json.load(f)


def test_two_processes_train_like_one_and_resume_on_one(ecg_synth_tiny, tmp_path):
  reference_dir, two_dir = str(tmp_path / "one_process"), str(tmp_path / "two_processes")
  logs = tmp_path / "logs"
  # SSLDML_DATA_DIR is set by the fixture; PYTHON: the launcher runs this interpreter.
  env = dict(os.environ, SSLDML_LOG_DIR=str(logs), PYTHON=sys.executable)
  single_log = open(tmp_path / "single.log", "w")
  single = subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), reference_dir, two_dir], cwd=REPO,
      env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=4"),
      stdin=subprocess.PIPE, stdout=single_log, stderr=subprocess.STDOUT, text=True)
  try:
    launched = subprocess.run(
        ["bash", "launch/multiprocess.sh", "2", "--devices_per_process=2", "--", "pretrain",
         *_flags(STEPS_ON_TWO), f"--workdir={two_dir}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    single.communicate("go\n", timeout=400)
  finally:
    if single.poll() is None:
      single.kill()
      single.wait()
    single_log.close()
  output = (tmp_path / "single.log").read_text()
  assert single.returncode == 0, output[-3000:]

  chief = (logs / "process_0.log").read_text()
  assert f"(4 device(s), global batch {GLOBAL_BATCH}," in chief
  assert f"resuming at step {STEPS_ON_TWO} of {TOTAL_STEPS}" in output
  # The 2-process run wrote its checkpoints (one input position for both processes) ...
  for step in (2, STEPS_ON_TWO):
    meta = _meta(two_dir, step)
    assert json.loads(meta["data_state"])["position"] == step * GLOBAL_BATCH
  # ... and 1 process carried on from the last.
  assert json.loads(_meta(two_dir, TOTAL_STEPS)["data_state"])["position"] == \
      TOTAL_STEPS * GLOBAL_BATCH

  steps_ref, losses_ref = _losses(reference_dir)
  steps_two, losses_two = _losses(two_dir)
  assert steps_ref == steps_two == list(range(1, TOTAL_STEPS + 1))
  # Only the order of the cross-process sums differs (gloo vs in-process): float32 rounding.
  np.testing.assert_allclose(losses_two, losses_ref, rtol=1e-4)
  assert len(set(losses_ref)) == TOTAL_STEPS  # Every step saw another batch.

  _, ref, _ = train_lib.load_encoder(reference_dir)
  _, two, _ = train_lib.load_encoder(two_dir)
  assert jax.tree.structure(ref) == jax.tree.structure(two)
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(two)):
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5)


if __name__ == "__main__":
  _single_process(*sys.argv[1:3])
