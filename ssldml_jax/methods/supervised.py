"""The labeled methods: the supervised baseline and supervised DML, each for two targets.

Both train the encoder and the paper's probe head (``models.ProbeHead``) on the labeled cohort's
training split (ECGs with a known mPCWP): binary cross-entropy on mPCWP > ``task.pcwp_threshold``,
or the RMSE of mPCWP standardised by ``task.pcwp_mean`` / ``task.pcwp_std``. Supervised DML adds
``loss.alpha`` (3 in the paper) times a triplet loss mined from the labels: class-based for the
binary target (positive of the same class, negative of the other, both at random), and for
regression the closest mPCWP as positive and the farthest as negative.

- ``supervised`` / ``supervised_regression``: the task loss alone (the end-to-end baseline).
- ``supervised_dml`` / ``supervised_dml_regression``: ``alpha * metric loss + task loss``.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax import lax

from ssldml_jax import cli, models, parallel, task
from ssldml_jax.methods import common, registry

_RMSE_EPS = 1e-6


def task_loss(config: ml_collections.ConfigDict, target: str, pred: jax.Array, pcwp: jax.Array,
              valid: jax.Array, axis_name: Optional[str]) -> tuple[jax.Array, common.Metrics]:
  """BCE on mPCWP > threshold, or RMSE on standardised mPCWP; this device's share."""
  pred = pred.reshape(-1).astype(jnp.float32)
  pcwp = jnp.where(valid, pcwp, 0.0)
  if target == "binary":
    label = task.elevated(pcwp, config.task.pcwp_threshold).astype(jnp.float32)
    share = common.global_mean(optax.sigmoid_binary_cross_entropy(pred, label), valid, axis_name)
    correct = common.global_mean((pred > 0) == (label > 0.5), valid, axis_name)
    return share, {"task_loss": parallel.pmean(lax.stop_gradient(share), axis_name),
                   "task_accuracy": parallel.pmean(correct, axis_name)}
  mse_share = common.global_mean(jnp.square(pred - task.standardise(pcwp, config.task)), valid,
                                 axis_name)
  # RMSE of the global batch, with the gradient of sqrt applied to this device's MSE share: the
  # value is the same on every device and the pmean of the gradients is the one-device gradient.
  rmse = jnp.sqrt(parallel.pmean(lax.stop_gradient(mse_share), axis_name) + _RMSE_EPS)
  share = rmse + (mse_share - lax.stop_gradient(mse_share)) / (2.0 * rmse)
  return share, {"task_loss": rmse, "task_rmse_mmhg": rmse * float(config.task.pcwp_std)}


def build_head(config: ml_collections.ConfigDict, bn_axis_name: Optional[str]):
  return models.ProbeHead(out_dim=1, bn_axis_name=bn_axis_name,
                          dtype=models.DTYPES[config.model.dtype])


def _loss_maker(target: str, metric: bool):
  def make_loss(config: ml_collections.ConfigDict, mods, axis_name: Optional[str]):
    def loss(params, stats, batch, mine_key, dev_key, train):
      x, pcwp = batch["ecg"], batch["pcwp"].astype(jnp.float32)
      valid = batch["mask"] & jnp.isfinite(pcwp)
      k_enc, k_head = jax.random.split(dev_key)
      emb, stats = common.encode(mods.encoder, params, stats, x, k_enc, train)
      pred, head_stats = common.apply_module(mods.head, params["head"], stats["head"], emb,
                                             k_head, train)
      stats = dict(stats, head=head_stats)
      task_share, metrics = task_loss(config, target, pred, pcwp, valid, axis_name)
      if not metric:
        return task_share, (stats, metrics)
      if target == "binary":
        labels = task.elevated(jnp.where(valid, pcwp, 0.0),
                               config.task.pcwp_threshold).astype(jnp.int32)
        miner = "class"
      else:
        labels, miner = pcwp, "label"
      metric_share, metric_metrics = common.metric_loss(
          config, params, emb, mine_key, miner, valid, axis_name, labels=labels,
          valid_labels=valid)
      metrics.update(metric_metrics,
                     metric_loss=parallel.pmean(lax.stop_gradient(metric_share), axis_name))
      return float(config.loss.alpha) * metric_share + task_share, (stats, metrics)
    return loss
  return make_loss


def _validate_dml(config: ml_collections.ConfigDict) -> None:
  task.validate(config)
  common.validate_metric(config)
  cli.check_range(config, "loss.alpha", low=0.0)


for _target, _suffix, _what in (("binary", "", "BCE on mPCWP > threshold"),
                                ("regression", "_regression", "RMSE on mPCWP")):
  registry.register(registry.Method(
      name=f"supervised{_suffix}", label="Supervised" + (" (regr.)" if _suffix else ""),
      summary=f"the encoder and probe head trained end to end on the labeled split: {_what}",
      target=_target, reads=("task",), make_loss=_loss_maker(_target, metric=False),
      build_head=build_head, validate=task.validate))
  registry.register(registry.Method(
      name=f"supervised_dml{_suffix}", label="Supervised DML" + (" (regr.)" if _suffix else ""),
      summary=f"alpha x triplet loss mined from the labels + {_what}; the head is trained too",
      target=_target, reads=("task", "loss.alpha") + common.METRIC_READS,
      make_loss=_loss_maker(_target, metric=True), build_head=build_head,
      loss_params=common.metric_loss_params, validate=_validate_dml))
