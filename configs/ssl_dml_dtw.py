"""SSL-DML with DTW mining (the paper's method): triplets mined from DTW over time on the raw ECGs.

    python -m ssldml_jax.pretrain --config=configs/ssl_dml_dtw.py --workdir=runs/ssl_dml_dtw
    python -m ssldml_jax.pretrain --config=configs/ssl_dml_dtw.py:tiny --workdir=runs/tiny_ssl_dml_dtw

Unlabeled pool, ResNet-18, embedding 128, triplet loss with margin 0.2, positive = DTW nearest
neighbour in the global batch (signals decimated 250 -> 50 Hz for mining), negative at random;
Adam(W) 1e-4, batch 64 per device, 100 epochs. The method: ``ssldml_jax/methods/ssl_dml.py``.
"""

from ssldml_jax import methods


def get_config(arg=None):
  return methods.pretrain_config("ssl_dml_dtw", arg)
