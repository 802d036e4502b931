"""The supervised baseline: ResNet-18 and the probe head trained end to end on mPCWP > 18.

    python -m ssldml_jax.pretrain --config=configs/supervised.py --workdir=runs/supervised
    python -m ssldml_jax.pretrain --config=configs/supervised.py:tiny --workdir=runs/tiny_supervised

BCE on mPCWP > config.task.pcwp_threshold, on the labeled cohort's training split; no metric
loss. configs/supervised_regression.py is the same on mPCWP. The method:
``ssldml_jax/methods/supervised.py``.
"""

from ssldml_jax import methods


def get_config(arg=None):
  return methods.pretrain_config("supervised", arg)
