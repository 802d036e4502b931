"""The ``probe`` config section, shared by ``configs/{probe,quickstart,paper}.py``.

Kept free of JAX, like ``pretrain_configs``, so that loading a config stays cheap. ``validate``
checks every key the probe trainer reads and names the key in its one-line error.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from ssldml_jax import cli

TARGETS = ("binary", "regression")
HEADS = ("linear", "mlp", "finetune")
# The metrics compared between subgroups by the permutation test, per target.
DEFAULT_TEST_METRICS = {"binary": ("auroc",), "regression": ("rmse",)}


def add_probe_section(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds ``encoder_workdir``, ``export_splits`` and ``probe`` (paper settings) to a base config."""
  c.encoder_workdir = config_dict.placeholder(str)  # None: a randomly initialised encoder.
  c.export_splits = ""    # comma-separated splits to export as .npz (ssldml_jax.eval.embed)

  p = c.probe = ml_collections.ConfigDict()
  p.name = ""                         # row label in the tables; "": the encoder workdir's name
  p.train_split = "train"
  p.validation_split = "validation"
  p.test_split = "test"
  p.targets = TARGETS                 # binary: mPCWP > task.pcwp_threshold; regression: mPCWP
  p.heads = HEADS                     # linear (logistic / ridge), mlp, finetune
  p.primary_head = "linear"           # the head of the main, subgroup tables and predictions
  p.fractions = (0.01, 0.1, 1.0)      # of training PATIENTS
  # A fixed number of labeled ECGs (the paper's 'n=1000' setting); None: off.
  p.limited_n = config_dict.FieldReference(1000, field_type=int)
  p.fraction_heads = ("linear", "mlp")  # heads also run below 100% (the others at 100% only)
  p.seeds = (0, 1, 2)                 # label-subset draw and head initialisation
  p.threshold_criterion = "f1"        # f1 | youden, maximised on the validation split
  p.n_bootstrap = 1000                # patient resamples per 95% confidence interval
  p.n_permutations = 1000             # patient-label shuffles per subgroup test
  p.binary_test_metrics = DEFAULT_TEST_METRICS["binary"]
  p.regression_test_metrics = DEFAULT_TEST_METRICS["regression"]

  # The paper's MLP head on frozen, standardised embeddings.
  m = p.mlp = ml_collections.ConfigDict()
  m.hidden_dim = 128
  m.dropout = 0.3
  m.learning_rate = 1e-3
  m.weight_decay = 1e-4
  m.batch_size = 64
  m.max_steps = 3000
  m.eval_every_steps = 50             # one validation pass (and one compiled call) per this many
  m.patience = 10                     # validation passes without improvement before stopping

  # Full fine-tuning of encoder and head on the raw ECGs (pmapped, BatchNorm over devices).
  f = p.finetune = ml_collections.ConfigDict()
  f.learning_rate = 1e-4
  f.weight_decay = 1e-4
  f.per_device_batch_size = 64
  f.max_steps = 2000
  f.eval_every_steps = 100
  f.patience = 5
  f.dropout = 0.3                     # the head's (the encoder keeps config.model.dropout)
  f.seeds = (0,)
  return c


def apply_tiny_probe(c: ml_collections.ConfigDict) -> None:
  """A probe that finishes in seconds on ``ecg_synth/tiny`` (tests)."""
  p = c.probe
  p.limited_n = 40
  p.seeds = (0,)
  p.n_bootstrap = 50
  p.n_permutations = 50
  p.mlp.hidden_dim = 16
  p.mlp.batch_size = 16
  p.mlp.max_steps = 100
  p.mlp.eval_every_steps = 20
  p.mlp.patience = 2
  p.finetune.per_device_batch_size = 2
  p.finetune.max_steps = 4
  p.finetune.eval_every_steps = 2
  p.finetune.patience = 1


def _check_int(c: ml_collections.ConfigDict, key: str, low: int, allow_none: bool = False) -> None:
  value = cli.get_path(c, key)
  if value is None and allow_none:
    return
  if not isinstance(value, int) or isinstance(value, bool) or value < low:
    raise cli.ConfigError(f"config.{key}={value!r} must be an integer >= {low}"
                          + (" or None" if allow_none else ""))


