"""Workdirs: checked before use, and written by one run at a time.

``prepare(path)`` makes sure a directory exists and can be written, or stops with one line that
says why (it is a file, its parent is a file, it cannot be created or written). ``exclusive(path)``
also holds the workdir's lock (``LOCK_FILE``, see ``ssldml_jax.locks``) for the length of a run: a
second run started on a workdir in use stops at once with a message naming the holder's host and
pid, and the lock of a killed run is taken over with a message. Programs that only read a workdir
(probe's encoder, embed, predict) take no lock.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator

from ssldml_jax import cli, locks

LOCK_FILE = "lock.json"


class WorkdirError(cli.ConfigError):
  """A directory given to a program cannot be used; the message names it and says why."""


def prepare(path: str, what: str = "--workdir") -> str:
  """``path`` as an absolute path to an existing, writable directory (created if missing).

  ``what`` names the path in messages (a flag or config key). Raises ``WorkdirError``.
  """
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f"{what} {path} is a file, not a directory; choose another path")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:  # A parent that is a file, or one this user may not write.
    raise WorkdirError(f"{what} {path} cannot be created: "
                       f"{e.strerror or e}{f' ({e.filename})' if e.filename else ''}") from None
  try:
    fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(f"{what} {path} is not writable ({e.strerror or e}); choose another "
                       "directory or fix its permissions") from None
  return path


@contextlib.contextmanager
def exclusive(path: str, what: str = "--workdir") -> Iterator[str]:
  """Prepares ``path`` and holds its lock for the block; yields the absolute path.

  Process 0 takes the lock; in a multi-process run every process learns whether it got it, so
  that all of them stop rather than wait in a collective for one that stopped.
  """
  import jax  # Here, not at the top: the data builders use ``prepare`` without JAX.

  path = prepare(path, what)
  lock = None
  refused = None
  if jax.process_index() == 0:
    lock = locks.HolderLock(os.path.join(path, LOCK_FILE), f"workdir {path}")
    try:
      lock.acquire()
    except locks.LockHeld as e:
      refused = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    import numpy as np

    taken = int(multihost_utils.broadcast_one_to_all(np.int32(refused is None)))
    if not taken and refused is None:
      raise locks.LockHeld(f"workdir {path} is in use by another run (process 0 could not "
                           f"take {os.path.join(path, LOCK_FILE)}; see its log)")
  if refused is not None:
    raise refused
  try:
    yield path
  finally:
    if lock is not None:
      lock.release()
