"""Training checkpoints with orbax: every N steps and at the end, keep K, resume from the newest.

A checkpoint holds two items: ``state`` (a pytree of host NumPy arrays: the train state and the
run's RNG key) and ``meta`` (JSON: the step, every process's input-iterator state, and whatever
else the trainer wants back). Arrays are copied to host memory before an asynchronous save starts,
so the trainer may donate its device buffers to the next step while orbax writes in the background.

Orbax writes a step into a temporary directory and renames it when complete, so a process killed
mid-save leaves no half-visible step; a step that is visible but unreadable (a disk error, a file
removed by hand) is moved aside to ``<workdir>/checkpoints_unreadable/`` with a message, and the
previous step is used instead. A step whose arrays do not match the model (the workdir of another
config) is refused with a message and left alone. A step that cannot be written for lack of space
never becomes visible either: the save raises ``atomic.DiskFullError`` with the space the step
needs, and the previous step stays the newest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import time
from typing import Any, Iterator, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from ssldml_jax import atomic, cli

CHECKPOINT_DIR = "checkpoints"
UNREADABLE_DIR = "checkpoints_unreadable"


class CheckpointError(RuntimeError):
  """A workdir's checkpoints cannot be used (none is readable, or they hold another model's
  arrays); the message names the directory and what to do."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def to_host(tree: Any) -> Any:
  """Copies every leaf to a host NumPy array (0-d arrays for scalars, as orbax requires)."""
  return jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(tree))


class _QuietNoSpace(logging.Filter):
  """Drops orbax's error records of a save that failed for lack of space (one traceback from
  each of its threads): ``Checkpoints`` reports that failure as one sentence."""

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return error is None or not atomic.is_no_space(error)


_QUIET_NO_SPACE = _QuietNoSpace()


