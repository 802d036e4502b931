"""The supervised baseline for mPCWP regression: RMSE on standardised mPCWP, end to end.

    python -m ssldml_jax.pretrain --config=configs/supervised_regression.py --workdir=runs/supervised_regression
    python -m ssldml_jax.pretrain --config=configs/supervised_regression.py:tiny --workdir=runs/tiny_supervised_regression

The target is (mPCWP - task.pcwp_mean) / task.pcwp_std on the labeled cohort's training split.
The method: ``ssldml_jax/methods/supervised.py``.
"""

from ssldml_jax import methods


def get_config(arg=None):
  return methods.pretrain_config("supervised_regression", arg)
