"""Supervised DML on mPCWP > 18: alpha * class-mined triplet loss + BCE, alpha = 3.

    python -m ssldml_jax.pretrain --config=configs/supervised_dml.py --workdir=runs/supervised_dml
    python -m ssldml_jax.pretrain --config=configs/supervised_dml.py:tiny --workdir=runs/tiny_supervised_dml

Class-based triplets (positive of the same class mPCWP > 18, negative of the other), BCE task
loss; the task head is trained with the encoder. The method: ``ssldml_jax/methods/supervised.py``.
"""

from ssldml_jax import methods


def get_config(arg=None):
  return methods.pretrain_config("supervised_dml", arg)
