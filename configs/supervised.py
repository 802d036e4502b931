"""The supervised baseline: ResNet-18 trained end to end on the labeled cohort's training split.

    python -m ssldml_jax.pretrain --config=configs/supervised.py:binary --workdir=runs/supervised_binary
    python -m ssldml_jax.pretrain --config=configs/supervised.py:regression --workdir=runs/supervised_regression
    python -m ssldml_jax.pretrain --config=configs/supervised.py:tiny --workdir=runs/tiny_supervised

BCE on mPCWP > 18 (binary, the default) or RMSE on standardised mPCWP (regression); no metric loss.
"""

from ssldml_jax.pretrain_configs import pretrain_config


def get_config(arg=None):
  return pretrain_config("supervised", arg)
