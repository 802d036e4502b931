"""The VICReg baseline: invariance, variance and covariance terms on two augmented views.

    python -m ssldml_jax.pretrain --config=configs/vicreg.py --workdir=runs/vicreg
    python -m ssldml_jax.pretrain --config=configs/vicreg.py:tiny --workdir=runs/tiny_vicreg

Views as SimCLR (config.augment); an expander of config.vicreg.expander_dim features; the paper's
weights 25 (invariance), 25 (variance) and 1 (covariance), batch statistics over the global batch.
The method: ``ssldml_jax/methods/vicreg.py``.
"""

from ssldml_jax import methods


def get_config(arg=None):
  return methods.pretrain_config("vicreg", arg)
