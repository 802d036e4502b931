"""One pure training step per pretraining method, written for one device of a mapped axis.

``make_train_step(config, models, tx, schedule)`` returns ``step(state, batch, rng) -> (state,
metrics)`` for ``config.method``. It sees this device's slice of the batch and talks to the others
only through ``parallel`` over ``axis_name`` (``'batch'``), so the trainer runs it under ``pmap``
or ``shard_map`` unchanged, and ``axis_name=None`` runs it on one device without a map.

Cross-device arithmetic. Every loss follows ``ssldml_jax.losses``: each device returns
``n_devices * (its own terms) / (terms over all devices)``, so the ``pmean`` of the per-device
losses and of the parameter gradients equals the one-device loss and gradient on the
concatenated batch (8 devices x 4 train like 1 x 32). Mining sees the global batch. BatchNorm
reduces its statistics over the axis, so running averages stay identical on every device.

Randomness. The run key ``rng`` is folded with a stream id and the step: the miners get a key
that is the same on every device (their choices then do not depend on the device split), and
dropout and augmentations get ``parallel.device_key`` (different per device).

Non-finite guard. Loss, gradients and new BatchNorm statistics are checked after the all-reduce,
so every device takes the same decision; a non-finite step leaves params, optimiser state and
statistics as they were, and counts in ``nonfinite_streak`` (reset by a good step) and
``nonfinite_total``.
"""

from __future__ import annotations

import zlib
from typing import Any, Callable, NamedTuple, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from ssldml_jax import augment, distances, dtw, losses, miners, models, parallel

METHODS = ("ssl_dml", "supervised_dml", "supervised", "simclr", "clocs_cmsc")
# Key streams folded into the run key; distinct so that no two uses share random numbers.
_STREAM_MINING, _STREAM_DEVICE = 1, 2
_RMSE_EPS = 1e-6

Batch = dict
Metrics = dict


@flax.struct.dataclass
class TrainState:
  """Everything a step changes; a pytree of arrays (checkpointed as a whole)."""
  step: jax.Array              # int32: updates applied or skipped so far
  params: Any                  # {'encoder': ..., 'head': ..., 'loss': ...} (head/loss if used)
  batch_stats: Any             # {'encoder': ..., 'head': ...}
  opt_state: Any
  nonfinite_streak: jax.Array  # int32: consecutive skipped steps
  nonfinite_total: jax.Array   # int32: skipped steps over the run


class Models(NamedTuple):
  """The modules a method trains: the encoder and, for all but SSL-DML, a head."""
  encoder: nn.Module
  head: Optional[nn.Module]    # ProbeHead (supervised methods) or ProjectionHead (contrastive)


def uses_labels(method: str) -> bool:
  return method in ("supervised_dml", "supervised")


def build_models(config: ml_collections.ConfigDict,
                 bn_axis_name: Optional[str] = parallel.AXIS) -> Models:
  """The encoder of ``config.model`` and the head ``config.method`` needs."""
  encoder = models.build_encoder(config.model, bn_axis_name=bn_axis_name)
  dtype = models.DTYPES[config.model.dtype]
  if uses_labels(config.method):
    head = models.ProbeHead(out_dim=1, bn_axis_name=bn_axis_name, dtype=dtype)
  elif config.method in ("simclr", "clocs_cmsc"):
    dim = config.model.embedding_dim
    head = models.ProjectionHead(hidden_dim=dim, out_dim=dim, dtype=dtype)
  else:
    head = None
  return Models(encoder, head)


# --- Optimiser ----------------------------------------------------------------------------------

def make_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Learning rate per step: linear warm-up, then constant or cosine decay to 0 at the end."""
  o = config.optim
  warmup = int(o.warmup_steps)
  if o.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, o.learning_rate, warmup,
                                              max(total_steps, warmup + 1))
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, o.learning_rate, warmup),
                                 optax.constant_schedule(o.learning_rate)], [warmup])
  return optax.constant_schedule(o.learning_rate)


def make_optimizer(config: ml_collections.ConfigDict,
                   total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """``adam`` (L2 added to the gradient, as PyTorch's Adam(weight_decay) of the paper),
  ``adamw`` (decoupled decay) or ``sgd`` (momentum 0.9); the loss's own parameters (the margin
  loss's beta) are not decayed."""
  o = config.optim
  schedule = make_schedule(config, total_steps)
  decay_mask = lambda params: {k: jax.tree.map(lambda _: k != "loss", v)  # noqa: E731
                               for k, v in params.items()}
  if o.name == "adamw":
    tx = optax.adamw(schedule, weight_decay=o.weight_decay, mask=decay_mask)
  elif o.name == "adam":
    tx = optax.chain(optax.add_decayed_weights(o.weight_decay, decay_mask),
                     optax.adam(schedule))
  else:
    tx = optax.chain(optax.add_decayed_weights(o.weight_decay, decay_mask),
                     optax.sgd(schedule, momentum=0.9))
  if o.grad_clip_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), tx)
  return tx, schedule


