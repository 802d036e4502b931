"""The paper's MLP head on frozen embeddings, trained with optax and early stopping on validation.

Protocol (the same inputs as ``linear_probe``, so rows of a table are comparable):

- Embeddings are standardised with the TRAINING split's mean and standard deviation; a
  regression target is standardised the same way and predictions are mapped back to mmHg.
- ``models.ProbeHead`` (Dense(128) -> BatchNorm -> ReLU -> Dropout(0.3) -> Dense(1), or one
  output per label / class); AdamW; binary cross-entropy on mPCWP > threshold, mean squared
  error for mPCWP, per-label BCE (multi-label) or softmax cross-entropy (multi-class).
- Minibatches are drawn from consecutive shuffles of the training rows (a small label fraction
  simply repeats rows within a batch), so every batch has the same shape and one compiled call
  runs ``eval_every_steps`` steps.
- After each such block the validation criterion is computed (AUROC, higher is better; RMSE in
  mmHg, lower is better). The best parameters are COPIED to host memory at that moment; the live
  state keeps training (and its buffers are donated to the next step), so "best" can never be a
  reference to a model that has moved on. Training stops after ``patience`` blocks without a
  strict improvement, or at ``max_steps``.
- Scores of the best parameters: probabilities (binary) or mmHg; the decision threshold for F1 /
  accuracy is chosen on the validation scores (``metrics.choose_threshold``).

Targets, batches, early stopping and results follow ``head_training`` (shared with ``finetune``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssldml_jax import models
from ssldml_jax.eval import head_training, linear_probe

_PREDICT_CHUNK = 512  # rows per compiled prediction call (padded), one shape for every split


@dataclasses.dataclass(frozen=True)
class MLPSettings(head_training.HeadSettings):
  """The MLP probe's ``HeadSettings`` and its width and batch size (``config.probe.mlp``)."""
  hidden_dim: int = 128
  batch_size: int = 64


def check_embeddings(name: str, x, dim: Optional[int] = None) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
    raise ValueError(f"{name}: expected embeddings of shape (n, {dim or 'd'}), got {x.shape}")
  bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
  if bad.size:
    raise ValueError(f"{name}: {bad.size} embedding(s) with NaN/inf, first at row {bad[0]}")
  return x


@functools.lru_cache(maxsize=16)
def _compiled(task: str, width: int, hidden_dim: int, dropout: float, learning_rate: float,
              weight_decay: float):
  """The head, its optimiser and the jitted block / predict functions (shared by every fit with
  the same settings, so a table of probes compiles once per task)."""
  head = models.ProbeHead(out_dim=head_training.out_dim(task, width), hidden_dim=hidden_dim,
                          dropout=dropout)
  tx = optax.adamw(learning_rate, weight_decay=weight_decay)

  def train_step(carry, inputs):
    params, stats, opt_state = carry
    x, y, key = inputs

    def loss_fn(p):
      out, updates = head.apply({"params": p, "batch_stats": stats}, x, train=True,
                                rngs={"dropout": key}, mutable=["batch_stats"])
      return head_training.task_loss(task, out, y), updates["batch_stats"]

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, new_opt = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), new_stats, new_opt), loss

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def train_block(params, stats, opt_state, xb, yb, key, step0):
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(step0 + jnp.arange(xb.shape[0]))
    (params, stats, opt_state), losses = jax.lax.scan(train_step, (params, stats, opt_state),
                                                      (xb, yb, keys))
    return params, stats, opt_state, jnp.mean(losses)

  @jax.jit
  def predict(params, stats, x):
    return head.apply({"params": params, "batch_stats": stats}, x, train=False)

  @jax.jit
  def init(key, x):
    return head.init({"params": key}, x, train=False)

  return head, tx, train_block, predict, init


