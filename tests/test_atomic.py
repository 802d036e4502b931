"""Atomic writes: a file is complete or absent, and a refused write is one sentence with sizes."""

import errno
import os

import numpy as np
import pytest

from ssldml_jax import atomic
from ssldml_jax.eval import embed


def _listing(directory) -> list[str]:
  return sorted(os.listdir(directory))


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  path = str(tmp_path / "table.md")
  atomic.write_text(path, "old\n")
  with pytest.raises(atomic.DiskFullError) as caught:
    with atomic.replacing(path) as tmp:
      with open(tmp, "w") as f:
        f.write("x" * 5000)  # Half of the new file reached the disk ...
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # ... then the write was refused.
  message = str(caught.value)
  assert f"no space to write {path} (No space left on device)" in message
  assert "it needs more than 5 kB" in message and f"free in {tmp_path}" in message
  assert "\n" not in message
  assert open(path).read() == "old\n"
  assert _listing(tmp_path) == ["table.md"]


def test_write_text_replaces_whole_and_says_the_size_it_needed(tmp_path, monkeypatch):
  path = str(tmp_path / "sub" / "results.json")
  atomic.write_text(path, "{}")
  assert open(path).read() == "{}"

  def full(fd):
    raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

  monkeypatch.setattr(atomic.os, "fsync", full)  # The last write call before the rename.
  with pytest.raises(atomic.DiskFullError, match=r"\(Disk quota exceeded\): it needs about 1\.23 kB"):
    atomic.write_text(path, "y" * 1234)
  assert open(path).read() == "{}"
  assert _listing(tmp_path / "sub") == ["results.json"]


def test_other_errors_pass_through_and_clean_up(tmp_path):
  path = str(tmp_path / "a.csv")
  with pytest.raises(ZeroDivisionError):
    with atomic.replacing(path) as tmp:
      open(tmp, "w").close()
      1 / 0  # pylint: disable=pointless-statement
  assert _listing(tmp_path) == []


def test_the_embeddings_cache_is_written_whole(tmp_path, monkeypatch):
  arrays = {k: np.zeros(3, np.float32) for k in embed.FIELDS}
  arrays.update(embedding=np.ones((3, 4), np.float32), ecg_id=np.array(["a", "b", "c"]),
                patient_id=np.array(["p", "p", "q"]))
  path = str(tmp_path / "test.npz")
  embed.save_npz(path, arrays, source="s", dataset="d", split="test")
  np.testing.assert_array_equal(embed.load_npz(path)["embedding"], arrays["embedding"])

  def refused(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(np, "savez", refused)
  with pytest.raises(atomic.DiskFullError, match="test.npz"):
    embed.save_npz(path, arrays, source="s2", dataset="d", split="test")
  assert str(embed.load_npz(path)["source"]) == "s"
  assert _listing(tmp_path) == ["test.npz"]


@pytest.mark.parametrize("text, expected", [
    # tensorstore (orbax checkpoints), array_record (datasets), then other errors.
    ("OUT_OF_RANGE: Failed to write 165093 bytes to file 4: File too large "
     "[os_error_code='27']", True),
    ("Failed to finalize writing of split \"train\": write() failed: No space left on device; "
     "writing /d/x.array_record", True),
    ("Disk quota exceeded", True),
    ("open() failed: No such file or directory", False),
    ("chunk data hash mismatch", False),
])
def test_no_space_is_recognised_in_library_errors(text, expected):
  assert atomic.is_no_space(RuntimeError(text)) is expected
  try:
    try:
      raise ValueError(text)
    except ValueError as e:
      raise RuntimeError("wrapped") from e
  except RuntimeError as outer:
    assert atomic.is_no_space(outer) is expected
  assert atomic.is_no_space(OSError(errno.ENOSPC, "x")) and not atomic.is_no_space(OSError(2, "x"))


def test_format_bytes():
  assert [atomic.format_bytes(n) for n in (0, 999, 1234, 5.6e6, 7.89e9, 3e12)] == [
      "0 B", "999 B", "1.23 kB", "5.6 MB", "7.89 GB", "3 TB"]
