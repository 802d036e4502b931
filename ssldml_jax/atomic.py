"""Files that are either complete or absent, and full disks reported as a sentence.

Every output that a rerun could take as done (tables, predictions, plots, embedding caches,
configs, build reports) is written to a hidden temporary name beside its target and renamed onto
it only once complete (``replacing``, ``write_text``, ``write_bytes``, ``copy_file``). A rename
within one directory is atomic, so a reader, or a rerun that skips work whose output exists, sees
the old file or the new one, never half of one. A write that fails removes its temporary file; one
killed mid-write leaves a hidden ``.NAME.tmp-PID`` that nothing reads.

A write refused for lack of space (``ENOSPC``, a quota, ``EFBIG`` from a file-size limit) becomes
a ``DiskFullError`` that names the file, the space it needed (when known) and the space free
there; ``is_no_space`` recognises the same condition in errors from libraries written in C++
(orbax's tensorstore, array_record), which report it as text rather than as an ``OSError``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from typing import Iterator, Optional

from ssldml_jax import cli

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFullError(cli.RunError):
  """A write was refused for lack of space; the message names the file and the space needed."""


def _no_space_errno(error: Optional[BaseException]) -> Optional[int]:
  """The errno of the first error in ``error``'s chain that is a lack of space, else None."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
      return error.errno
    text = str(error)  # C++ libraries report the C library's text, or "[os_error_code='28']".
    for code in NO_SPACE_ERRNOS:
      if os.strerror(code) in text or f"os_error_code='{code}'" in text:
        return code
    error = error.__cause__ or error.__context__
  return None


def is_no_space(error: BaseException) -> bool:
  """Whether ``error`` (or an error it was raised from) is a refused write for lack of space."""
  return isinstance(error, DiskFullError) or _no_space_errno(error) is not None


def format_bytes(num_bytes: float) -> str:
  """``num_bytes`` in B, kB, MB, GB or TB (powers of 1000), three significant figures."""
  value = float(num_bytes)
  for unit in ("B", "kB", "MB", "GB"):
    if abs(value) < 1000:
      return f"{value:.3g} {unit}"
    value /= 1000
  return f"{value:.3g} TB"


def free_bytes(path: str) -> Optional[int]:
  """Bytes free to this user on the file system of ``path`` (its nearest existing parent)."""
  path = os.path.abspath(path)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  try:
    return shutil.disk_usage(path).free
  except OSError:
    return None


def directory_size(path: str) -> int:
  """Bytes in the files under ``path`` (0 when it is gone)."""
  total = 0
  for root, _, files in os.walk(path):
    for name in files:
      with contextlib.suppress(OSError):
        total += os.path.getsize(os.path.join(root, name))
  return total


def disk_full(error: BaseException, what: str, where: str, *, needed: Optional[int] = None,
              at_least: bool = False, after: str = "") -> DiskFullError:
  """The ``DiskFullError`` for ``error``: could not write ``what`` in directory ``where``.

  ``needed`` is the space the write needed in bytes (``at_least``: a lower bound, such as what
  had been written when it failed); ``after`` is a sentence on what was kept.
  """
  free = free_bytes(where)
  size = ("" if needed is None else
          f"it needs {'more than ' if at_least else 'about '}{format_bytes(needed)}, ")
  reason = os.strerror(_no_space_errno(error) or errno.ENOSPC)
  message = (f"no space to write {what} ({reason}): {size}"
             f"{'unknown space' if free is None else format_bytes(free)} free in {where}")
  return DiskFullError(message + (f"; {after}" if after else ""))


def _temporary_name(path: str, suffix: str) -> str:
  directory, name = os.path.split(path)
  return os.path.join(directory, f".{name}.tmp-{os.getpid()}{suffix}")


@contextlib.contextmanager
def replacing(path: str, *, suffix: str = "", needed: Optional[int] = None) -> Iterator[str]:
  """Yields a temporary path beside ``path``; when the block ends without error the temporary file
  becomes ``path``, otherwise it is removed.

  ``suffix`` ends the temporary name (for writers that choose a format by extension, or append
  one, like ``np.savez``). A lack of space in the block becomes a ``DiskFullError`` naming
  ``path`` and ``needed`` bytes (default: more than what had been written).
  """
  path = os.path.abspath(path)
  directory = os.path.dirname(path)
  os.makedirs(directory, exist_ok=True)
  tmp = _temporary_name(path, suffix)
  try:
    yield tmp
    with open(tmp, "rb") as f:  # Durable before it is visible: a power cut leaves no empty file.
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:  # Also an interrupt or a preemption notice: no half file is kept.
    written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
    with contextlib.suppress(OSError):
      os.remove(tmp)
    if _no_space_errno(e) is not None and not isinstance(e, DiskFullError):
      raise disk_full(e, path, directory, needed=written if needed is None else needed,
                      at_least=needed is None, after="nothing was written there") from None
    raise


def write_bytes(path: str, data: bytes) -> str:
  """Writes ``data`` to ``path`` atomically; returns ``path``."""
  with replacing(path, needed=len(data)) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)
  return path


def write_text(path: str, text: str) -> str:
  """Writes ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
  return write_bytes(path, text.encode("utf-8"))


def copy_file(source: str, path: str) -> str:
  """Copies ``source`` to ``path`` atomically; returns ``path``."""
  with replacing(path, needed=os.path.getsize(source)) as tmp:
    shutil.copyfile(source, tmp)
  return path
