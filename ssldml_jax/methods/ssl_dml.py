"""SSL-DML (the paper's method): triplets mined from distances between the raw ECGs.

For every anchor of the global batch the positive is its nearest neighbour under a distance
between the raw signals, decimated by ``config.mining.decimate`` before mining (DTW over time
with a squared-Euclidean local cost over the 12 leads, or the Euclidean distance), and the
negative is drawn at random among the others (or among the ``mining.neg_topk`` farthest); the
loss is ``config.loss.name`` (triplet, margin 0.2 in the paper) on the embeddings. No labels, no
augmentations.

- ``ssl_dml_dtw``: DTW mining, optionally inside a Sakoe-Chiba band (``mining.dtw_window``,
  in samples at the model rate), by the XLA wavefront or the Pallas kernel on a GPU
  (``mining.dtw_impl``).
- ``ssl_dml_euclidean``: the Euclidean distance between the decimated signals.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
from jax import lax

from ssldml_jax import cli, dtw, parallel
from ssldml_jax.methods import common, registry

_READS = common.METRIC_READS + ("mining.neg_topk", "mining.decimate")


def mining_window(config: ml_collections.ConfigDict) -> Optional[int]:
  """``config.mining.dtw_window`` (samples at the model rate; 0: no band) at the mining rate."""
  m = config.mining
  return dtw.decimated_window(int(m.dtw_window) if m.dtw_window else None, int(m.decimate))


def raw_distance_rows(config: ml_collections.ConfigDict, raw_distance: str, x: jax.Array,
                      mask: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """Raw-signal distances ``(b, N)`` from this device's ECGs to the gathered batch.

  Signals are decimated by ``config.mining.decimate`` before they are gathered (so devices
  exchange 1/decimate of the samples); ``config.mining.dtw_window`` counts samples at the model
  rate and is rounded up at the mining rate. Rows and columns of padded ECGs are +inf, which the
  distance miner treats as missing.
  """
  m = config.mining
  factor = int(m.decimate)
  xd = lax.stop_gradient(dtw.decimate(x.astype(jnp.float32), factor))
  xg = parallel.gather_global(xd, axis_name)
  if raw_distance == "dtw":
    d = dtw.cross_dtw(xd, xg, window=mining_window(config), impl=m.dtw_impl)
  else:
    d = dtw.cross_euclidean_raw(xd, xg)
  mask_g = parallel.gather_global(mask, axis_name)
  return jnp.where(mask[:, None] & mask_g[None, :], d, jnp.inf)


def _loss_maker(raw_distance: str):
  def make_loss(config: ml_collections.ConfigDict, mods, axis_name: Optional[str]):
    def loss(params, stats, batch, mine_key, dev_key, train):
      x, mask = batch["ecg"], batch["mask"]
      emb, stats = common.encode(mods.encoder, params, stats, x, dev_key, train)
      raw = raw_distance_rows(config, raw_distance, x, mask, axis_name)
      share, metrics = common.metric_loss(config, params, emb, mine_key, "distance", mask,
                                          axis_name, neg_topk=config.mining.neg_topk,
                                          raw_rows=raw)
      return share, (stats, metrics)
    return loss
  return make_loss


def _validator(raw_distance: str):
  def validate(config: ml_collections.ConfigDict) -> None:
    common.validate_metric(config)
    cli.check_int(config, "mining.neg_topk", 1, allow_none=True)
    cli.check_int(config, "mining.decimate", 1)
    if raw_distance == "dtw":
      cli.check_int(config, "mining.dtw_window", 0, allow_none=True)
      cli.check_choice(config, "mining.dtw_impl", dtw.IMPLS)
  return validate


for _distance, _label, _reads, _summary in (
    ("dtw", "SSL-DML (DTW)", _READS + ("mining.dtw_window", "mining.dtw_impl"),
     "triplets mined in the global batch: positive = DTW nearest neighbour of the raw ECG "
     "(over time, on decimated signals), negative at random; triplet loss"),
    ("euclidean", "SSL-DML (Euclidean)", _READS,
     "the same with the Euclidean distance between the decimated raw signals")):
  registry.register(registry.Method(
      name=f"ssl_dml_{_distance}", label=_label, summary=_summary, reads=_reads,
      make_loss=_loss_maker(_distance), loss_params=common.metric_loss_params,
      validate=_validator(_distance), raw_distance=_distance))
