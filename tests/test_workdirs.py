"""Workdirs: a file, an impossible or unwritable path is one line; one run per workdir."""

import os
import subprocess
import sys
import tempfile

import pytest

from ssldml_jax import cli, locks, workdirs
from ssldml_jax.data import build

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_prepare_creates_and_refuses_files(tmp_path):
  path = workdirs.prepare(str(tmp_path / "a" / "b"))
  assert os.path.isdir(path) and os.listdir(path) == []
  (tmp_path / "file").write_text("x")
  with pytest.raises(workdirs.WorkdirError, match=r"--workdir .*/file is a file, not a directory"):
    workdirs.prepare(str(tmp_path / "file"))
  with pytest.raises(workdirs.WorkdirError, match=r"/file/sub cannot be created: Not a directory"):
    workdirs.prepare(str(tmp_path / "file" / "sub"))
  assert issubclass(workdirs.WorkdirError, cli.ConfigError)  # One line, exit status 2.


def test_prepare_refuses_a_directory_it_cannot_write(tmp_path, monkeypatch):
  locked = tmp_path / "read_only"
  locked.mkdir()
  locked.chmod(0o555)
  if os.geteuid() == 0:  # Permission bits do not stop root: the OS's refusal, simulated.
    def refuse(*args, **kwargs):
      raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
  try:
    with pytest.raises(workdirs.WorkdirError, match=r"read_only is not writable \(Permission denied"):
      workdirs.prepare(str(locked), "data directory")
  finally:
    locked.chmod(0o755)


def test_one_run_per_workdir(tmp_path):
  with workdirs.exclusive(str(tmp_path / "run")) as path:
    assert os.path.isfile(os.path.join(path, workdirs.LOCK_FILE))
    with pytest.raises(locks.LockHeld, match=f"workdir {path} is in use by host .* pid {os.getpid()}"):
      with workdirs.exclusive(path):
        pass
  assert os.listdir(path) == []  # Released.


@pytest.mark.slow
def test_a_workdir_that_is_a_file_stops_the_program_with_one_line(tmp_path):
  (tmp_path / "file").write_text("x")
  out = subprocess.run(
      [sys.executable, "-m", "ssldml_jax.pretrain",
       f"--config={os.path.join(REPO, 'configs/ssl_dml_euclidean.py:tiny')}",
       f"--workdir={tmp_path / 'file'}"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2
  lines = [line for line in out.stderr.splitlines() if line.strip()]
  assert lines == [f"error: --workdir {tmp_path / 'file'} is a file, not a directory; "
                   "choose another path"], out.stderr


def test_a_read_only_data_directory_can_be_read(ecg_synth_tiny, data_dir, monkeypatch):
  def refuse(*args, **kwargs):
    raise PermissionError(13, "Permission denied")

  monkeypatch.setattr(tempfile, "mkstemp", refuse)  # No file can be created anywhere.
  assert build.ensure_built("ecg_synth/tiny", data_dir).is_prepared()


def test_a_data_directory_that_is_a_file_is_named(tmp_path):
  (tmp_path / "data").write_text("x")
  with pytest.raises(build.DatasetError, match=r"data directory .*/data is a file"):
    build.ensure_built("ecg_synth/tiny", str(tmp_path / "data"))
