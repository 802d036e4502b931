"""The CLOCS CMSC baseline: contrast the two non-overlapping temporal halves of each ECG.

    python -m ssldml_jax.pretrain --config=configs/clocs_cmsc.py --workdir=runs/clocs_cmsc
    python -m ssldml_jax.pretrain --config=configs/clocs_cmsc.py:tiny --workdir=runs/tiny_clocs_cmsc

Positives are the halves of the same ECG and, as in CLOCS, the halves of other ECGs of the same
patient in the global batch; temperature 0.1; no other augmentation. The method:
``ssldml_jax/methods/clocs_cmsc.py``.
"""

from ssldml_jax import methods


def get_config(arg=None):
  return methods.pretrain_config("clocs_cmsc", arg)
