"""SSL-DML with Euclidean mining: the positive is the nearest raw ECG under the L2 distance.

    python -m ssldml_jax.pretrain --config=configs/ssl_dml_euclidean.py --workdir=runs/ssl_dml_euclidean
    python -m ssldml_jax.pretrain --config=configs/ssl_dml_euclidean.py:tiny --workdir=runs/tiny_ssl_dml_euclidean

As configs/ssl_dml_dtw.py but with the Euclidean distance between the (decimated) raw signals, the
paper's cheaper alternative to DTW. The method: ``ssldml_jax/methods/ssl_dml.py``.
"""

from ssldml_jax import methods


def get_config(arg=None):
  return methods.pretrain_config("ssl_dml_euclidean", arg)
