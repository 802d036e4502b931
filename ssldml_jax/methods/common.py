"""Pieces that several method families share: applying a module, global means, metric learning.

Everything here runs inside the per-device step (see ``ssldml_jax.steps``) and talks to other
devices only through ``ssldml_jax.parallel`` over ``axis_name``.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax import lax

from ssldml_jax import augment, cli, distances, losses, miners, parallel

Metrics = dict
# What a metric-learning method reads of config.mining and config.loss.
METRIC_READS = ("mining.embedding_distance", "loss.name", "loss.margin")
CONTRASTIVE_READS = ("loss.temperature",)


def apply_module(module: nn.Module, params: Any, stats: Any, x: jax.Array, key: jax.Array,
                 train: bool) -> tuple[jax.Array, Any]:
  """``module(x)``; in training with dropout and batch statistics, returning the new statistics."""
  variables = {"params": params, "batch_stats": stats}
  if not train:
    return module.apply(variables, x, train=False), stats
  out, updates = module.apply(variables, x, train=True, rngs={"dropout": key},
                              mutable=["batch_stats"])
  return out, updates.get("batch_stats", stats)


def encode(encoder: nn.Module, params: Any, stats: Any, x: jax.Array, key: jax.Array,
           train: bool) -> tuple[jax.Array, Any]:
  """Float32 embeddings of ``x`` and the state's statistics with the encoder's updated."""
  emb, enc_stats = apply_module(encoder, params["encoder"], stats["encoder"], x, key, train)
  return emb.astype(jnp.float32), dict(stats, encoder=enc_stats)


def global_mean(terms: jax.Array, valid: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """This device's share of the mean of ``terms[valid]`` over all devices (losses' convention)."""
  total = jnp.sum(jnp.where(valid, terms, 0.0))
  count = parallel.psum(jnp.sum(valid.astype(jnp.float32)), axis_name)
  n = parallel.psum(1, axis_name) if axis_name is not None else 1
  return n * total / jnp.maximum(count, 1.0)


# --- Metric learning (the DML methods) ----------------------------------------------------------

def validate_metric(config: ml_collections.ConfigDict) -> None:
  cli.check_choice(config, "mining.embedding_distance", distances.NAMES)
  cli.check_choice(config, "loss.name", losses.TUPLE_LOSSES)
  cli.check_range(config, "loss.margin", low=0.0)


def metric_loss_params(config: ml_collections.ConfigDict) -> dict:
  """The margin loss learns its boundary beta; the other tuple losses have no parameters."""
  return {"loss": losses.margin_loss_params()} if config.loss.name == "margin" else {}


def triplet_stats(emb: jax.Array, t: miners.Triplets, real: jax.Array, margin: float,
                  distance: str, axis_name: Optional[str]) -> Metrics:
  """Active fraction and mean mined distances of this device's triplets, all-reduced.

  ``real`` marks the anchors that could have a triplet (not padding, label known): the share
  of those that got one is ``valid_triplets``.
  """
  emb = lax.stop_gradient(distances.l2_normalize(emb.astype(jnp.float32)))
  g = parallel.gather_global(emb, axis_name)
  paired = distances.get_paired(distance)
  d_ap = paired(g[t.anchors], g[t.positives])
  d_an = paired(g[t.anchors], g[t.negatives])
  valid = t.valid.astype(jnp.float32)
  active = valid * (d_ap - d_an + margin > 0)
  sums = parallel.psum({"valid": valid.sum(), "active": active.sum(),
                        "anchors": real.astype(jnp.float32).sum(),
                        "d_ap": (valid * d_ap).sum(), "d_an": (valid * d_an).sum()}, axis_name)
  n = jnp.maximum(sums["valid"], 1.0)
  return {"valid_triplets": sums["valid"] / jnp.maximum(sums["anchors"], 1.0),
          "active_triplets": sums["active"] / n,
          "d_pos": sums["d_ap"] / n, "d_neg": sums["d_an"] / n}


def metric_loss(config: ml_collections.ConfigDict, params: Any, emb: jax.Array,
                mine_key: jax.Array, miner: str, real: jax.Array, axis_name: Optional[str], *,
                neg_topk: Optional[int] = None, raw_rows: Optional[jax.Array] = None,
                labels: Optional[jax.Array] = None,
                valid_labels: Optional[jax.Array] = None) -> tuple[jax.Array, Metrics]:
  """This device's share of the global-batch tuple loss of ``config.loss`` and its statistics."""
  margin = float(config.loss.margin)
  distance = config.mining.embedding_distance
  share, t = losses.global_triplet_loss(
      emb, mine_key, miner=miner, loss=config.loss.name, raw_dist_rows=raw_rows, labels=labels,
      valid_labels=valid_labels, neg_topk=neg_topk, margin=margin, distance=distance,
      beta=params.get("loss", {}).get("beta"), axis_name=axis_name)
  return share, triplet_stats(emb, t, real, margin, distance, axis_name)


# --- Two views (the contrastive and redundancy-reduction methods) ------------------------------

def validate_contrastive(config: ml_collections.ConfigDict) -> None:
  cli.check_range(config, "loss.temperature", low=0.0, positive=True)


def augmented_views(config: ml_collections.ConfigDict, key: jax.Array, v1: jax.Array,
                    v2: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Each view through its own draw of the ``config.augment`` chain.

  Evaluation augments too: without it the two views of SimCLR would be identical and its
  validation loss would say nothing about the training objective.
  """
  cfg = {k: float(v) for k, v in config.augment.items()}
  rate = float(config.data.sampling_rate or 1)
  k_a, k_b = jax.random.split(key)
  return augment.augment(k_a, v1, cfg, rate), augment.augment(k_b, v2, cfg, rate)


def encode_views(mods, params: Any, stats: Any, v1: jax.Array, v2: jax.Array, key: jax.Array,
                 train: bool, head_key: Optional[jax.Array] = None
                 ) -> tuple[jax.Array, jax.Array, Any]:
  """Head outputs of both views from one encoder pass (BatchNorm normalises them together), and
  the statistics of encoder and head. ``head_key`` (default ``key``) feeds the head's dropout."""
  b = v1.shape[0]
  emb, stats = encode(mods.encoder, params, stats, jnp.concatenate([v1, v2]), key, train)
  z, head_stats = apply_module(mods.head, params["head"], stats["head"], emb,
                               key if head_key is None else head_key, train)
  return z[:b], z[b:], dict(stats, head=head_stats)
