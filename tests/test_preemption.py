"""Preemption notices: recorded for the training loop, or raised at once; handlers restored."""

import os
import signal

import pytest

from ssldml_jax import cli, preemption


def _notice():
  os.kill(os.getpid(), signal.SIGTERM)  # Handled before the next line of Python runs.


def test_a_notice_is_recorded_for_the_loop():
  before = signal.getsignal(signal.SIGTERM)
  with preemption.notice() as notice:
    assert not notice.requested()
    _notice()
    assert notice.requested()
  assert signal.getsignal(signal.SIGTERM) is before


def test_stages_with_nothing_to_save_stop_at_once_and_a_loop_inside_saves_first():
  reached = []
  with pytest.raises(preemption.Preempted, match=r"preemption notice \(SIGTERM\)") as caught:
    with preemption.notice(interrupt=True):
      with preemption.notice() as loop:  # A pretraining inside the main job.
        _notice()
        reached.append("the loop goes on to save")
        assert loop.requested()
      _notice()
      reached.append("never")
  assert reached == ["the loop goes on to save"]
  assert caught.value.exit_status == 143 and isinstance(caught.value, cli.RunError)
