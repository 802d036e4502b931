"""The defaults every ``configs/*.py`` starts from (paper settings, SPEC section 5).

A config file calls ``base_config()`` and changes what its experiment needs, so every key that a
program reads exists in every config and ``--config.key=value`` works everywhere.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

# Stable dataset spelled as TFDS does: name/builder_config.
DEFAULT_DATASET = "ecg_synth/default"
TINY_DATASET = "ecg_synth/tiny"


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = "ssl_dml"

  c.data = ml_collections.ConfigDict()
  c.data.name = DEFAULT_DATASET
  c.data.data_dir = config_dict.placeholder(str)  # None: $SSLDML_DATA_DIR or ~/ssldml_data.
  c.data.train_split = "unlabeled"
  c.data.eval_splits = ("validation", "test")
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

  c.mining = ml_collections.ConfigDict()
  c.mining.raw_distance = "dtw"       # dtw | euclidean (SSL-DML only)
  c.mining.dtw_window = config_dict.placeholder(int)  # Sakoe-Chiba band in samples; None: full.
  c.mining.decimate = 5               # mine on signals decimated by this factor (250 -> 50 Hz).
  c.mining.dtw_impl = "auto"          # auto | xla | pallas (auto: the Pallas kernel on GPU).
  c.mining.neg_topk = config_dict.placeholder(int)    # None: negative uniform over the others.
  c.mining.embedding_distance = "euclidean"  # euclidean | squared_euclidean | cosine

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "triplet"
  c.loss.margin = 0.2
  c.loss.alpha = 3.0                  # supervised DML: alpha * metric loss + task loss.
  c.loss.temperature = 0.1            # SimCLR / CLOCS.

  c.task = ml_collections.ConfigDict()
  c.task.target = "binary"            # binary (mPCWP > threshold) | regression (mPCWP)
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

  # SimCLR / CLOCS view augmentations (ssldml_jax/augment.py); a zero turns one off.
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
  c.train.eval_batches = 8            # batches of the first eval split per evaluation.
  c.train.async_checkpoints = True    # write checkpoints in the background.
  return c
