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

Padded evaluation: a supervised run evaluates the 39 validation ECGs in global batches that do
not divide them, on 1 process x 8 devices, 1 x 1 (through ``launch/local.sh``) and 2 x 2
(``launch/multiprocess.sh``); each logged loss and accuracy must be the plain NumPy mean over the
39 ECGs of what the checkpointed model predicts.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from ssldml_jax import checkpoint, cli, config_defaults, metrics_log, steps, train_lib
from ssldml_jax.data import build, pipeline, records

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


@pytest.mark.slow
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


# --- Padded evaluation --------------------------------------------------------------------------

EVAL_SPEC = "configs/supervised.py:tiny"     # Binary: a per-ECG loss, whatever the batching.
EVAL_OVERRIDES = {
    "data.per_device_batch_size": 2,
    "data.eval_per_device_batch_size": 2,    # 39 ECGs in global batches of 16, 2 or 2 x 2 x 2.
    "model.stage_sizes": (1,),
    "train.num_steps": 1,
    "train.checkpoint_every_steps": 1,
    "train.log_every_steps": 1,
    "train.eval_batches": 100,               # All of them.
    "train.progress_bar": False,
}


def _restored_state(workdir: str, config) -> steps.TrainState:
  """The newest checkpoint's train state (the trainer's checkpoint layout)."""
  template = train_lib.build_program(config, 1).init_state(jax.random.PRNGKey(0), 500)
  key = jax.random.PRNGKey(0)
  with checkpoint.Checkpoints(workdir, read_only=True) as ckpts:
    _, tree, _ = ckpts.restore_latest(train_lib._state_tree(template, key))
  return train_lib._from_tree(template, tree)[0]


def _numpy_eval(config, state: steps.TrainState) -> dict:
  """Loss and accuracy of the model in ``state`` over every validation ECG: NumPy means of the
  per-ECG binary cross-entropy and hits of its logits."""
  builder = build.ensure_built(config.data.name)
  source = builder.as_data_source("validation")
  rate = builder.builder_config.sampling_rate
  ecg = np.stack([records.resample(records.int16_uv_to_mv(source[i]["ecg"]), rate,
                                   config.data.sampling_rate) for i in range(len(source))])
  y = np.array([source[i]["pcwp"] for i in range(len(source))]) > config.task.pcwp_threshold
  mods = steps.build_models(config, bn_axis_name=None)

  @jax.jit
  def logits(x):
    variables = lambda part: {"params": state.params[part],  # noqa: E731
                              "batch_stats": state.batch_stats[part]}
    emb = mods.encoder.apply(variables("encoder"), x, train=False)
    return mods.head.apply(variables("head"), emb, train=False)[:, 0]

  z = np.asarray(logits(ecg.astype(np.float32)), np.float64)
  return {"count": len(z), "loss": np.mean(np.logaddexp(0.0, z) - y * z),
          "task_accuracy": np.mean((z > 0) == y)}


def _run_eval_layout(layout: str, workdir: str, tmp_path) -> None:
  flags = [f"--config={os.path.join(REPO, EVAL_SPEC)}", f"--workdir={workdir}"] + [
      f"--config.{key}={value}" for key, value in EVAL_OVERRIDES.items()]
  env = dict(os.environ, PYTHON=sys.executable, SSLDML_LOG_DIR=str(tmp_path / "logs"))
  if layout == "1x8":
    config = cli.load_config_file(os.path.join(REPO, EVAL_SPEC))
    config.update_from_flattened_dict(EVAL_OVERRIDES)
    train_lib.train_and_evaluate(config, workdir)
    return
  if layout == "1x1":
    command = ["bash", "launch/local.sh", "pretrain", "--", *flags]
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  else:
    command = ["bash", "launch/multiprocess.sh", "2", "--devices_per_process=2", "--", "pretrain",
               *flags]
  done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("layout,global_batch", [("1x8", 16), ("1x1", 2), ("2x2", 8)])
def test_padded_evaluation_is_the_mean_over_real_examples(layout, global_batch, ecg_synth_tiny,
                                                         tmp_path):
  workdir = str(tmp_path / "run")
  _run_eval_layout(layout, workdir, tmp_path)
  config = metrics_log.read_config(workdir)
  want = _numpy_eval(config, _restored_state(workdir, config))
  assert want["count"] == 39 and want["count"] % global_batch  # The last batch is padded.
  logged = [r for r in metrics_log.read_metrics(workdir) if "eval/validation/loss" in r]
  assert [r["step"] for r in logged] == [1]
  assert logged[0]["eval/validation/loss"] == pytest.approx(want["loss"], rel=2e-5)
  assert logged[0]["eval/validation/task_accuracy"] == pytest.approx(want["task_accuracy"],
                                                                     abs=1e-6)


if __name__ == "__main__":
  _single_process(*sys.argv[1:3])
