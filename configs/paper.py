"""The main job at the paper's budget, for a GPU or TPU host (hours to days).

    python -m ssldml_jax.reproduce --config=configs/paper.py --workdir=runs/paper

ResNet-18 (width 64, embedding 128) on 10 s ECGs at 250 Hz, batch 64 per device, 100 epochs,
Adam with L2 1e-4 and learning rate 1e-4, triplet margin 0.2, DTW mining on signals decimated to
50 Hz; ``ecg_synth/large`` (~200k unlabeled ECGs, ~8k labeled, like the paper's cohort). Every
registered method (supervised DML and the supervised baseline for both targets, SimCLR, CLOCS,
VICReg) and the random encoder, each pretrained with seeds 0, 1, 2 (``pretrain_seeds``); the
labeled methods also on each label-limited row's patients, for every pretraining and probe seed.
Probes: logistic / ridge, MLP and full fine-tuning; label fractions 1%, 10%, 100% and n=1,000,
model selection below 100% on the row's share of validation patients; probe seeds 0, 1, 2;
1,000 patient-bootstrap resamples; comparisons against the random encoder and SimCLR. Another
dataset with mPCWP labels: ``--config.data.name=...`` and its split names in
``--config.data.{pretrain,train,validation,test}_split``.
"""

from ssldml_jax import cli, config_defaults, methods
from ssldml_jax.eval import probe_config
from ssldml_jax.reproduce import add_job_keys


def get_config(arg=None):
  cli.parse_words(arg, ())
  c = probe_config.add_probe_section(config_defaults.base_config())
  add_job_keys(c, methods=methods.names(pretrained_only=True) + (methods.RANDOM.name,))

  c.data.name = "ecg_synth/large"
  c.data.sampling_rate = 250
  c.data.per_device_batch_size = 64
  c.model.name = "resnet18"
  c.model.width = 64
  c.model.embedding_dim = 128
  c.mining.decimate = 5            # 250 -> 50 Hz for DTW
  c.optim.name = "adam"
  c.optim.learning_rate = 1e-4
  c.optim.weight_decay = 1e-4
  c.train.num_epochs = 100
  c.train.checkpoint_every_steps = 2000
  c.train.eval_every_steps = 2000
  c.probe.heads = ("linear", "mlp", "finetune")
  c.probe.fraction_heads = ("linear", "mlp", "finetune")
  return c
