"""Preemption notices: SIGTERM asks a run to save its state and stop.

Schedulers and cloud VMs announce a preemption with SIGTERM and kill the process after a grace
period (SLURM's KillWait, 30 s by default; about 30 s on preemptible TPU and GPU VMs).
``notice()`` handles SIGTERM for a block of code: the training loop asks ``requested()`` after
each step, saves a checkpoint and raises ``Preempted``; the entry point prints its message as one
line and exits with status 143 (128 + SIGTERM, as if SIGTERM had ended the process), and the same
command started again resumes from that checkpoint. Stages with nothing to save use
``notice(interrupt=True)``, which raises ``Preempted`` at once: their outputs are written
atomically, and leaving through an exception releases the workdir's lock.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from ssldml_jax import cli


class Preempted(cli.RunError):
  """The run stopped on a preemption notice (SIGTERM); the message says what was saved."""
  exit_status = 128 + signal.SIGTERM


class Notice:
  """Whether SIGTERM arrived while ``notice()`` was in force."""

  def __init__(self):
    self.received = False

  def requested(self) -> bool:
    """Whether any process received the notice.

    In a multi-process run this is a collective (every process must call it at the same step),
    so that all of them save the same step and stop together.
    """
    import jax

    if jax.process_count() == 1:
      return self.received
    from jax.experimental import multihost_utils
    import numpy as np

    return bool(np.max(multihost_utils.process_allgather(np.int32(self.received))))


@contextlib.contextmanager
def notice(interrupt: bool = False) -> Iterator[Notice]:
  """Handles SIGTERM in the block and restores the previous handler after it.

  ``interrupt=False`` records the notice (``Notice.requested``); ``interrupt=True`` raises
  ``Preempted`` where the main thread is. Outside the main thread, where Python cannot handle
  signals, nothing is installed and ``requested()`` stays False.
  """
  state = Notice()

  def handle(signum, frame):
    del signum, frame
    state.received = True
    if interrupt:
      raise Preempted("stopped on a preemption notice (SIGTERM); every finished stage is saved: "
                      "run the same command to go on")

  if threading.current_thread() is not threading.main_thread():
    yield state
    return
  previous = signal.signal(signal.SIGTERM, handle)
  try:
    yield state
  finally:
    signal.signal(signal.SIGTERM, previous)
