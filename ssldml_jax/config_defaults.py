"""The one config schema: every key any stage reads, with the paper's settings (SPEC section 5).

``base_config()`` is the union of what the stages read: the shared sections (``seed``, ``data``,
``model``, ``optim``, ``train``), the sections of the methods (``mining``, ``loss``, ``task``,
``augment`` and each registered method's own section, e.g. ``vicreg``) and the probe's
(``probe``). A stage sees the projection of it that it reads (``ssldml_jax.methods.stage_config``,
``ssldml_jax.eval.probe_config.probe_stage_config``), so an override given to the main job
reaches every stage that reads that key, and a pretraining config file holds exactly the keys its
method reads. Each section is validated by the module that owns it:

==========  =================================================
section     validated by
==========  =================================================
data        ``ssldml_jax.data.pipeline.validate``
model       ``ssldml_jax.models.validate``
optim       ``ssldml_jax.steps.validate_optim``
train, seed ``ssldml_jax.train_lib.validate_train``
task        ``ssldml_jax.task.validate``
augment     ``ssldml_jax.augment.validate``
mining,     the methods that read them (``ssldml_jax.methods``)
loss, ...
probe       ``ssldml_jax.eval.probe_config.validate``
==========  =================================================
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

# Stable dataset spelled as TFDS does: name/builder_config.
DEFAULT_DATASET = "ecg_synth/default"
TINY_DATASET = "ecg_synth/tiny"
# What a pretraining always reads, whatever its method.
SHARED_SECTIONS = ("seed", "data", "model", "optim", "train")


def base_config() -> ml_collections.ConfigDict:
  """Every section but the probe's (``probe_config.add_probe_section``) and the main job's."""
  from ssldml_jax import methods  # The registry adds each method's own section.

  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = DEFAULT_DATASET
  c.data.data_dir = config_dict.placeholder(str)  # None: $SSLDML_DATA_DIR or ~/ssldml_data.
  c.data.pretrain_split = "unlabeled"  # what self-supervised methods train on
  c.data.train_split = "train"         # the labeled cohort: supervised training and probes
  c.data.validation_split = "validation"
  c.data.test_split = "test"
  c.data.sampling_rate = 250          # Hz the model sees; records are resampled if different.
  c.data.bandpass = config_dict.placeholder(tuple)  # e.g. (0.5, 40.0) Hz; None: off.
  c.data.per_device_batch_size = 64
  c.data.eval_per_device_batch_size = 64
  c.data.shuffle = True
  c.data.num_workers = 0              # grain worker processes; 0 reads in the main process.
  c.data.prefetch = 2                 # batches prepared ahead in a background thread.
  c.data.build_if_missing = True

  c.model = ml_collections.ConfigDict()
  c.model.name = "resnet18"           # resnet18 | resnet34
  c.model.width = 64                  # channels of the first stage; doubled per stage.
  c.model.stage_sizes = config_dict.placeholder(tuple)  # None: the named model's.
  c.model.stem_kernel = 15
  c.model.kernel_size = 7
  c.model.dropout = 0.2
  c.model.embedding_dim = 128
  c.model.dtype = "float32"           # compute dtype: float32 | bfloat16 (params stay float32).

  # Metric learning (ssl_dml_*, supervised_dml*): how triplets are mined.
  c.mining = ml_collections.ConfigDict()
  c.mining.dtw_window = config_dict.placeholder(int)  # Sakoe-Chiba band in samples; None: full.
  c.mining.decimate = 5               # mine on signals decimated by this factor (250 -> 50 Hz).
  c.mining.dtw_impl = "auto"          # auto | xla | pallas (auto: the Pallas kernel on GPU).
  c.mining.neg_topk = config_dict.placeholder(int)    # None: negative uniform over the others.
  c.mining.embedding_distance = "euclidean"  # euclidean | squared_euclidean | cosine

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "triplet"             # metric loss of the DML methods: triplet | margin | angular
  c.loss.margin = 0.2
  c.loss.alpha = 3.0                  # supervised DML: alpha * metric loss + task loss.
  c.loss.temperature = 0.1            # SimCLR / CLOCS.

  # The labeled target: mPCWP in mmHg, "elevated" above the threshold.
  c.task = ml_collections.ConfigDict()
  c.task.pcwp_threshold = 18.0
  # Regression targets are standardised as (mPCWP - mean) / std: a cath cohort's typical values,
  # fixed rather than estimated so that a run's loss scale does not depend on its data.
  c.task.pcwp_mean = 16.0
  c.task.pcwp_std = 8.0

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"
  c.optim.learning_rate = 1e-4
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "constant"       # constant | cosine
  c.optim.warmup_steps = 0
  c.optim.grad_clip_norm = config_dict.placeholder(float)

  # View augmentations of SimCLR and VICReg (ssldml_jax/augment.py); a zero turns one off.
  c.augment = ml_collections.ConfigDict()
  c.augment.noise_std = 0.05          # mV
  c.augment.scale_min = 0.8           # per-ECG gain, log-uniform in [scale_min, scale_max]
  c.augment.scale_max = 1.25
  c.augment.time_mask_fraction = 0.1  # longest zeroed window, as a fraction of the signal
  c.augment.wander_mv = 0.1           # baseline wander amplitude per lead
  c.augment.wander_max_hz = 0.5
  c.augment.lead_dropout = 0.1        # probability that a lead is zeroed

  c.train = ml_collections.ConfigDict()
  c.train.num_epochs = 100
  c.train.num_steps = config_dict.placeholder(int)  # overrides num_epochs when set.
  c.train.log_every_steps = 50
  c.train.checkpoint_every_steps = 1000
  c.train.keep_checkpoints = 3
  c.train.max_consecutive_nonfinite = 5
  c.train.parallel = "pmap"           # pmap | shard_map
  c.train.progress_bar = True
  c.train.eval_every_steps = config_dict.placeholder(int)  # validation loss; None: at the end only.
  c.train.eval_batches = 8            # batches of data.validation_split per evaluation.
  c.train.async_checkpoints = True    # write checkpoints in the background.

  for name, section in methods.config_sections().items():
    c[name] = section
  return c


def apply_tiny(c: ml_collections.ConfigDict) -> None:
  """A run that compiles and takes a few dozen steps on two CPU cores in well under a minute:
  a narrow one-block-per-stage ResNet on 10 s ECGs at 50 Hz from ``ecg_synth/tiny``."""
  c.data.name = TINY_DATASET
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
