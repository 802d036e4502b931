"""One build per dataset: a second build, in another job or another process of a multi-process
run, waits for the first and reads what it built."""

import glob
import os
import socket
import subprocess
import sys
import time

import pytest

from ssldml_jax.data import build

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "ecg_synth/tiny"
SIZES = {"unlabeled": 115, "train": 85, "validation": 39, "test": 38}


def _wait_for(paths, text: str, proc, timeout: float = 180) -> None:
  """Waits until every file of ``paths`` contains ``text`` (or ``proc`` ends, or time is up)."""
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if all(os.path.exists(p) and text in open(p).read() for p in paths):
      return
    time.sleep(0.2)
  raise AssertionError(f"{text!r} not in {paths} (exit status {proc.poll()}): "
                       + " | ".join(open(p).read()[-1500:] for p in paths if os.path.exists(p)))


def _assert_one_complete_dataset(data_dir: str) -> None:
  config_dir = os.path.join(data_dir, "ecg_synth", "tiny")
  assert sorted(os.listdir(config_dir)) == ["1.0.0"]  # No other version, temporary dir or lock.
  builder = build.make_builder(TINY, data_dir)
  assert builder.is_prepared()
  assert {s: len(builder.as_data_source(s)) for s in SIZES} == SIZES


def test_a_second_build_waits_for_the_first_and_uses_its_dataset(tmp_path):
  data_dir = str(tmp_path / "data")
  first = build.build_lock(build.make_builder(TINY, data_dir))
  first.acquire()  # The first job has started its build ...
  log_path = str(tmp_path / "second.log")
  with open(log_path, "w") as log:
    second = subprocess.Popen([sys.executable, "-m", "ssldml_jax.data.build", TINY,
                               f"--data_dir={data_dir}"], cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT)
  try:
    _wait_for([log_path], "is being built by", second)
    build.make_builder(TINY, data_dir).download_and_prepare()  # ... and finishes it.
  finally:
    first.release()
  assert second.wait(timeout=180) == 0
  out = open(log_path).read()
  assert f"is being built by host {socket.gethostname()} pid {os.getpid()}" in out
  assert "building ecg_synth/tiny" not in out  # It used the first job's dataset.
  _assert_one_complete_dataset(data_dir)


@pytest.mark.slow
def test_a_multi_process_run_builds_a_missing_dataset_once(tmp_path):
  data_dir, logs = str(tmp_path / "data"), tmp_path / "logs"
  held = build.build_lock(build.make_builder(TINY, data_dir))
  held.acquire()  # Until both processes wait for the build, so that they meet there.
  env = dict(os.environ, SSLDML_LOG_DIR=str(logs), PYTHONPATH=REPO, PYTHON=sys.executable)
  flags = [f"--config={os.path.join(REPO, 'configs/ssl_dml_euclidean.py:tiny')}",
           f"--config.data.data_dir={data_dir}", "--config.data.per_device_batch_size=4",
           "--config.model.stage_sizes=(1,)", "--config.train.num_steps=2",
           "--config.train.eval_batches=0", "--config.train.progress_bar=False",
           f"--workdir={tmp_path / 'run'}"]
  launched = subprocess.Popen(["bash", "launch/multiprocess.sh", "2", "--", "pretrain", *flags],
                              cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
  try:
    paths = [str(logs / f"process_{i}.log") for i in range(2)]
    try:
      _wait_for(paths, "is being built by", launched)
    finally:
      held.release()  # Without building: one of the two builds, the other waits for it.
    out, _ = launched.communicate(timeout=400)
  finally:
    if launched.poll() is None:
      launched.kill()
      launched.wait()
  texts = [open(p).read() for p in paths]
  assert launched.returncode == 0, out[-3000:] + "".join(t[-2000:] for t in texts)
  assert sum("building ecg_synth/tiny" in t for t in texts) == 1, texts
  assert "starting step 0 of 2" in texts[0]
  _assert_one_complete_dataset(data_dir)
  assert not glob.glob(os.path.join(data_dir, "**", "incomplete.*"), recursive=True)
