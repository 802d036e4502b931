"""What the pretrain configs (``configs/{ssl_dml_*,supervised*,simclr,clocs_cmsc}.py``) share.

A config file names its method and calls ``pretrain_config``; the ``:arg`` after the file name is a
comma-separated list of words: ``tiny`` (a CPU-sized run for tests and quick checks), ``binary`` or
``regression`` (the supervised target). Kept free of JAX so that loading a config stays cheap.
"""

from __future__ import annotations

from typing import Iterable, Optional

import ml_collections

from ssldml_jax import cli, config_defaults

ARG_WORDS = ("tiny", "binary", "regression")
LABELED_METHODS = ("supervised_dml", "supervised")


def parse_arg(arg: Optional[str], allowed: Iterable[str] = ARG_WORDS) -> set[str]:
  """``"tiny,regression"`` -> ``{"tiny", "regression"}``; an unknown word is a one-line error."""
  words = {w.strip() for w in (arg or "").split(",") if w.strip()}
  allowed = tuple(allowed)
  unknown = sorted(words - set(allowed))
  if unknown:
    raise cli.ConfigError(f"unknown config argument(s) {', '.join(map(repr, unknown))}; the words "
                     f"allowed after ':' are {', '.join(map(repr, allowed))}")
  if {"binary", "regression"} <= words:
    raise cli.ConfigError("config argument: choose one of 'binary' and 'regression', not both")
  return words


def pretrain_config(method: str, arg: Optional[str]) -> ml_collections.ConfigDict:
  """The paper's settings for ``method`` (SPEC section 5), shrunk when ``arg`` says ``tiny``."""
  allowed = ARG_WORDS if method in LABELED_METHODS else ("tiny",)
  words = parse_arg(arg, allowed)
  c = config_defaults.base_config()
  c.method = method
  if method in LABELED_METHODS:
    # Supervised methods see only the labeled cohort's training patients.
    c.data.train_split = "train"
    c.task.target = "regression" if "regression" in words else "binary"
  if "tiny" in words:
    apply_tiny(c)
  return c


def apply_tiny(c: ml_collections.ConfigDict) -> None:
  """A run that compiles and takes a few dozen steps on two CPU cores in well under a minute:
  a narrow one-block-per-stage ResNet on 10 s ECGs at 50 Hz from ``ecg_synth/tiny``."""
  c.data.name = config_defaults.TINY_DATASET
  c.data.sampling_rate = 50
  c.data.per_device_batch_size = 16   # Mining wants a batch; tests with 8 devices use 4.
  c.data.eval_per_device_batch_size = 16
  c.model.width = 8
  c.model.stage_sizes = (1, 1, 1, 1)
  c.model.stem_kernel = 7
  c.model.kernel_size = 5
  c.model.embedding_dim = 16
  c.model.dropout = 0.1
  c.optim.learning_rate = 1e-3
  c.train.num_steps = 30
  c.train.log_every_steps = 5
  c.train.checkpoint_every_steps = 10
  c.train.keep_checkpoints = 2
  c.train.eval_batches = 2
