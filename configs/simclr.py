"""The SimCLR baseline: NT-Xent between two augmented views of each ECG in the global batch.

    python -m ssldml_jax.pretrain --config=configs/simclr.py --workdir=runs/simclr
    python -m ssldml_jax.pretrain --config=configs/simclr.py:tiny --workdir=runs/tiny_simclr

Views: baseline wander, per-ECG gain, Gaussian noise, a time mask and lead dropout
(config.augment); projection head on the encoder's embedding; temperature 0.1.
"""

from ssldml_jax.pretrain_configs import pretrain_config


def get_config(arg=None):
  c = pretrain_config("simclr", arg)
  c.loss.name = "ntxent"
  return c