def _predict(predict, params, stats, x: np.ndarray) -> np.ndarray:
  """Outputs for every row of ``x`` in fixed-size padded chunks (one compiled shape): (n,) for
  one output, else (n, K)."""
  out = []
  for lo in range(0, x.shape[0], _PREDICT_CHUNK):
    chunk = x[lo:lo + _PREDICT_CHUNK]
    pad = _PREDICT_CHUNK - chunk.shape[0]
    padded = np.pad(chunk, ((0, pad), (0, 0)))
    out.append(np.asarray(predict(params, stats, padded))[:chunk.shape[0]])
  return head_training.scores_of(np.concatenate(out).astype(np.float64))


def predict_scores(variables: dict, standardizer: linear_probe.Standardizer,
                   output: head_training.OutputMap, x, *, width: int, hidden_dim: int,
                   dropout: float) -> np.ndarray:
  """Scores of a trained head (``HeadResult.best_variables``, its embedding standardiser and
  output map) for embeddings ``x``, computed as in training."""
  _, _, _, predict, _ = _compiled(output.task, width, hidden_dim, float(dropout), 0.0, 0.0)
  z = standardizer(check_embeddings("x", x, standardizer.mean.size)).astype(np.float32)
  return output(_predict(predict, variables["params"], variables["batch_stats"], z))


def train_mlp_probe(x_train, y_train, x_val, y_val, x_test=None, *, task: str, seed: int = 0,
                    settings: MLPSettings = MLPSettings(), threshold_criterion: str = "f1",
                    width: int = 1) -> head_training.HeadResult:
  """Fits the MLP head (see the module docstring); ``y`` are 0/1 labels, mmHg, (n, width)
  multi-hot labels or class indices in 0..width-1."""
  head_training.check_task(task)
  x_train = check_embeddings("x_train", x_train)
  x_val = check_embeddings("x_val", x_val, x_train.shape[1])
  x_test = None if x_test is None else check_embeddings("x_test", x_test, x_train.shape[1])
  y_train = head_training.check_targets(task, "y_train", y_train, x_train.shape[0], width)
  y_val = head_training.check_targets(task, "y_val", y_val, x_val.shape[0], width)
  std = linear_probe.fit_standardizer(x_train)
  z_train, z_val = std(x_train).astype(np.float32), std(x_val).astype(np.float32)
  z_test = None if x_test is None else std(x_test).astype(np.float32)
  t_train, to_score = head_training.loss_targets(task, y_train)

  s = settings
  _, tx, train_block, predict, init = _compiled(task, width, s.hidden_dim, float(s.dropout),
                                                float(s.learning_rate), float(s.weight_decay))
  key = jax.random.PRNGKey(seed)
  init_key, dropout_key = jax.random.split(key)
  variables = init(init_key, z_train[:2])
  params, stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)
  # Jitted init and optax may hand back buffers that alias each other; the donated step needs
  # them distinct.
  params, stats, opt_state = jax.tree.map(jnp.array, (params, stats, opt_state))

  stream = head_training.index_stream(z_train.shape[0], seed)
  stopper = head_training.Stopper(higher_is_better=task != "regression", patience=s.patience)
  best = head_training.host_copy((params, stats))
  step = 0
  # Whole blocks only (max_steps rounds up): a shorter last block would compile a second shape.
  while step < s.max_steps and not stopper.done:
    idx = head_training.take_indices(stream, (s.eval_every_steps, s.batch_size))
    params, stats, opt_state, _ = train_block(params, stats, opt_state, z_train[idx],
                                              t_train[idx], dropout_key, step)
    step += s.eval_every_steps
    value = head_training.validation_criterion(
        task, y_val, to_score(_predict(predict, params, stats, z_val)))
    if stopper.update(step, value):
      best = head_training.host_copy((params, stats))
  final = head_training.host_copy((params, stats))
  val_scores = to_score(_predict(predict, best[0], best[1], z_val))
  test_scores = None if z_test is None else to_score(_predict(predict, best[0], best[1], z_test))
  return head_training.head_result(
      task, y_val=y_val, val_scores=val_scores, test_scores=test_scores, stopper=stopper,
      steps_run=step, best=best, final=final, n_train=z_train.shape[0],
      threshold_criterion=threshold_criterion, output=to_score, standardizer=std)
