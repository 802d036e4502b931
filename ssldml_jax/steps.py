"""The pure training step that every pretraining method shares, written for one device.

``make_train_step(config, models, tx, schedule)`` returns ``step(state, batch, rng) -> (state,
metrics)`` for the method ``config.method`` of the registry (``ssldml_jax.methods``), which
supplies the models and the per-device loss; this module keeps what all methods share: the
models' state, the optimiser, the random keys, the update and the non-finite guard. The step sees
this device's slice of the batch and talks to the others only through ``parallel`` over
``axis_name`` (``'batch'``), so the trainer runs it under ``pmap`` or ``shard_map`` unchanged, and
``axis_name=None`` runs it on one device without a map.

Cross-device arithmetic. Every loss follows ``ssldml_jax.losses``: each device returns its share
of the global loss, so the ``pmean`` of the per-device losses and of the parameter gradients
equals the one-device loss and gradient on the concatenated batch (8 devices x 4 train like
1 x 32). Mining sees the global batch. BatchNorm reduces its statistics over the axis, so running
averages stay identical on every device.

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

from ssldml_jax import cli, methods, models, parallel

# Key streams folded into the run key; distinct so that no two uses share random numbers.
_STREAM_MINING, _STREAM_DEVICE = 1, 2

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
  """The modules a method trains: the encoder and, for most methods, a head."""
  encoder: nn.Module
  head: Optional[nn.Module]    # ProbeHead (supervised methods) or ProjectionHead (two views)


def build_models(config: ml_collections.ConfigDict,
                 bn_axis_name: Optional[str] = parallel.AXIS) -> Models:
  """The encoder of ``config.model`` and the head the method of ``config.method`` trains."""
  encoder = models.build_encoder(config.model, bn_axis_name=bn_axis_name)
  return Models(encoder, methods.get(config.method).build_head(config, bn_axis_name))


# --- Optimiser ----------------------------------------------------------------------------------

def validate_optim(config: ml_collections.ConfigDict) -> None:
  """Checks ``config.optim``; raises ``cli.ConfigError`` naming the first bad key."""
  cli.check_choice(config, "optim.name", ("adam", "adamw", "sgd"))
  cli.check_choice(config, "optim.schedule", ("constant", "cosine"))
  cli.check_range(config, "optim.learning_rate", low=0.0, positive=True)
  cli.check_range(config, "optim.weight_decay", low=0.0)
  cli.check_int(config, "optim.warmup_steps", 0)
  cli.check_range(config, "optim.grad_clip_norm", low=1e-12, allow_none=True)


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

def init_state(config: ml_collections.ConfigDict, mods: Models, tx: optax.GradientTransformation,
               key: jax.Array, num_samples: int) -> TrainState:
  """Fresh parameters (float32) from ``key`` (jit it: eager flax init is slow)."""
  method = methods.get(config.method)
  k_enc, k_head = jax.random.split(key)
  x = jnp.zeros((2, method.view_length(num_samples), 12), jnp.float32)
  enc = mods.encoder.init({"params": k_enc}, x, train=False)
  params, stats = {"encoder": enc["params"]}, {"encoder": enc.get("batch_stats", {})}
  if mods.head is not None:
    head = mods.head.init({"params": k_head}, jnp.zeros((2, config.model.embedding_dim)),
                          train=False)
    params["head"] = head["params"]
    stats["head"] = head.get("batch_stats", {})
  params.update(method.loss_params(config))
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=zero, params=params, batch_stats=stats, opt_state=tx.init(params),
                    nonfinite_streak=zero, nonfinite_total=zero)


def patient_keys(patient_ids: np.ndarray) -> np.ndarray:
  """Host-side int32 key per patient id string (CRC32), the same on every host, for CMSC."""
  flat = np.asarray(patient_ids).reshape(-1)
  keys = np.array([zlib.crc32(str(p).encode()) & 0x7FFFFFFF for p in flat], np.int32)
  return keys.reshape(np.shape(patient_ids))


LossFn = Callable[..., tuple[jax.Array, tuple[Any, Metrics]]]


def make_loss_fn(config: ml_collections.ConfigDict, mods: Models, *,
                 axis_name: Optional[str] = parallel.AXIS) -> LossFn:
  """``loss(params, batch_stats, batch, mine_key, device_key, train) -> (share, (stats,
  metrics))`` of the method ``config.method`` (see ``ssldml_jax.methods.registry``)."""
  return methods.get(config.method).make_loss(config, mods, axis_name)


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
