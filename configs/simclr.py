"""The SimCLR baseline: NT-Xent between two augmented views of each ECG in the global batch.

    python -m ssldml_jax.pretrain --config=configs/simclr.py --workdir=runs/simclr
    python -m ssldml_jax.pretrain --config=configs/simclr.py:tiny --workdir=runs/tiny_simclr

Views: baseline wander, per-ECG gain, Gaussian noise, a time mask and lead dropout
(config.augment); projection head on the encoder's embedding; temperature 0.1. The method:
``ssldml_jax/methods/simclr.py``.
"""

from ssldml_jax import methods


def get_config(arg=None):
  return methods.pretrain_config("simclr", arg)
