"""The ``probe`` config section, shared by ``configs/{probe,quickstart,paper}.py``.

``validate`` checks every key the probe trainer reads and names the key in its one-line error.
The probe reads, of the whole config, ``PROBE_KEYS``: its stage of the main job is that
projection (``probe_stage_config``) plus the encoder it probes and the row name.
"""

from __future__ import annotations

from typing import Optional

import ml_collections
from ml_collections import config_dict

from ssldml_jax import cli, models, task
from ssldml_jax.eval import targets

HEADS = ("linear", "mlp", "finetune")
# The metrics compared between subgroups (DeLong for AUROC, a bootstrap otherwise), per target.
DEFAULT_TEST_METRICS = {"binary": ("auroc",), "regression": ("rmse",)}


# What the probe reads of the main job's config (besides its own entry keys).
PROBE_KEYS = ("seed", "data", "model", "task.pcwp_threshold", "probe")


def add_probe_section(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds the ``probe`` section (paper settings) to a base config."""
  p = c.probe = ml_collections.ConfigDict()
  # binary: mPCWP > task.pcwp_threshold; regression: mPCWP; any dataset feature as
  # [NAME=]FEATURE:KIND[>THRESHOLD] (ssldml_jax.eval.targets), e.g. diagnostic_superclass:multilabel
  p.targets = targets.DEFAULT_SPECS
  p.heads = HEADS                     # linear (logistic / ridge), mlp, finetune
  p.primary_head = "linear"           # the head of the main, subgroup tables and predictions
  p.fractions = (0.01, 0.1, 1.0)      # of training PATIENTS
  # A fixed number of labeled ECGs (the paper's 'n=1000' setting); None: off.
  p.limited_n = config_dict.FieldReference(1000, field_type=int)
  p.fraction_heads = ("linear", "mlp")  # heads also run below 100% (the others at 100% only)
  p.seeds = (0, 1, 2)                 # label-subset draw and head initialisation
  p.threshold_criterion = "f1"        # f1 | youden, maximised on the validation split
  # Model selection below 100% of labels: 'fraction' (the row's share of validation patients,
  # at least subsets.MIN_VALIDATION_PATIENTS) or 'full' (the whole validation split).
  p.limited_validation = "fraction"
  p.n_bootstrap = 1000                # patient resamples per 95% confidence interval / test
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
  f.seeds = (0,)
  f.dropout = 0.3                     # the head's (the encoder keeps config.model.dropout)
  return c


def add_entry_keys(c: ml_collections.ConfigDict, *, name: str = "",
                   encoder_workdir: Optional[str] = None,
                   random_baseline: bool = False) -> ml_collections.ConfigDict:
  """The keys of one probe run: the encoder, the row name, its label rows, the splits to export,
  and whether ``python -m ssldml_jax.probe`` also probes a random encoder of the same
  architecture."""
  with c.unlocked():
    c.encoder_workdir = config_dict.placeholder(str)  # None: a randomly initialised encoder.
    c.encoder_workdir = encoder_workdir
    c.export_splits = ""    # comma-separated splits to export as .npz (ssldml_jax.eval.embed)
    c.probe.name = name     # row label in the tables; "": the encoder workdir's name
    c.probe.rows = ()       # label rows to fit ('1%', '100%', 'n=1000'); (): every row
    # Also probe an untrained encoder of the pretrained one's architecture and input rate, in
    # <workdir>/random/, and put its row in the same tables (python -m ssldml_jax.probe).
    c.random_baseline = random_baseline
  return c


def probe_stage_config(config: ml_collections.ConfigDict, name: str,
                       encoder_workdir: Optional[str]) -> ml_collections.ConfigDict:
  """The main job's probe of method ``name``: what the probe reads of ``config``."""
  from ssldml_jax import methods

  return add_entry_keys(methods.project(config, PROBE_KEYS), name=name,
                        encoder_workdir=encoder_workdir)


def probe_job_config(arg: Optional[str]) -> ml_collections.ConfigDict:
  """The whole config of a probe job (every section and ``probe``): the paper's settings, or
  with ``arg == "tiny"`` a run of seconds on ``ecg_synth/tiny``. ``configs/probe*.py`` start
  here."""
  from ssldml_jax import config_defaults

  words = cli.parse_words(arg, ("tiny",))
  c = add_probe_section(config_defaults.base_config())
  if "tiny" in words:
    config_defaults.apply_tiny(c)
    apply_tiny_probe(c)
  return c


def apply_tiny_probe(c: ml_collections.ConfigDict) -> None:
  """A probe that finishes in seconds on ``ecg_synth/tiny`` (tests)."""
  p = c.probe
  p.limited_n = 40
  p.seeds = (0,)
  p.n_bootstrap = 50
  p.mlp.hidden_dim = 16
  p.mlp.batch_size = 16
  p.mlp.max_steps = 100
  p.mlp.eval_every_steps = 20
  p.mlp.patience = 2
  p.finetune.per_device_batch_size = 2
  p.finetune.max_steps = 4
  p.finetune.eval_every_steps = 2
  p.finetune.patience = 1


def validate(c: ml_collections.ConfigDict) -> None:
  """Checks every probe key; raises ``cli.ConfigError`` naming the first bad one."""
  from ssldml_jax.data import pipeline
  from ssldml_jax.eval import metrics, subsets

  pipeline.validate(c)
  models.validate(c)
  cli.check_int(c, "seed", 0)
  task.validate_threshold(c)
  specs = cli.check_words(c, "probe.targets", None)
  try:
    targets.parse_all(specs, float(c.task.pcwp_threshold))
  except ValueError as e:
    raise cli.ConfigError(f"config.probe.targets: {e}") from None
  heads = cli.check_words(c, "probe.heads", HEADS)
  cli.check_choice(c, "probe.primary_head", heads)
  cli.check_words(c, "probe.fraction_heads", heads, nonempty=False)
  fractions = tuple(cli.get_path(c, "probe.fractions"))
  if not fractions or not all(isinstance(f, (int, float)) and 0 < f <= 1 for f in fractions) \
      or 1.0 not in fractions:
    raise cli.ConfigError(f"config.probe.fractions={fractions!r} must be numbers in (0, 1] that "
                          "include 1.0")
  cli.check_int(c, "probe.limited_n", 1, allow_none=True)
  seeds = tuple(cli.get_path(c, "probe.seeds"))
  if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds) or \
      len(set(seeds)) != len(seeds):
    raise cli.ConfigError(f"config.probe.seeds={seeds!r} must be distinct integers >= 0")
  cli.check_choice(c, "probe.threshold_criterion", ("f1", "youden"))
  cli.check_choice(c, "probe.limited_validation", subsets.VALIDATION_CHOICES)
  cli.check_int(c, "probe.n_bootstrap", 1)
  cli.check_words(c, "probe.binary_test_metrics", metrics.CLASSIFICATION_METRICS,
                  nonempty=False)
  cli.check_words(c, "probe.regression_test_metrics", metrics.REGRESSION_METRICS, nonempty=False)
  for section in ("mlp", "finetune"):
    cli.check_range(c, f"probe.{section}.learning_rate", low=0.0, positive=True)
    cli.check_range(c, f"probe.{section}.weight_decay", low=0.0)
    for key in ("max_steps", "eval_every_steps", "patience"):
      cli.check_int(c, f"probe.{section}.{key}", 1)
  cli.check_int(c, "probe.mlp.hidden_dim", 1)
  cli.check_int(c, "probe.mlp.batch_size", 1)
  for section in ("mlp", "finetune"):
    cli.check_range(c, f"probe.{section}.dropout", low=0.0, high=0.99)
  cli.check_int(c, "probe.finetune.per_device_batch_size", 1)
  ft_seeds = tuple(cli.get_path(c, "probe.finetune.seeds"))
  if not ft_seeds or not all(isinstance(s, int) and s >= 0 for s in ft_seeds):
    raise cli.ConfigError(f"config.probe.finetune.seeds={ft_seeds!r} must be integers >= 0")
  encoder_workdir = cli.get_path(c, "encoder_workdir")
  if encoder_workdir is not None and not isinstance(encoder_workdir, str):
    raise cli.ConfigError(f"config.encoder_workdir={encoder_workdir!r} must be a directory or "
                          "None (a randomly initialised encoder)")
  cli.check_words(c, "probe.rows", subsets.row_names(c), nonempty=False)
  if not isinstance(cli.get_path(c, "probe.name"), str):
    raise cli.ConfigError(f"config.probe.name={c.probe.name!r} must be text (the row label)")
  cli.check_choice(c, "random_baseline", (True, False))
  if not isinstance(cli.get_path(c, "export_splits"), str):
    raise cli.ConfigError(f"config.export_splits={c.export_splits!r} must be a comma-separated "
                          "string of split names, e.g. 'unlabeled,test'")


def split_list(text: str) -> list[str]:
  """``"unlabeled, test"`` -> ``['unlabeled', 'test']``."""
  return [s.strip() for s in (text or "").split(",") if s.strip()]