def _check_subset(c: ml_collections.ConfigDict, key: str, allowed, nonempty: bool = True) -> tuple:
  """Also accepts ``--config.probe.heads=linear,mlp`` (stored back as a tuple of words)."""
  value = cli.get_path(c, key)
  if isinstance(value, str):
    value = (value,)
  value = tuple(w.strip() for v in (value or ()) for w in str(v).split(",") if w.strip())
  section, _, leaf = key.rpartition(".")
  node = cli.get_path(c, section) if section else c
  node[leaf] = value
  bad = [v for v in value if v not in allowed]
  if bad or (nonempty and not value) or len(set(value)) != len(value):
    raise cli.ConfigError(f"config.{key}={value!r} must be a tuple of distinct values from "
                          + ", ".join(repr(a) for a in allowed))
  return value


def validate(c: ml_collections.ConfigDict) -> None:
  """Checks every probe key; raises ``cli.ConfigError`` naming the first bad one."""
  from ssldml_jax.eval import metrics  # NumPy only; imported here to keep configs light.

  p = c.probe
  for key in ("train_split", "validation_split", "test_split"):
    if not isinstance(p[key], str) or not p[key]:
      raise cli.ConfigError(f"config.probe.{key}={p[key]!r} must be a split name")
  _check_subset(c, "probe.targets", TARGETS)
  heads = _check_subset(c, "probe.heads", HEADS)
  cli.check_choice(c, "probe.primary_head", heads)
  _check_subset(c, "probe.fraction_heads", heads, nonempty=False)
  fractions = tuple(p.fractions)
  if not fractions or not all(isinstance(f, (int, float)) and 0 < f <= 1 for f in fractions) \
      or 1.0 not in fractions:
    raise cli.ConfigError(f"config.probe.fractions={fractions!r} must be numbers in (0, 1] that "
                          "include 1.0")
  _check_int(c, "probe.limited_n", 1, allow_none=True)
  seeds = tuple(p.seeds)
  if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds) or \
      len(set(seeds)) != len(seeds):
    raise cli.ConfigError(f"config.probe.seeds={seeds!r} must be distinct integers >= 0")
  cli.check_choice(c, "probe.threshold_criterion", ("f1", "youden"))
  _check_int(c, "probe.n_bootstrap", 1)
  _check_int(c, "probe.n_permutations", 1)
  _check_subset(c, "probe.binary_test_metrics", metrics.CLASSIFICATION_METRICS, nonempty=False)
  _check_subset(c, "probe.regression_test_metrics", metrics.REGRESSION_METRICS, nonempty=False)
  cli.check_range(c, "task.pcwp_threshold", low=0.0, high=70.0)
  for section in ("mlp", "finetune"):
    for key in ("learning_rate",):
      if not cli.check_range(c, f"probe.{section}.{key}", low=0.0) > 0:
        raise cli.ConfigError(f"config.probe.{section}.{key} must be positive")
    cli.check_range(c, f"probe.{section}.weight_decay", low=0.0)
    for key in ("max_steps", "eval_every_steps", "patience"):
      _check_int(c, f"probe.{section}.{key}", 1)
  _check_int(c, "probe.mlp.hidden_dim", 1)
  _check_int(c, "probe.mlp.batch_size", 1)
  for section in ("mlp", "finetune"):
    cli.check_range(c, f"probe.{section}.dropout", low=0.0, high=0.99)
  _check_int(c, "probe.finetune.per_device_batch_size", 1)
  ft_seeds = tuple(p.finetune.seeds)
  if not ft_seeds or not all(isinstance(s, int) and s >= 0 for s in ft_seeds):
    raise cli.ConfigError(f"config.probe.finetune.seeds={ft_seeds!r} must be integers >= 0")
  if c.encoder_workdir is not None and not isinstance(c.encoder_workdir, str):
    raise cli.ConfigError(f"config.encoder_workdir={c.encoder_workdir!r} must be a directory or "
                          "None (a randomly initialised encoder)")
  if not isinstance(c.export_splits, str):
    raise cli.ConfigError(f"config.export_splits={c.export_splits!r} must be a comma-separated "
                          "string of split names, e.g. 'unlabeled,test'")


def split_list(text: str) -> list[str]:
  """``"unlabeled, test"`` -> ``['unlabeled', 'test']``."""
  return [s.strip() for s in (text or "").split(",") if s.strip()]
