"""Failure behaviour end to end: preemption, damaged data and full disks, on ``ecg_synth/tiny``.

Full disks are simulated with a file-size limit on this process (``RLIMIT_FSIZE``, with SIGXFSZ
ignored): a write past the limit fails inside the library that makes it, orbax's tensorstore or
array_record, as it would on a full disk (``EFBIG`` rather than ``ENOSPC``), and nothing on the
machine fills up. Damaged shards are copies of the dataset truncated, removed or with flipped
bytes. The training runs share one compiled program (the config of ``tests/test_pretrain.py``).
"""

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
from array_record.python import array_record_module

from ssldml_jax import atomic, checkpoint, cli, metrics_log, train_lib
from ssldml_jax.data import build, ecg_synth, integrity, pipeline
from ssldml_jax.eval import tables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = "configs/ssl_dml_euclidean.py:tiny"
VERSION = str(ecg_synth.EcgSynth.VERSION)
TINY = "ecg_synth/tiny"
OVERRIDES = {
    "data.per_device_batch_size": 4,   # x 8 devices: a global batch of 32.
    "data.eval_per_device_batch_size": 4,
    "model.stage_sizes": (1,),
    "model.dropout": 0.0,
    "train.log_every_steps": 1,
    "train.eval_batches": 0,
    "train.progress_bar": False,
}
RESUME_HINT = "run the same command to resume"


def _config(**extra):
  config = cli.load_config_file(os.path.join(REPO, SPEC))
  for key, value in {**OVERRIDES, **extra}.items():
    section, name = key.split(".")
    config[section][name] = value
  return config


def _flags(**extra) -> list[str]:
  return [f"--config={os.path.join(REPO, SPEC)}"] + [
      f"--config.{key}={value}" for key, value in {**OVERRIDES, **extra}.items()]


def _logged_steps(workdir) -> list[int]:
  return [r["step"] for r in metrics_log.read_metrics(str(workdir)) if "loss" in r]


@contextlib.contextmanager
def _file_size_limit(num_bytes: int):
  """No file of this process may grow past ``num_bytes`` (a full disk, for what writes more)."""
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # The write fails; nothing is killed.
  resource.setrlimit(resource.RLIMIT_FSIZE, (num_bytes, hard))
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, handler)


# --- Preemption -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_143_and_a_rerun_resumes(ecg_synth_tiny, tmp_path,
                                                                   capsys):
  workdir, total = tmp_path / "run", 60
  # No periodic checkpoint before the end: the one found after SIGTERM is the notice's.
  extra = {"train.num_steps": total, "train.checkpoint_every_steps": 1000}
  log_path = tmp_path / "run.log"
  with open(log_path, "w") as log:
    proc = subprocess.Popen([sys.executable, "-m", "ssldml_jax.pretrain", *_flags(**extra),
                             f"--workdir={workdir}"], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT)
  deadline = time.time() + 300
  while proc.poll() is None and time.time() < deadline and len(_logged_steps(workdir)) < 5:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)  # The preemption notice, mid-run.
  assert proc.wait(timeout=120) == 143, log_path.read_text()[-3000:]
  output = log_path.read_text()
  stopped = _logged_steps(workdir)[-1]
  assert 5 <= stopped < total
  errors = [line for line in output.splitlines() if line.startswith("error:")]
  assert errors == [f"error: preemption notice (SIGTERM) at step {stopped} of {total}: saved "
                    f"checkpoint step {stopped} in {workdir}/checkpoints; {RESUME_HINT}"], output
  assert "Traceback" not in output
  assert checkpoint.latest_readable_meta(str(workdir))["step"] == stopped
  assert not (workdir / "lock.json").exists()

  capsys.readouterr()
  train_lib.train_and_evaluate(_config(**extra), str(workdir))  # Run again: resumes.
  assert f"resuming at step {stopped} of {total}" in capsys.readouterr().err
  assert _logged_steps(workdir) == list(range(1, total + 1))
  assert checkpoint.latest_readable_meta(str(workdir))["step"] == total


# --- Damaged data -------------------------------------------------------------------------------

def _copy_dataset(data_dir: str, tmp_path) -> tuple[str, str]:
  """A copy of ``ecg_synth/tiny``: (its data directory, its training shard)."""
  root = str(tmp_path / "data")
  shutil.copytree(os.path.join(data_dir, "ecg_synth", "tiny"),
                  os.path.join(root, "ecg_synth", "tiny"))
  version = os.path.join(root, "ecg_synth", "tiny", VERSION)
  return root, os.path.join(version, "ecg_synth-unlabeled.array_record-00000-of-00001")


def _edit_json(path: str, edit) -> None:
  with open(path) as f:
    data = json.load(f)
  edit(data)
  with open(path, "w") as f:
    json.dump(data, f)


