"""Where a training run reports: ``metrics.jsonl``, TensorBoard events, ``config.json``, progress.

Only process 0 writes or draws; the other processes get a writer that does nothing, so the loop
never asks which process it is. After a resume, lines and events of steps beyond the restored
step (written by the run that was killed) are dropped, so each step appears once.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping

import ml_collections

from ssldml_jax import atomic

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
TENSORBOARD_DIR = "tensorboard"


def write_config(workdir: str, config: ml_collections.ConfigDict) -> str:
  """Writes the resolved config as JSON beside the metrics; returns the path."""
  return atomic.write_text(os.path.join(workdir, CONFIG_FILE),
                           config.to_json_best_effort(indent=1, sort_keys=True) + "\n")


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: {workdir} is not a pretrain workdir")
  with open(path) as f:
    return ml_collections.ConfigDict(tuples(json.load(f)))


def tuples(node: Any) -> Any:
  """JSON has no tuples; configs use them for shapes and splits."""
  if isinstance(node, dict):
    return {k: tuples(v) for k, v in node.items()}
  if isinstance(node, list):
    return tuple(tuples(v) for v in node)
  return node


def read_metrics(workdir: str) -> list[dict]:
  """Every record of ``metrics.jsonl`` in order (empty when there is none)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _truncate_jsonl(path: str, last_step: int) -> None:
  """Drops the records of steps after ``last_step`` and any torn last line of a killed writer."""
  if not os.path.isfile(path):
    return
  kept = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if record.get("step", 0) <= last_step:
        kept.append(json.dumps(record) + "\n")
  atomic.write_text(path, "".join(kept))


class MetricsLog:
  """JSONL + TensorBoard scalars and a tqdm progress bar for one run.

  ``examples_per_step`` is the global batch, for the ECG/s figure. ``initial_step`` is the step
  the run (re)starts from.
  """

  def __init__(self, workdir: str, *, total_steps: int, initial_step: int = 0,
               examples_per_step: int = 1, progress_bar: bool = True, enabled: bool = True):
    self.enabled = enabled
    self._examples_per_step = examples_per_step
    self._bar = None
    self._tb = None
    self._file = None
    self._rate_mark = (time.perf_counter(), initial_step)
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, METRICS_FILE)
    _truncate_jsonl(path, initial_step)
    self._file = open(path, "a")
    try:
      from tensorboardX import SummaryWriter
    except ImportError:  # TensorBoard output is a convenience; the JSONL file is the record.
      print("tensorboardX is not installed: writing metrics.jsonl only", file=sys.stderr)
    else:
      # purge_step hides the events a killed run wrote after the step we resume from.
      self._tb = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR),
                               purge_step=initial_step + 1 if initial_step else None)
    if progress_bar:
      from tqdm import tqdm
      self._bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True,
                       file=sys.stderr, smoothing=0.1)

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    """One JSONL record ``{"step": step, **scalars}`` and one TensorBoard scalar per key."""
    if not self.enabled:
      return
    record = {"step": int(step)}
    for key, value in scalars.items():
      value = float(value)
      record[key] = value if math.isfinite(value) else str(value)  # JSON has no NaN.
    line = json.dumps(record) + "\n"
    try:
      self._file.write(line)
      self._file.flush()
    except OSError as e:
      if not atomic.is_no_space(e):
        raise
      raise atomic.disk_full(e, self._file.name, os.path.dirname(self._file.name),
                             needed=len(line)) from None
    if self._tb is not None:
      for key, value in scalars.items():
        self._tb.add_scalar(key, float(value), int(step))

  def progress(self, step: int) -> None:
    """Moves the bar to ``step`` and shows the rates measured since the last call."""
    if self._bar is None:
      return
    now = time.perf_counter()
    then, last = self._rate_mark
    if step > last and now > then:
      steps_per_s = (step - last) / (now - then)
      self._bar.set_postfix_str(
          f"{steps_per_s:.2f} steps/s, {steps_per_s * self._examples_per_step:.0f} ECG/s",
          refresh=False)
    self._rate_mark = (now, step)
    self._bar.update(step - self._bar.n)

  def message(self, text: str) -> None:
    """A line for the user that does not break the progress bar."""
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(text, file=sys.stderr)
    else:
      print(text, file=sys.stderr, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._file is not None:
      self._file.close()
      self._file = None
