"""SimCLR (Chen et al. 2020): NT-Xent between two augmented views of each ECG in the global batch.

Views: baseline wander, per-ECG gain, Gaussian noise, a time mask and lead dropout
(``config.augment``); the loss (temperature ``loss.temperature``, 0.1) sees a projection head's
output, and the embedding before it is what gets probed.
"""

from __future__ import annotations

from typing import Optional

import jax
import ml_collections

from ssldml_jax import augment, losses, models
from ssldml_jax.methods import common, registry


def build_projection(config: ml_collections.ConfigDict, bn_axis_name: Optional[str]):
  del bn_axis_name  # No BatchNorm in the projection.
  dim = config.model.embedding_dim
  return models.ProjectionHead(hidden_dim=dim, out_dim=dim, dtype=models.DTYPES[config.model.dtype])


def make_loss(config: ml_collections.ConfigDict, mods, axis_name: Optional[str]):
  temperature = float(config.loss.temperature)

  def loss(params, stats, batch, mine_key, dev_key, train):
    del mine_key
    x, mask = batch["ecg"], batch["mask"]
    k_enc, k_aug = jax.random.split(dev_key)
    v1, v2 = common.augmented_views(config, k_aug, x, x)
    z1, z2, stats = common.encode_views(mods, params, stats, v1, v2, k_enc, train)
    return losses.ntxent_loss(z1, z2, temperature, mask=mask, axis_name=axis_name), (stats, {})

  return loss


def _validate(config: ml_collections.ConfigDict) -> None:
  common.validate_contrastive(config)
  augment.validate(config)


registry.register(registry.Method(
    name="simclr", label="SimCLR",
    summary="NT-Xent between two augmented views (wander, gain, noise, time mask, lead dropout)",
    reads=("augment",) + common.CONTRASTIVE_READS, make_loss=make_loss,
    build_head=build_projection, validate=_validate))