def _truncate(shard):
  os.truncate(shard, os.path.getsize(shard) // 2)


def _overwrite(shard):
  with open(shard, "r+b") as f:
    f.write(os.urandom(os.path.getsize(shard)))


def _shard_lengths_plus_one(shard):
  def edit(info):
    split = next(s for s in info["splits"] if s["name"] == "unlabeled")
    split["shardLengths"] = [str(int(n) + 1) for n in split["shardLengths"]]
  _edit_json(os.path.join(os.path.dirname(shard), "dataset_info.json"), edit)


def _ecg_as_int32(shard):
  def edit(features):
    features["featuresDict"]["features"]["ecg"]["tensor"]["dtype"] = "int32"
  _edit_json(os.path.join(os.path.dirname(shard), "features.json"), edit)


def _without_sampling_rate(shard):
  _edit_json(os.path.join(os.path.dirname(shard), "features.json"),
             lambda f: f["featuresDict"]["features"].pop("sampling_rate"))


@pytest.mark.parametrize("damage, problem", [
    (os.remove, r"shard {shard} is missing"),
    (_truncate, r"shard {shard} is damaged \(truncated or overwritten\) \(RuntimeError: .*Riegeli"),
    (_overwrite, r"shard {shard} is damaged \(truncated or overwritten\)"),
    (_shard_lengths_plus_one, r"shard {shard} holds 115 records where dataset_info.json lists 116"),
    (_ecg_as_int32, r"feature 'ecg' is int32 \[1000, 12\], this version writes int16 \[1000, 12\]"),
    (_without_sampling_rate, r"feature 'sampling_rate' is missing"),
])
def test_a_damaged_dataset_is_named_when_opened(ecg_synth_tiny, data_dir, tmp_path, damage,
                                                problem):
  root, shard = _copy_dataset(data_dir, tmp_path)
  damage(shard)
  config = _config()
  config.data.data_dir = root
  with pytest.raises(integrity.DamagedDataError) as caught:
    pipeline.make_train_iterator(config.data, seed=0)
  message = str(caught.value)
  name = f"ecg_synth/tiny/{re.escape(VERSION)}"
  assert re.search(rf"^{name}(:| split 'unlabeled':) " + problem.format(
      shard=re.escape(shard)), message), message
  assert message.endswith(f"rebuild it with python -m ssldml_jax.data.build ecg_synth/tiny "
                          f"--data_dir={root} --overwrite (and its --manual_dir, if any)")
  assert "\n" not in message


def _break_one_record(shard: str, at: float) -> int:
  """Flips bytes at fraction ``at`` of ``shard``; returns the one record that no longer reads."""
  offset = int(os.path.getsize(shard) * at)
  with open(shard, "r+b") as f:
    f.seek(offset)
    data = f.read(16)
    f.seek(offset)
    f.write(bytes(b ^ 0xFF for b in data))
  reader = array_record_module.ArrayRecordReader(shard)
  unreadable = []
  for i in range(reader.num_records()):
    try:
      reader.read([i])
    except RuntimeError:
      unreadable.append(i)
  reader.close()
  assert len(unreadable) == 1, unreadable
  return unreadable[0]


def _step_reading(config, ecg_id: str, steps: int) -> int:
  """The training step whose batch holds ``ecg_id``."""
  it = pipeline.make_train_iterator(config.data, seed=config.seed)
  try:
    for step in range(1, steps + 1):
      if ecg_id in next(it)["ecg_id"]:
        return step
  finally:
    it.close()
  raise AssertionError(f"{ecg_id} is not in the first {steps} batches")


@pytest.mark.slow
def test_a_record_that_does_not_decode_stops_training_with_the_last_checkpoint_intact(
    ecg_synth_tiny, data_dir, tmp_path):
  root, shard = _copy_dataset(data_dir, tmp_path)
  config = _config(**{"train.checkpoint_every_steps": 1})
  # Damage a record that the third or a later batch reads, so that checkpoints come before it.
  ids = ecg_synth_tiny.as_data_source("unlabeled")
  for at in (0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6):
    fresh = shutil.copy(shard, str(tmp_path / "candidate"))
    index = _break_one_record(fresh, at)
    bad_step = _step_reading(config, ids[index]["ecg_id"].decode(), 8)
    if bad_step >= 3:
      shutil.move(fresh, shard)
      break
  else:
    pytest.fail("no damaged record is read after step 2")
  config.data.data_dir = root
  config.train.num_steps = bad_step + 2
  workdir = str(tmp_path / "run")
  # grain reads ahead in its thread; the error reaches this (the main) thread at that step.
  with pytest.raises(integrity.DamagedDataError, match=(
      rf"^ecg_synth/tiny/{re.escape(VERSION)} split 'unlabeled': record {index} "
      rf"\(record {index} of "
      rf"{re.escape(shard)}\) cannot be read \(RuntimeError: .*; rebuild it with ")):
    train_lib.train_and_evaluate(config, workdir)
  assert _logged_steps(workdir) == list(range(1, bad_step))
  assert checkpoint.latest_readable_meta(workdir)["step"] == bad_step - 1
  train_lib.load_encoder(workdir)  # Readable.
  assert not os.path.exists(os.path.join(workdir, "lock.json"))


def test_a_worker_process_reports_a_damaged_record_the_same_way(ecg_synth_tiny, data_dir,
                                                                tmp_path):
  root, shard = _copy_dataset(data_dir, tmp_path)
  index = _break_one_record(shard, 0.5)
  config = _config(**{"data.num_workers": 1, "data.prefetch": 2})
  config.data.data_dir = root
  it = pipeline.make_train_iterator(config.data, seed=0)
  try:
    with pytest.raises(integrity.DamagedDataError,
                       match=rf"split 'unlabeled': record {index} \(record {index} of "):
      for _ in range(8):  # 256 records: every record of the split once at least.
        next(it)
  finally:
    it.close()


# --- Full disks ---------------------------------------------------------------------------------

# The failed write leaves tensorstore callbacks for an event loop orbax has already closed; Python
# reports them when they are collected. Harmless.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_full_disk_at_a_checkpoint_stops_the_run_and_keeps_the_previous_one(
    ecg_synth_tiny, tmp_path, monkeypatch, capsys):
  workdir = str(tmp_path / "run")
  config = _config(**{"train.num_steps": 12, "train.checkpoint_every_steps": 4})
  real_save = checkpoint.Checkpoints.save
  disk = contextlib.ExitStack()

  def save(self, step, state, meta):
    if step == 8:  # The disk fills up once the first checkpoint is written.
      self.wait()
      disk.enter_context(_file_size_limit(8000))
    return real_save(self, step, state, meta)

  monkeypatch.setattr(checkpoint.Checkpoints, "save", save)
  with disk:
    with pytest.raises(atomic.DiskFullError) as caught:
      train_lib.train_and_evaluate(config, workdir)
  message = str(caught.value)
  assert re.fullmatch(
      r"no space to write checkpoint step 8 \(File too large\): it needs about [\d.]+ kB, "
      rf"[\d.]+ [kMGT]?B free in {re.escape(workdir)}/checkpoints; the checkpoint of step 4 is "
      rf"intact; free some space and {RESUME_HINT}", message), message
  with checkpoint.Checkpoints(workdir, read_only=True) as left:
    assert left.steps() == [4]
  assert checkpoint.latest_readable_meta(workdir)["step"] == 4

  monkeypatch.setattr(checkpoint.Checkpoints, "save", real_save)
  capsys.readouterr()
  train_lib.train_and_evaluate(config, workdir)  # Space again: resumes from step 4.
  assert "resuming at step 4 of 12" in capsys.readouterr().err
  assert checkpoint.latest_readable_meta(workdir)["step"] == 12