# --- State --------------------------------------------------------------------------------------

def view_length(config: ml_collections.ConfigDict, num_samples: int) -> int:
  """Samples per ECG the encoder sees: CMSC's views are halves."""
  return num_samples // 2 if config.method == "clocs_cmsc" else num_samples


def init_state(config: ml_collections.ConfigDict, mods: Models, tx: optax.GradientTransformation,
               key: jax.Array, num_samples: int) -> TrainState:
  """Fresh parameters (float32) from ``key`` (jit it: eager flax init is slow)."""
  k_enc, k_head = jax.random.split(key)
  x = jnp.zeros((2, view_length(config, num_samples), 12), jnp.float32)
  enc = mods.encoder.init({"params": k_enc}, x, train=False)
  params, stats = {"encoder": enc["params"]}, {"encoder": enc.get("batch_stats", {})}
  if mods.head is not None:
    head = mods.head.init({"params": k_head}, jnp.zeros((2, config.model.embedding_dim)),
                          **({"train": False} if uses_labels(config.method) else {}))
    params["head"] = head["params"]
    stats["head"] = head.get("batch_stats", {})
  if _metric_loss_name(config) == "margin":
    params["loss"] = losses.margin_loss_params()
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=zero, params=params, batch_stats=stats, opt_state=tx.init(params),
                    nonfinite_streak=zero, nonfinite_total=zero)


def _metric_loss_name(config: ml_collections.ConfigDict) -> Optional[str]:
  return config.loss.name if config.method in ("ssl_dml", "supervised_dml") else None


def patient_keys(patient_ids: np.ndarray) -> np.ndarray:
  """Host-side int32 key per patient id string (CRC32), the same on every host, for CMSC."""
  flat = np.asarray(patient_ids).reshape(-1)
  keys = np.array([zlib.crc32(str(p).encode()) & 0x7FFFFFFF for p in flat], np.int32)
  return keys.reshape(np.shape(patient_ids))


# --- Pieces shared by the methods ---------------------------------------------------------------

def _apply(module: nn.Module, params: Any, stats: Any, x: jax.Array, key: jax.Array,
           train: bool, **kwargs) -> tuple[jax.Array, Any]:
  """``module(x)``; in training with dropout and batch statistics, returning the new statistics."""
  variables = {"params": params, "batch_stats": stats}
  if not train:
    return module.apply(variables, x, train=False, **kwargs), stats
  out, updates = module.apply(variables, x, train=True, rngs={"dropout": key},
                              mutable=["batch_stats"], **kwargs)
  return out, updates["batch_stats"]


