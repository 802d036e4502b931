"""Lock files that name their holder: one run per workdir, one build per dataset.

A lock is a file created with ``O_EXCL`` (atomic on local disks, NFS and Cloud Storage FUSE; no
``flock`` needed) that holds its holder as JSON: host, pid, the process's start time, the time it
was taken and the command line. While it is held, a daemon thread refreshes the file's
modification time every ``heartbeat_s`` seconds. A lock is **stale** when its holder is gone:

- on the same host, when no process with its pid and start time runs (a killed run, at once);
- on any host, when its heartbeat is older than ``stale_after_s`` (a run on a host that died).

A stale lock is taken over with a message on stderr; a live one raises ``LockHeld`` naming the
holder, at once or after waiting up to ``wait_s`` for it to be released. Taking over happens under
a second ``O_EXCL`` file (``<lock>.takeover``), so two processes that both find a lock stale
cannot both take it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Callable, Optional

from ssldml_jax import cli

HEARTBEAT_S = 10.0
STALE_AFTER_S = 60.0
# A takeover guard older than this was left by a process killed while taking over.
_GUARD_STALE_S = 30.0
# A lock file whose content cannot be read yet is being written; after this long it never will be.
_UNREADABLE_GRACE_S = 5.0


class LockHeld(cli.RunError):
  """The lock is held by a live holder; the message names it."""


def _process_start(pid: int) -> Optional[str]:
  """The start time of process ``pid`` in clock ticks since boot (Linux), else None.

  With the pid it identifies a process: a pid reused by another process has another start time.
  """
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
      stat = f.read()
  except OSError:
    return None
  # Field 22; the command name (field 2) is in parentheses and may hold spaces.
  return stat.rsplit(")", 1)[1].split()[19]


def _process_alive(pid: int, start: Optional[str]) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # Another user's process: alive.
  return start is None or _process_start(pid) in (None, start)


def describe(holder: dict) -> str:
  """``host H pid P since HH:MM:SS (command)`` for messages."""
  since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
  command = holder.get("command", "")
  return (f"host {holder.get('host')} pid {holder.get('pid')} since {since}"
          + (f" ({command})" if command else ""))


class HolderLock:
  """A lock file at ``path`` for ``what``, which the holder is ``doing`` (phrases for messages:
  ``"workdir /runs/a"``, ``"in use"``)."""

  def __init__(self, path: str, what: str, *, doing: str = "in use",
               heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S):
    self.path = os.path.abspath(path)
    self.what, self.doing = what, doing
    self._heartbeat_s, self._stale_after_s = heartbeat_s, stale_after_s
    self._me = {"host": socket.gethostname(), "pid": os.getpid(),
                "start": _process_start(os.getpid()),
                "command": " ".join(os.path.basename(a) if i == 0 else a
                                    for i, a in enumerate(sys.argv))[:300],
                "token": uuid.uuid4().hex}
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  # --- Reading ------------------------------------------------------------------------------

  def holder(self) -> Optional[dict]:
    """The holder's record, ``{}`` while it is being written or unreadable, None if unlocked."""
    try:
      with open(self.path, encoding="utf-8") as f:
        text = f.read()
    except FileNotFoundError:
      return None
    except OSError:
      return {}
    try:
      holder = json.loads(text)
    except ValueError:
      return {}
    return holder if isinstance(holder, dict) else {}

  def _age(self) -> Optional[float]:
    try:
      return max(time.time() - os.path.getmtime(self.path), 0.0)
    except OSError:
      return None

  def stale_reason(self, holder: dict) -> Optional[str]:
    """Why the lock of ``holder`` is stale, or None when its holder may be alive."""
    age = self._age()
    if age is None:
      return None
    if not holder:
      return f"its file is unreadable after {age:.0f} s" if age > _UNREADABLE_GRACE_S else None
    if age > self._stale_after_s:
      return f"no heartbeat for {age:.0f} s"
    if holder.get("host") == self._me["host"] and isinstance(holder.get("pid"), int):
      if not _process_alive(holder["pid"], holder.get("start")):
        return f"process {holder['pid']} is gone"
    return None

  # --- Taking and releasing -----------------------------------------------------------------

  def _create(self) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump(dict(self._me, since=time.time()), f)
      f.flush()
      os.fsync(f.fileno())
    return True

  def _take_over(self, stale: dict, reason: str) -> None:
    """Removes the stale lock of ``stale`` unless another process got there first."""
    guard = self.path + ".takeover"
    try:
      fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:  # Another process is taking over: see what it leaves.
      with contextlib.suppress(OSError):
        if time.time() - os.path.getmtime(guard) > _GUARD_STALE_S:
          os.remove(guard)
      time.sleep(0.05)
      return
    os.close(fd)
    try:
      if self.holder() == stale:
        os.remove(self.path)
        print(f"taking over the lock of {self.what} from "
              f"{describe(stale) if stale else 'an unknown holder'}: {reason}",
              file=sys.stderr, flush=True)
    finally:
      os.remove(guard)

  def acquire(self, *, wait_s: float = 0.0, poll_s: float = 1.0,
              on_wait: Optional[Callable[[dict], None]] = None) -> None:
    """Takes the lock, taking over a stale one; raises ``LockHeld`` if a live holder keeps it
    longer than ``wait_s`` seconds (0: do not wait). ``on_wait(holder)`` is called once when
    waiting starts."""
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    deadline = time.monotonic() + wait_s
    waiting = False
    while not self._create():
      holder = self.holder()
      if holder is None:
        continue  # Released meanwhile.
      reason = self.stale_reason(holder)
      if reason is not None:
        self._take_over(holder, reason)
        continue
      if holder and time.monotonic() >= deadline:
        age = self._age() or 0.0
        raise LockHeld(
            f"{self.what} is {self.doing} by {describe(holder)}, last heartbeat {age:.0f} s ago"
            + (f"; waited {wait_s:.0f} s" if wait_s else "")
            + f" (lock file {self.path}); if that process is gone, its lock becomes stale "
            f"{self._stale_after_s:.0f} s after its last heartbeat")
      if holder and not waiting and on_wait is not None:
        on_wait(holder)
      waiting = waiting or bool(holder)
      time.sleep(poll_s if holder else 0.05)
    self._stop.clear()
    self._thread = threading.Thread(target=self._beat, name="ssldml-lock-heartbeat",
                                    daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    warned = False
    while not self._stop.wait(self._heartbeat_s):
      holder = self.holder()
      if holder is not None and holder.get("token") == self._me["token"]:
        with contextlib.suppress(OSError):
          os.utime(self.path)
      elif holder and not warned:
        print(f"warning: the lock of {self.what} was taken over by {describe(holder)}",
              file=sys.stderr, flush=True)
        warned = True

  def release(self) -> None:
    """Stops the heartbeat and removes the lock file if it is still this holder's."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    holder = self.holder()
    if holder and holder.get("token") == self._me["token"]:
      with contextlib.suppress(FileNotFoundError):
        os.remove(self.path)

  def __enter__(self) -> "HolderLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
