"""Supervised DML on the labeled cohort: alpha * triplet loss (label-mined) + task loss, alpha = 3.

    python -m ssldml_jax.pretrain --config=configs/supervised_dml.py:binary --workdir=runs/supervised_dml_binary
    python -m ssldml_jax.pretrain --config=configs/supervised_dml.py:regression --workdir=runs/supervised_dml_regression
    python -m ssldml_jax.pretrain --config=configs/supervised_dml.py:tiny --workdir=runs/tiny_supervised_dml
    python -m ssldml_jax.pretrain --config=configs/supervised_dml.py:tiny,regression --workdir=runs/tiny_supervised_dml_reg

binary (the default): class-based triplets (positive of the same class mPCWP > 18, negative of the
other), BCE task loss. regression: positive = closest mPCWP, negative = farthest, RMSE task loss
(on mPCWP standardised by the cohort's mean and SD). The task head is trained with the encoder.
"""

from ssldml_jax.pretrain_configs import pretrain_config


def get_config(arg=None):
  return pretrain_config("supervised_dml", arg)
