"""VICReg (Bardes, Ponce & LeCun, ICLR 2022): variance-invariance-covariance regularisation.

Two augmented views of each ECG (``config.augment``, as SimCLR) go through the encoder and an
expander (``models.ProjectionHead`` to ``vicreg.expander_dim`` features). The loss on the expanded
views ``z1, z2`` of the global batch (``n`` real ECGs, ``D`` features) is

    invariance_weight  * mean_i ||z1_i - z2_i||^2 / D
  + variance_weight    * (mean_d relu(1 - std_d(z1)) + mean_d relu(1 - std_d(z2))) / 2
  + covariance_weight  * (sum_{d != e} C(z1)_de^2 + sum_{d != e} C(z2)_de^2) / D

with ``std_d = sqrt(var_d + 1e-4)``, variances and covariances ``C`` over the batch with the
``n - 1`` denominator, and the paper's weights 25, 25 and 1. No negatives and no momentum encoder:
the variance term keeps the embeddings from collapsing and the covariance term decorrelates them.
Batch statistics are taken over the gathered global batch, so 8 devices x 4 ECGs train like one
device with 32. The expander is the paper's: three dense layers, BatchNorm (over the global
batch) and ReLU after the first two.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssldml_jax import augment, cli, models, parallel
from ssldml_jax.methods import common, registry
from ssldml_jax.models.resnet1d import BN_EPSILON, BN_MOMENTUM

_STD_EPS = 1e-4
DEFAULTS = {"invariance_weight": 25.0, "variance_weight": 25.0, "covariance_weight": 1.0,
            "expander_dim": 256}


def vicreg_terms(z1: jax.Array, z2: jax.Array, mask: Optional[jax.Array] = None, *,
                 axis_name: Optional[str] = None) -> dict[str, jax.Array]:
  """The three terms of the loss over the global batch: ``invariance``, ``variance``,
  ``covariance`` (unweighted). ``z1``, ``z2``: this device's ``(b, D)`` views; ``mask`` ``(b,)``
  drops padded ECGs. Every device returns the same values."""
  mask = jnp.ones(z1.shape[:1], bool) if mask is None else jnp.asarray(mask, bool)
  g1, g2, gmask = (parallel.gather_global(a, axis_name)
                   for a in (z1.astype(jnp.float32), z2.astype(jnp.float32), mask))
  w = gmask.astype(jnp.float32)[:, None]
  n = jnp.sum(w)
  dim = g1.shape[1]
  invariance = jnp.sum(w * jnp.square(g1 - g2)) / (jnp.maximum(n, 1.0) * dim)

  def spread(z):
    centred = (z - jnp.sum(w * z, axis=0) / jnp.maximum(n, 1.0)) * w
    cov = jnp.matmul(centred.T, centred, precision=jax.lax.Precision.HIGHEST) / jnp.maximum(
        n - 1.0, 1.0)
    std = jnp.sqrt(jnp.diagonal(cov) + _STD_EPS)
    off = cov - jnp.diag(jnp.diagonal(cov))
    return jnp.mean(jax.nn.relu(1.0 - std)), jnp.sum(jnp.square(off)) / dim

  var1, cov1 = spread(g1)
  var2, cov2 = spread(g2)
  return {"invariance": invariance, "variance": (var1 + var2) / 2, "covariance": cov1 + cov2}


def vicreg_loss(z1: jax.Array, z2: jax.Array, mask: Optional[jax.Array] = None, *,
                invariance_weight: float = 25.0, variance_weight: float = 25.0,
                covariance_weight: float = 1.0, axis_name: Optional[str] = None) -> jax.Array:
  """The weighted VICReg loss (module docstring). It is a function of the whole gathered batch,
  computed alike on every device: the ``pmean`` of the per-device parameter gradients is the
  one-device gradient on the concatenated batch (``ssldml_jax.losses`` convention)."""
  return weighted(vicreg_terms(z1, z2, mask, axis_name=axis_name),
                  invariance_weight=invariance_weight, variance_weight=variance_weight,
                  covariance_weight=covariance_weight)


def weighted(terms: dict, *, invariance_weight: float, variance_weight: float,
             covariance_weight: float) -> jax.Array:
  """The VICReg loss from its three terms (``vicreg_terms``)."""
  return (invariance_weight * terms["invariance"] + variance_weight * terms["variance"]
          + covariance_weight * terms["covariance"])


class Expander(nn.Module):
  """Dense -> BatchNorm -> ReLU, twice, then Dense: ``features`` wide throughout.

  BatchNorm keeps every expanded feature near unit variance from the first step, which is what
  lets the variance term start small (a plain MLP starts nearly collapsed at small widths).
  """
  features: int
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for i in range(2):
      x = nn.Dense(self.features, dtype=self.dtype, param_dtype=jnp.float32, name=f"dense{i}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                       dtype=self.dtype, param_dtype=jnp.float32, axis_name=self.bn_axis_name,
                       name=f"bn{i}")(x)
      x = nn.relu(x)
    x = nn.Dense(self.features, dtype=self.dtype, param_dtype=jnp.float32, name="out")(x)
    return x.astype(jnp.float32)


def build_expander(config: ml_collections.ConfigDict, bn_axis_name: Optional[str]):
  return Expander(features=int(config.vicreg.expander_dim), bn_axis_name=bn_axis_name,
                  dtype=models.DTYPES[config.model.dtype])


def make_loss(config: ml_collections.ConfigDict, mods, axis_name: Optional[str]):
  weights = {k: float(config.vicreg[k])
             for k in ("invariance_weight", "variance_weight", "covariance_weight")}

  def loss(params, stats, batch, mine_key, dev_key, train):
    del mine_key
    x, mask = batch["ecg"], batch["mask"]
    k_enc, k_head, k_aug = jax.random.split(dev_key, 3)
    v1, v2 = common.augmented_views(config, k_aug, x, x)
    z1, z2, stats = common.encode_views(mods, params, stats, v1, v2, k_enc, train,
                                        head_key=k_head)
    terms = vicreg_terms(z1, z2, mask, axis_name=axis_name)
    value = weighted(terms, **weights)
    return value, (stats, {f"vicreg_{k}": jax.lax.stop_gradient(v) for k, v in terms.items()})

  return loss


def _validate(config: ml_collections.ConfigDict) -> None:
  for key in ("invariance_weight", "variance_weight", "covariance_weight"):
    cli.check_range(config, f"vicreg.{key}", low=0.0)
  cli.check_int(config, "vicreg.expander_dim", 1)
  augment.validate(config)


registry.register(registry.Method(
    name="vicreg", label="VICReg",
    summary="invariance between two augmented views, variance and covariance regularised "
            "over the global batch (no negatives)",
    reads=("augment", "vicreg"), make_loss=make_loss, build_head=build_expander,
    validate=_validate, section=("vicreg", DEFAULTS)))
