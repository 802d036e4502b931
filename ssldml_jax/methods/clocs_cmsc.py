"""CLOCS CMSC (Kiyasseh et al. 2021): contrast the two non-overlapping temporal halves of each ECG.

Positives are the halves of the same ECG and, as in CLOCS, the halves of other ECGs of the same
patient in the global batch; temperature ``loss.temperature`` (0.1); a projection head as in
SimCLR. CLOCS used no other augmentation for CMSC, and neither does this method.
"""

from __future__ import annotations

from typing import Optional

import ml_collections

from ssldml_jax import augment, losses
from ssldml_jax.methods import common, registry
from ssldml_jax.methods.simclr import build_projection


def make_loss(config: ml_collections.ConfigDict, mods, axis_name: Optional[str]):
  temperature = float(config.loss.temperature)

  def loss(params, stats, batch, mine_key, dev_key, train):
    del mine_key
    v1, v2 = augment.temporal_halves(batch["ecg"])
    z1, z2, stats = common.encode_views(mods, params, stats, v1, v2, dev_key, train)
    share = losses.cmsc_loss(z1, z2, temperature, patient_ids=batch["patient_key"],
                             mask=batch["mask"], axis_name=axis_name)
    return share, (stats, {})

  return loss


registry.register(registry.Method(
    name="clocs_cmsc", label="CLOCS (CMSC)",
    summary="the two halves of each ECG, and of the same patient's ECGs, are positives",
    reads=common.CONTRASTIVE_READS, make_loss=make_loss, build_head=build_projection,
    view_length=lambda num_samples: num_samples // 2, validate=common.validate_contrastive))
