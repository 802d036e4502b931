"""The main job at a laptop budget: every method, probed and compared, within 15 min on 2 cores.

    python -m ssldml_jax.reproduce --config=configs/quickstart.py --workdir=runs/quickstart
    python -m ssldml_jax.reproduce --config=configs/quickstart.py:tiny --workdir=runs/tiny

``ecg_synth/default`` (~8k unlabeled and ~3k labeled synthetic ECGs, built on first use) seen at
50 Hz by a narrow one-block-per-stage ResNet (width 16, embedding 64); 100 steps of batch 64 per
pretraining (Adam(W) 1e-3), DTW mining on the signals at 25 Hz; two pretraining seeds and two
probe seeds, so the supervised methods are pretrained 2 x (1 + 3 label rows x 2) = 14 times
each; logistic / ridge probes in every label row and MLP probes at 100% of labels (fine-tuning
is off here: add ``--config.probe.heads=linear,mlp,finetune``); 1,000 patient-bootstrap
resamples. What the budget trades away (``configs/paper.py`` has the full design): encoders
barely trained, an SD over two pretraining seeds only, label subsets drawn twice, no MLP probe
below 100% of labels. ``:tiny`` is the seconds-scale version on ``ecg_synth/tiny`` used by the
tests (three methods and the random encoder, a few steps). Any key of the config reaches every
stage that reads it, e.g. ``--config.mining.decimate=1`` both SSL-DML pretrainings.
"""

from ssldml_jax import cli, config_defaults
from ssldml_jax.eval import probe_config
from ssldml_jax.reproduce import add_job_keys

METHODS = ("ssl_dml_dtw", "ssl_dml_euclidean", "supervised_dml", "supervised", "simclr",
           "clocs_cmsc", "vicreg", "random")


def get_config(arg=None):
  words = cli.parse_words(arg, ("tiny",))
  c = probe_config.add_probe_section(config_defaults.base_config())
  add_job_keys(c, methods=METHODS)
  c.pretrain_seeds = (0, 1)

  c.data.name = config_defaults.DEFAULT_DATASET
  c.data.sampling_rate = 50
  c.data.per_device_batch_size = 64
  c.data.eval_per_device_batch_size = 128
  c.model.width = 16
  c.model.stage_sizes = (1, 1, 1, 1)
  c.model.embedding_dim = 64
  c.model.dropout = 0.1
  c.mining.decimate = 2            # 50 -> 25 Hz for DTW
  c.optim.learning_rate = 1e-3
  c.train.num_steps = 100          # per pretraining: 7 methods x 2 seeds + 24 label-row runs
  c.train.log_every_steps = 50
  c.train.checkpoint_every_steps = 100
  c.train.keep_checkpoints = 1
  c.train.eval_batches = 0         # no validation loss: its compile would cost ~10 s a method

  p = c.probe
  p.seeds = (0, 1)
  p.heads = ("linear", "mlp")
  p.fraction_heads = ("linear",)
  p.mlp.max_steps = 1500
  p.mlp.eval_every_steps = 100
  p.mlp.patience = 4
  p.finetune.max_steps = 300
  p.finetune.eval_every_steps = 50
  p.finetune.patience = 2

  if "tiny" in words:
    config_defaults.apply_tiny(c)
    probe_config.apply_tiny_probe(c)
    c.methods = ("ssl_dml_euclidean", "supervised", "vicreg", "random")
    c.compare_to = "ssl_dml_euclidean"
    c.pretrain_seeds = (0, 1)
    # Fits 8 fake test devices: 32 ECGs a global batch from the 115 unlabeled / 85 train ECGs.
    c.data.per_device_batch_size = 4
    c.data.eval_per_device_batch_size = 4
    c.mining.decimate = 1
    c.train.num_steps = 4
    c.train.log_every_steps = 2
    c.train.checkpoint_every_steps = 2
    c.train.eval_batches = 0
    c.train.progress_bar = False
  return c
