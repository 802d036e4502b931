"""Lock files: one holder at a time, named when refused; stale locks are taken over, once."""

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time

import pytest

from ssldml_jax import locks


def _dead_pid() -> int:
  """The pid of a process that has exited (and was reaped)."""
  done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  return int(done.stdout)


def _plant(path, *, host: str, pid: int, start=None, age_s: float = 0.0) -> dict:
  """A lock file as another holder would have left it, its heartbeat ``age_s`` old."""
  holder = {"host": host, "pid": pid, "start": start, "command": "pretrain.py --workdir=w",
            "token": "theirs", "since": time.time() - age_s}
  with open(path, "w") as f:
    json.dump(holder, f)
  os.utime(path, (time.time() - age_s,) * 2)
  return holder


def test_a_live_holder_is_named_and_the_lock_is_released(tmp_path):
  path = str(tmp_path / "lock.json")
  first = locks.HolderLock(path, "workdir w")
  first.acquire()
  second = locks.HolderLock(path, "workdir w")
  with pytest.raises(locks.LockHeld) as caught:
    second.acquire()
  message = str(caught.value)
  assert message.startswith(f"workdir w is in use by host {socket.gethostname()} "
                            f"pid {os.getpid()} since ")
  assert f"lock file {path}" in message and "\n" not in message
  first.release()
  assert not os.path.exists(path)
  second.acquire()  # Free again.
  second.release()


def test_a_killed_holder_is_taken_over_with_a_message(tmp_path, capsys):
  path = str(tmp_path / "lock.json")
  _plant(path, host=socket.gethostname(), pid=_dead_pid())
  with locks.HolderLock(path, "workdir w") as lock:
    assert json.load(open(path))["token"] == lock._me["token"]
  err = capsys.readouterr().err
  assert "taking over the lock of workdir w from host" in err and "is gone" in err


def test_a_reused_pid_is_not_the_holder(tmp_path):
  # This process's pid, but another start time: the holder died and its pid was given again.
  path = str(tmp_path / "lock.json")
  _plant(path, host=socket.gethostname(), pid=os.getpid(), start="1")
  with locks.HolderLock(path, "workdir w"):
    pass
  _plant(path, host=socket.gethostname(), pid=os.getpid(), start=locks._process_start(os.getpid()))
  with pytest.raises(locks.LockHeld):
    locks.HolderLock(path, "workdir w").acquire()


def test_another_hosts_holder_is_stale_only_without_heartbeat(tmp_path, capsys):
  path = str(tmp_path / "lock.json")
  _plant(path, host="elsewhere", pid=1, age_s=10)  # Its pid cannot be checked from here.
  with pytest.raises(locks.LockHeld, match="host elsewhere pid 1 .*last heartbeat 10 s ago"):
    locks.HolderLock(path, "workdir w", stale_after_s=60).acquire()
  _plant(path, host="elsewhere", pid=1, age_s=61)
  with locks.HolderLock(path, "workdir w", stale_after_s=60):
    pass
  assert "no heartbeat for 61 s" in capsys.readouterr().err


def test_the_heartbeat_keeps_a_lock_fresh(tmp_path):
  path = str(tmp_path / "lock.json")
  lock = locks.HolderLock(path, "workdir w", heartbeat_s=0.05)
  lock.acquire()
  try:
    os.utime(path, (time.time() - 100,) * 2)
    time.sleep(0.3)
    assert time.time() - os.path.getmtime(path) < 5
    # Seen from another host, it is live.
    other = locks.HolderLock(path, "workdir w", stale_after_s=5)
    other._me["host"] = "elsewhere"
    with pytest.raises(locks.LockHeld):
      other.acquire()
  finally:
    lock.release()


def test_release_leaves_another_holders_lock(tmp_path):
  path = str(tmp_path / "lock.json")
  lock = locks.HolderLock(path, "workdir w")
  lock.acquire()
  lock._stop.set()
  holder = _plant(path, host="elsewhere", pid=1)  # Taken over meanwhile (its heartbeat stopped).
  lock.release()
  assert json.load(open(path)) == holder


def test_waiting_for_a_holder_that_finishes(tmp_path):
  path = str(tmp_path / "lock.json")
  holder = locks.HolderLock(path, "dataset d", doing="being built")
  holder.acquire()
  seen = []
  waiter = locks.HolderLock(path, "dataset d", doing="being built")
  with pytest.raises(locks.LockHeld, match=r"dataset d is being built by .*waited 0 s"):
    waiter.acquire(wait_s=0.3, poll_s=0.05, on_wait=seen.append)
  assert len(seen) == 1 and seen[0]["pid"] == os.getpid()
  start = time.monotonic()
  timer = __import__("threading").Timer(0.3, holder.release)
  timer.start()
  waiter.acquire(wait_s=10, poll_s=0.05)
  assert 0.2 < time.monotonic() - start < 5
  waiter.release()


def _slow_judge(judge):
  def slow(self, holder):
    reason = judge(self, holder)
    time.sleep(0.2)  # Every process finds the lock stale before any of them acts on it.
    return reason
  return slow


def _contend(path: str, barrier, results, done) -> None:
  """One of several processes that find the same stale lock (in a fresh interpreter)."""
  locks.HolderLock.stale_reason = _slow_judge(locks.HolderLock.stale_reason)
  barrier.wait()
  lock = locks.HolderLock(path, "workdir w")
  try:
    lock.acquire()
  except locks.LockHeld:
    results.put("refused")
    return
  results.put("took")
  done.wait(60)  # Hold it until every other process has tried.
  lock.release()


def test_only_one_of_several_processes_takes_a_stale_lock(tmp_path):
  path = str(tmp_path / "lock.json")
  # Fresh interpreters: forking this process, whose JAX runs threads, could deadlock.
  context = multiprocessing.get_context("spawn")
  for _ in range(2):
    _plant(path, host=socket.gethostname(), pid=_dead_pid())
    barrier, results, done = context.Barrier(4), context.Queue(), context.Event()
    workers = [context.Process(target=_contend, args=(path, barrier, results, done))
               for _ in range(4)]
    for w in workers:
      w.start()
    try:
      outcomes = sorted(results.get(timeout=120) for _ in workers)
    finally:
      done.set()
      for w in workers:
        w.join(60)
    assert outcomes == ["refused"] * 3 + ["took"], outcomes
    assert not os.path.exists(path) and not os.path.exists(path + ".takeover")
