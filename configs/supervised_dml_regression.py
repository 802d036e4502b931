"""Supervised DML on mPCWP: alpha * label-mined triplet loss + RMSE, alpha = 3.

    python -m ssldml_jax.pretrain --config=configs/supervised_dml_regression.py --workdir=runs/supervised_dml_regression
    python -m ssldml_jax.pretrain --config=configs/supervised_dml_regression.py:tiny --workdir=runs/tiny_supervised_dml_regression

Positive = closest mPCWP, negative = farthest; RMSE task loss on mPCWP standardised by the
cohort's typical mean and SD. The method: ``ssldml_jax/methods/supervised.py``.
"""

from ssldml_jax import methods


def get_config(arg=None):
  return methods.pretrain_config("supervised_dml_regression", arg)