class Checkpoints:
  """The checkpoints of one workdir: ``<workdir>/checkpoints/<step>/{state,meta}``."""

  def __init__(self, workdir: str, *, keep: Optional[int] = 3, async_save: bool = True,
               read_only: bool = False):
    """``read_only`` (for readers such as the probe trainer) never writes, cleans or moves."""
    self.workdir = os.path.abspath(workdir)
    self.directory = checkpoint_dir(workdir)
    self.read_only = read_only
    logging.getLogger("absl").addFilter(_QUIET_NO_SPACE)  # orbax logs through absl.
    self._options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep,
        create=not read_only,
        # Leftovers of a save interrupted by a kill are removed when the next run starts.
        cleanup_tmp_directories=not read_only,
        # Not orbax's read_only, which warns on every open: this class refuses to save instead.
        save_root_metadata=not read_only,
        enable_async_checkpointing=async_save)
    self._manager = self._open()
    # The save in flight (step, bytes, the newest step before it) and whether it failed: orbax
    # reports a failed background save at every later call, the first one is reported here.
    self._pending: Optional[tuple[int, int, Optional[int]]] = None
    self._failed = False

  def _open(self) -> ocp.CheckpointManager:
    # Handlers named up front, so that a fresh manager can read a step's metadata.
    return ocp.CheckpointManager(self.directory, options=self._options, item_handlers={
        "state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Starts saving ``state`` (any pytree of arrays) and the JSON-able ``meta`` at ``step``.

    Returns once the arrays are on the host; the files are written in the background
    (``wait()`` before relying on them). Saving a step that already exists is a no-op, so a
    final save right after a periodic one costs nothing.
    """
    if self.read_only:
      raise RuntimeError(f"{self.directory} was opened read-only")
    self.wait()
    if step in self._manager.all_steps():
      return
    meta = json.loads(json.dumps(dict(meta, step=int(step), saved_at=time.time())))
    host = to_host(state)
    previous = self.steps()
    self._pending = (int(step), sum(np.asarray(x).nbytes for x in jax.tree.leaves(host)),
                     previous[-1] if previous else None)
    with self._reporting():
      self._manager.save(step, force=True, args=ocp.args.Composite(
          state=ocp.args.StandardSave(host), meta=ocp.args.JsonSave(meta)))

  @contextlib.contextmanager
  def _reporting(self) -> Iterator[None]:
    """Turns a lack of space in the save in flight into a ``DiskFullError`` (reported once)."""
    try:
      yield
    except Exception as e:
      if self._failed:
        return
      if self._pending is None or not atomic.is_no_space(e):
        raise
      self._failed = True
      step, size, intact = self._pending
      raise atomic.disk_full(
          e, f"checkpoint step {step}", self.directory, needed=size,
          after=(f"the checkpoint of step {intact} is intact" if intact is not None
                 else "no checkpoint was kept") +
          "; free some space and run the same command to resume") from None

  def check_layout(self, step: int, target: Any) -> None:
    """Raises ``CheckpointError`` when ``step`` holds other arrays than ``target`` has (a run
    started with another model or optimiser on this workdir). Unreadable metadata passes: the
    restore reports it as damage."""
    try:
      meta = self._manager.item_metadata(step)["state"]
      saved = {jax.tree_util.keystr(path): (tuple(m.shape), np.dtype(m.dtype)) for path, m in
               jax.tree_util.tree_flatten_with_path(getattr(meta, "tree", meta))[0]}
    except Exception:  # pylint: disable=broad-except
      return
    if meta is None:
      return
    wanted = {jax.tree_util.keystr(path): (np.shape(x), np.asarray(x).dtype) for path, x in
              jax.tree_util.tree_flatten_with_path(target)[0]}
    if saved == wanted:
      return
    only_saved, only_wanted = sorted(set(saved) - set(wanted)), sorted(set(wanted) - set(saved))
    changed = sorted(k for k in set(saved) & set(wanted) if saved[k] != wanted[k])
    show = lambda layout: f"{layout[1]}{list(layout[0])}"  # noqa: E731
    if changed:
      what = f"{changed[0]} is {show(saved[changed[0]])} there, {show(wanted[changed[0]])} here"
    elif only_saved:
      what = f"it has {only_saved[0]}, this config does not"
    else:
      what = f"this config has {only_wanted[0]}, it does not"
    raise CheckpointError(
        f"checkpoint step {step} in {self.directory} was written with another model or "
        f"optimiser ({what}); resume with the config it was written with (config.json beside "
        "it), or use another workdir")

  def restore(self, step: int, target: Any) -> tuple[Any, dict]:
    """Reads one step into host arrays shaped like ``target``; raises on any problem."""
    target = to_host(target)
    self.check_layout(step, target)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    state = restored["state"]
    # A checkpoint of another model or config must not slip through a loose shape check.
    if jax.tree.structure(state) != jax.tree.structure(target):
      raise ValueError("its tree structure differs from the model's (another config?)")
    for want, got in zip(jax.tree.leaves(target), jax.tree.leaves(state)):
      if np.shape(want) != np.shape(got) or want.dtype != np.asarray(got).dtype:
        raise ValueError(f"it holds an array {np.shape(got)} {np.asarray(got).dtype} where the "
                         f"model has {np.shape(want)} {want.dtype} (another config?)")
    return state, dict(restored["meta"])

  def restore_latest(self, target: Any) -> Optional[tuple[int, Any, dict]]:
    """``(step, state, meta)`` of the newest readable step; ``None`` when there is no checkpoint.

    An unreadable step is moved aside with a one-line message and the one before it is tried
    (moving it keeps the next save from colliding with it). Raises ``CheckpointError`` when
    checkpoints exist but none can be read, rather than silently starting over on top of them.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    moved, last_error = False, None
    try:
      for step in steps:
        try:
          state, meta = self.restore(step, target)
        except CheckpointError:
          raise  # Not damage: the previous steps have the same layout.
        except Exception as e:  # Any other failure is damage; the remedy is the previous step.
          last_error = cli.error_line(e, 160)
          where = self._move_aside(step)
          moved = not self.read_only
          print(f"checkpoint step {step} in {self.directory} is unreadable ({last_error}); "
                f"{where}, falling back to the previous step", file=sys.stderr, flush=True)
          continue
        return step, state, meta
    finally:
      if moved:  # The manager caches the list of steps.
        self._manager.close()
        self._manager = self._open()
    if steps:
      raise CheckpointError(
          f"no readable checkpoint in {self.directory} (tried steps "
          f"{', '.join(map(str, steps))}; last error {last_error}); move the directory away "
          "to start over")
    return None

  def _move_aside(self, step: int) -> str:
    source = os.path.join(self.directory, str(step))
    target_root = os.path.join(self.workdir, UNREADABLE_DIR)
    target = os.path.join(target_root, f"{step}.{time.strftime('%Y%m%d-%H%M%S')}")
    if self.read_only:
      return "left it in place (read-only)"
    if jax.process_index() == 0 and os.path.exists(source):
      os.makedirs(target_root, exist_ok=True)
      shutil.move(source, target)
    return f"moved it to {target}"

  def wait(self) -> None:
    """Blocks until every started save is on disk; raises ``atomic.DiskFullError`` if one could
    not be written for lack of space."""
    with self._reporting():
      self._manager.wait_until_finished()

  def close(self) -> None:
    with self._reporting():
      self._manager.close()

  def __enter__(self) -> "Checkpoints":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def latest_readable_meta(workdir: str) -> Optional[dict]:
  """The ``meta`` JSON of the newest step, read without arrays (for tools that only report)."""
  root = checkpoint_dir(workdir)
  if not os.path.isdir(root):
    return None
  steps = sorted((int(d) for d in os.listdir(root) if d.isdigit()), reverse=True)
  for step in steps:
    path = os.path.join(root, str(step), "meta", "metadata")
    try:
      with open(path) as f:
        return json.load(f)
    except (OSError, ValueError):
      continue
  return None