def _global_mean(terms: jax.Array, valid: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """This device's share of the mean of ``terms[valid]`` over all devices (losses' convention)."""
  total = jnp.sum(jnp.where(valid, terms, 0.0))
  count = parallel.psum(jnp.sum(valid.astype(jnp.float32)), axis_name)
  n = parallel.psum(1, axis_name) if axis_name is not None else 1
  return n * total / jnp.maximum(count, 1.0)


def raw_distance_rows(config: ml_collections.ConfigDict, x: jax.Array, mask: jax.Array,
                      axis_name: Optional[str]) -> jax.Array:
  """Raw-signal distances ``(b, N)`` from this device's ECGs to the gathered batch.

  Signals are decimated by ``config.mining.decimate`` before they are gathered (so devices
  exchange 1/decimate of the samples); ``config.mining.dtw_window`` counts samples at the model
  rate. Rows and columns of padded ECGs are +inf, which the distance miner treats as missing.
  """
  m = config.mining
  factor = int(m.decimate)
  xd = lax.stop_gradient(dtw.decimate(x.astype(jnp.float32), factor))
  xg = parallel.gather_global(xd, axis_name)
  if m.raw_distance == "dtw":
    window = None if not m.dtw_window else -(-int(m.dtw_window) // factor)
    d = dtw.cross_dtw(xd, xg, window=window, impl=m.dtw_impl)
  else:
    d = dtw.cross_euclidean_raw(xd, xg)
  mask_g = parallel.gather_global(mask, axis_name)
  return jnp.where(mask[:, None] & mask_g[None, :], d, jnp.inf)


def _triplet_stats(emb: jax.Array, t: miners.Triplets, real: jax.Array, margin: float,
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


def _task_loss(config: ml_collections.ConfigDict, pred: jax.Array, pcwp: jax.Array,
               valid: jax.Array, pcwp_stats: tuple[float, float],
               axis_name: Optional[str]) -> tuple[jax.Array, Metrics]:
  """BCE on mPCWP > threshold, or RMSE on standardised mPCWP; this device's share."""
  pred = pred.reshape(-1).astype(jnp.float32)
  pcwp = jnp.where(valid, pcwp, 0.0)
  if config.task.target == "binary":
    target = (pcwp > config.task.pcwp_threshold).astype(jnp.float32)
    share = _global_mean(optax.sigmoid_binary_cross_entropy(pred, target), valid, axis_name)
    correct = _global_mean((pred > 0) == (target > 0.5), valid, axis_name)
    return share, {"task_loss": parallel.pmean(lax.stop_gradient(share), axis_name),
                   "task_accuracy": parallel.pmean(correct, axis_name)}
  mean, std = pcwp_stats
  target = (pcwp - mean) / std
  mse_share = _global_mean(jnp.square(pred - target), valid, axis_name)
  # RMSE of the global batch, with the gradient of sqrt applied to this device's MSE share: the
  # value is the same on every device and the pmean of the gradients is the one-device gradient.
  rmse = jnp.sqrt(parallel.pmean(lax.stop_gradient(mse_share), axis_name) + _RMSE_EPS)
  share = rmse + (mse_share - lax.stop_gradient(mse_share)) / (2.0 * rmse)
  return share, {"task_loss": rmse, "task_rmse_mmhg": rmse * std}


# --- Per-method losses ----------------------------------------------------------------------------

LossFn = Callable[..., tuple[jax.Array, tuple[Any, Metrics]]]


def make_loss_fn(config: ml_collections.ConfigDict, mods: Models, *,
                 axis_name: Optional[str] = parallel.AXIS) -> LossFn:
  """``loss(params, batch_stats, batch, mine_key, device_key, train) -> (share, (stats, metrics))``.

  ``share`` is this device's share of the loss (see the module docstring); ``metrics`` are
  already global (identical on every device).
  """
  method = config.method
  margin = float(config.loss.margin)
  distance = config.mining.embedding_distance
  temperature = float(config.loss.temperature)
  aug_cfg = {k: float(v) for k, v in config.augment.items()}
  rate = float(config.data.sampling_rate or 1)
  pcwp_stats = (float(config.task.pcwp_mean), float(config.task.pcwp_std))

  def encode(params, stats, x, key, train):
    emb, enc_stats = _apply(mods.encoder, params["encoder"], stats["encoder"], x, key, train)
    return emb.astype(jnp.float32), dict(stats, encoder=enc_stats)

  def metric_loss(params, emb, mine_key, miner, real, raw_rows=None, labels=None,
                  valid_labels=None):
    share, t = losses.global_triplet_loss(
        emb, mine_key, miner=miner, loss=config.loss.name, raw_dist_rows=raw_rows, labels=labels,
        valid_labels=valid_labels, neg_topk=config.mining.neg_topk, margin=margin,
        distance=distance, beta=params.get("loss", {}).get("beta"), axis_name=axis_name)
    return share, _triplet_stats(emb, t, real, margin, distance, axis_name)

  def ssl_dml(params, stats, batch, mine_key, dev_key, train):
    x, mask = batch["ecg"], batch["mask"]
    emb, stats = encode(params, stats, x, dev_key, train)
    raw = raw_distance_rows(config, x, mask, axis_name)
    share, metrics = metric_loss(params, emb, mine_key, "distance", mask, raw_rows=raw)
    return share, (stats, metrics)

  def supervised(params, stats, batch, mine_key, dev_key, train):
    x, pcwp = batch["ecg"], batch["pcwp"].astype(jnp.float32)
    valid = batch["mask"] & jnp.isfinite(pcwp)
    k_enc, k_head = jax.random.split(dev_key)
    emb, stats = encode(params, stats, x, k_enc, train)
    pred, head_stats = _apply(mods.head, params["head"], stats["head"], emb, k_head, train)
    stats = dict(stats, head=head_stats)
    task_share, metrics = _task_loss(config, pred, pcwp, valid, pcwp_stats, axis_name)
    if method == "supervised":
      return task_share, (stats, metrics)
    if config.task.target == "binary":
      labels = (jnp.where(valid, pcwp, 0.0) > config.task.pcwp_threshold).astype(jnp.int32)
      miner = "class"
    else:
      labels, miner = pcwp, "label"
    metric_share, metric_metrics = metric_loss(params, emb, mine_key, miner, valid,
                                               labels=labels, valid_labels=valid)
    alpha = float(config.loss.alpha)
    metrics.update(metric_metrics,
                   metric_loss=parallel.pmean(lax.stop_gradient(metric_share), axis_name))
    return alpha * metric_share + task_share, (stats, metrics)

  def contrastive(params, stats, batch, mine_key, dev_key, train):
    del mine_key
    x, mask = batch["ecg"], batch["mask"]
    k_enc, k_a, k_b = jax.random.split(dev_key, 3)
    if method == "clocs_cmsc":
      v1, v2 = augment.temporal_halves(x)
    else:
      v1, v2 = x, x
    # Evaluation augments too: without it SimCLR's two views would be identical and its
    # validation loss would say nothing about the training objective.
    v1 = augment.augment(k_a, v1, aug_cfg, rate)
    v2 = augment.augment(k_b, v2, aug_cfg, rate)
    b = x.shape[0]
    # Both views in one pass: BatchNorm normalises them with the same statistics.
    emb, stats = encode(params, stats, jnp.concatenate([v1, v2]), k_enc, train)
    z = mods.head.apply({"params": params["head"]}, emb)
    if method == "clocs_cmsc":
      share = losses.cmsc_loss(z[:b], z[b:], temperature, patient_ids=batch["patient_key"],
                               mask=mask, axis_name=axis_name)
    else:
      share = losses.ntxent_loss(z[:b], z[b:], temperature, mask=mask, axis_name=axis_name)
    return share, (stats, {})

  if method == "ssl_dml":
    return ssl_dml
  if uses_labels(method):
    return supervised
  return contrastive


# --- Steps --------------------------------------------------------------------------------------

def _keys(rng: jax.Array, step: jax.Array, axis_name: Optional[str]) -> tuple[jax.Array, jax.Array]:
  mine_key = jax.random.fold_in(jax.random.fold_in(rng, _STREAM_MINING), step)
  dev_key = parallel.device_key(jax.random.fold_in(rng, _STREAM_DEVICE), step, axis_name)
  return mine_key, dev_key


def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def make_train_step(config: ml_collections.ConfigDict, mods: Models,
                    tx: optax.GradientTransformation, schedule: optax.Schedule, *,
                    axis_name: Optional[str] = parallel.AXIS
                    ) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
  """``step(state, batch, rng) -> (state, metrics)`` for one device; metrics are global scalars."""
  loss_fn = make_loss_fn(config, mods, axis_name=axis_name)

  def step(state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, Metrics]:
    mine_key, dev_key = _keys(rng, state.step, axis_name)
    grad_fn = jax.value_and_grad(
        lambda p: loss_fn(p, state.batch_stats, batch, mine_key, dev_key, True), has_aux=True)
    (share, (new_stats, metrics)), grads = grad_fn(state.params)
    grads = parallel.pmean(grads, axis_name)
    loss = parallel.pmean(share, axis_name)
    updates, new_opt = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    # Every input of the decision is all-reduced, so every device decides the same.
    ok = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(new_stats)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
    streak = jnp.where(ok, 0, state.nonfinite_streak + 1).astype(jnp.int32)
    new_state = TrainState(
        step=state.step + 1,
        params=keep(new_params, state.params),
        batch_stats=keep(new_stats, state.batch_stats),
        opt_state=keep(new_opt, state.opt_state),
        nonfinite_streak=streak,
        nonfinite_total=state.nonfinite_total + (~ok).astype(jnp.int32))
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                   learning_rate=jnp.asarray(schedule(state.step), jnp.float32),
                   nonfinite=(~ok).astype(jnp.float32), nonfinite_streak=streak)
    return new_state, metrics

  return step


def make_eval_step(config: ml_collections.ConfigDict, mods: Models, *,
                   axis_name: Optional[str] = parallel.AXIS
                   ) -> Callable[[TrainState, Batch, jax.Array], Metrics]:
  """``eval_step(state, batch, rng) -> metrics``: the method's loss with running statistics and
  no dropout (mining and augmentations still draw from ``rng``, folded with the state's step)."""
  loss_fn = make_loss_fn(config, mods, axis_name=axis_name)

  def eval_step(state: TrainState, batch: Batch, rng: jax.Array) -> Metrics:
    mine_key, dev_key = _keys(rng, state.step, axis_name)
    share, (_, metrics) = loss_fn(state.params, state.batch_stats, batch, mine_key, dev_key,
                                  False)
    return dict(metrics, loss=parallel.pmean(share, axis_name))

  return eval_step