def test_full_disk_during_a_build_leaves_no_dataset(tmp_path):
  data_dir = str(tmp_path / "data")
  with _file_size_limit(64_000):
    with pytest.raises(atomic.DiskFullError, match=(
        rf"^no space to write dataset ecg_synth/tiny/{re.escape(VERSION)} \(File too large\): "
        r"it needs more "
        rf"than [\d.]+ kB, [\d.]+ [kMGT]?B free in {re.escape(data_dir)}/ecg_synth/tiny; the "
        r"partial build is removed; free some space and build again$")):
      build.build(TINY, data_dir)
  config_dir = os.path.join(data_dir, "ecg_synth", "tiny")
  assert os.listdir(config_dir) == []  # No dataset, no temporary directory, no lock.
  assert not build.make_builder(TINY, data_dir).is_prepared()
  assert build.build(TINY, data_dir).is_prepared()  # With space again.


def test_full_disk_writing_a_report_keeps_the_previous_tables(tmp_path):
  stem = str(tmp_path / "tables" / "classification")
  old = tables.Table(header=("Method", "AUROC"), body=(("SSL-DML", "0.7"),), caption="old")
  tables.write_table(old, stem)
  before = {ext: open(stem + ext).read() for ext in (".md", ".csv", ".tex")}
  new = tables.Table(header=("Method", "AUROC"),
                     body=tuple((f"method {i}", "0." + "9" * 40) for i in range(300)))
  with _file_size_limit(8000):
    with pytest.raises(atomic.DiskFullError, match=(
        rf"^no space to write {re.escape(stem)}.md \(File too large\): it needs about [\d.]+ kB")):
      tables.write_table(new, stem)
  assert {ext: open(stem + ext).read() for ext in before} == before
  assert sorted(os.listdir(tmp_path / "tables")) == [
      "classification.csv", "classification.md", "classification.tex"]
