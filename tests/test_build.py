"""One build per dataset: a second build, in another job or another process of a multi-process
run, waits for the first and reads what it built."""

import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from ssldml_jax.data import build, ecg_synth

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
  # No other version, temporary dir or lock.
  assert sorted(os.listdir(config_dir)) == [str(ecg_synth.EcgSynth.VERSION)]
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


def _children(pid: int) -> list[int]:
  """The pids of the running children of process ``pid`` (Linux)."""
  with open(f"/proc/{pid}/task/{pid}/children") as f:
    return [int(p) for p in f.read().split()]


def _process_id(pid: int) -> int:
  """Which process of a multi-process run ``pid`` is (its launcher's environment says)."""
  with open(f"/proc/{pid}/environ", "rb") as f:
    env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
  return int(env[b"SSLDML_PROCESS_ID"])


@pytest.mark.slow
def test_a_multi_process_run_builds_once_and_stops_together_on_sigterm(tmp_path):
  data_dir, logs, workdir = str(tmp_path / "data"), tmp_path / "logs", tmp_path / "run"
  held = build.build_lock(build.make_builder(TINY, data_dir))
  held.acquire()  # Until both processes wait for the build, so that they meet there.
  env = dict(os.environ, SSLDML_LOG_DIR=str(logs), PYTHONPATH=REPO, PYTHON=sys.executable)
  flags = [f"--config={os.path.join(REPO, 'configs/ssl_dml_euclidean.py:tiny')}",
           f"--config.data.data_dir={data_dir}", "--config.data.per_device_batch_size=4",
           "--config.model.stage_sizes=(1,)", "--config.train.num_steps=100000",
           "--config.train.checkpoint_every_steps=100000", "--config.train.log_every_steps=1",
           "--config.train.eval_batches=0", "--config.train.progress_bar=False",
           f"--workdir={workdir}"]
  launched = subprocess.Popen(["bash", "launch/multiprocess.sh", "2", "--", "pretrain", *flags],
                              cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
  paths = [str(logs / f"process_{i}.log") for i in range(2)]
  try:
    try:
      _wait_for(paths, "is being built by", launched)
    finally:
      held.release()  # Without building: one of the two builds, the other waits for it.
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while launched.poll() is None and time.time() < deadline and (
        not metrics.exists() or metrics.read_text().count('"loss"') < 3):
      time.sleep(0.1)
    # The notice reaches process 1 only; process 0 must stop at the same step.
    (second,) = [p for p in _children(launched.pid)
                 if "ssldml_jax.pretrain" in open(f"/proc/{p}/cmdline").read()
                 and _process_id(p) == 1]
    os.kill(second, signal.SIGTERM)
    out, _ = launched.communicate(timeout=300)
  finally:
    if launched.poll() is None:  # Its processes first: killing the launcher leaves them running.
      for child in _children(launched.pid):
        os.kill(child, signal.SIGKILL)
      launched.kill()
      launched.wait()
  texts = [open(p).read() for p in paths]
  assert "exit status 143" in out, out[-3000:] + "".join(t[-2000:] for t in texts)
  assert sum("building ecg_synth/tiny" in t for t in texts) == 1, texts
  _assert_one_complete_dataset(data_dir)
  assert not glob.glob(os.path.join(data_dir, "**", "incomplete.*"), recursive=True)
  stops = [re.findall(r"error: preemption notice \(SIGTERM\) at step (\d+) of", t) for t in texts]
  assert stops[0] == stops[1] and len(stops[0]) == 1, texts
  stopped = int(stops[0][0])
  with open(workdir / "checkpoints" / str(stopped) / "meta" / "metadata") as f:
    assert json.load(f)["step"] == stopped  # Saved by both processes together.
