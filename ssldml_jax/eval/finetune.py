"""Full fine-tuning of a pretrained encoder with the paper's MLP head, on the raw ECGs.

The encoder starts from the frozen encoder's weights (or a random one, for the baseline row),
the head from a seeded initialisation; both are trained together under ``pmap`` over the local
devices with BatchNorm statistics averaged over the ``parallel.AXIS`` axis (so every device
normalises with the global batch and keeps the same running averages) and gradients averaged
with ``parallel.pmean``. Targets and early stopping follow ``mlp_probe``: BCE or MSE on the
standardised mPCWP, validation AUROC / RMSE after every ``eval_every_steps`` steps, the best
parameters copied to host memory when they are found, and a non-finite step skipped.

The labeled splits are small (thousands of ECGs), so they are read once into host memory
(``load_split``, every ECG exactly once, in the pipeline's order) and minibatches of any label
fraction are drawn from there. Meant for a GPU/TPU; on a CPU only tiny models finish in time.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ssldml_jax import cli, models, parallel
from ssldml_jax.eval import embed, metrics as metrics_lib
from ssldml_jax.eval.mlp_probe import (HeadResult, Stopper, check_targets, host_copy,
                                       index_stream, take_indices, task_loss,
                                       validation_criterion)

LABEL_FIELDS = ("ecg_id", "patient_id", "pcwp", "age", "sex")


@dataclasses.dataclass(frozen=True)
class FinetuneSettings:
  learning_rate: float = 1e-4
  weight_decay: float = 1e-4
  per_device_batch_size: int = 64
  max_steps: int = 2000          # rounded up to whole blocks of eval_every_steps
  eval_every_steps: int = 100
  patience: int = 5
  dropout: float = 0.3           # the head's, as the paper's MLP probe; the encoder's is its own

  @classmethod
  def from_config(cls, c: ml_collections.ConfigDict) -> "FinetuneSettings":
    """From ``config.probe.finetune`` (its ``seeds`` are the caller's business)."""
    return cls(**{f.name: c[f.name] for f in dataclasses.fields(cls)})


def load_split(data_config: ml_collections.ConfigDict, split: str) -> dict[str, np.ndarray]:
  """``ecg`` (n, T, 12) float32 and the label fields of every ECG of ``split``, read once."""
  from ssldml_jax.data import pipeline

  if jax.process_count() > 1:
    raise cli.ConfigError("config.probe.heads: 'finetune' runs in a single process (each host "
                          "would hold only its slice of the labeled cohort); run the probe on one "
                          "host, or leave 'finetune' out")
  parts: dict[str, list] = {k: [] for k in ("ecg", "mask") + LABEL_FIELDS}
  for batch in pipeline.make_eval_iterator(data_config, split):
    for key in parts:
      value = np.asarray(batch[key])
      parts[key].append(value.reshape((-1,) + value.shape[2:]))
  arrays = {k: np.concatenate(v) for k, v in parts.items()}
  keep = arrays.pop("mask").astype(bool)
  out = {k: v[keep] for k, v in arrays.items()}
  expected = pipeline.dataset_info(data_config)["splits"][split]
  if len(out["ecg_id"]) != expected:
    raise RuntimeError(f"split {split!r} of {data_config.name}: read {len(out['ecg_id'])} ECGs, "
                       f"the split has {expected}")
  return out


@functools.lru_cache(maxsize=8)
def _compiled(model_json: str, task: str, learning_rate: float, weight_decay: float,
              dropout: float):
  """Modules, optimiser and the pmapped train / predict steps of one architecture and task."""
  model_config = ml_collections.ConfigDict(json.loads(model_json))
  encoder = models.build_encoder(model_config, bn_axis_name=parallel.AXIS)
  dtype = models.DTYPES[model_config.dtype]
  head = models.ProbeHead(out_dim=1, dropout=dropout, bn_axis_name=parallel.AXIS, dtype=dtype)
  tx = optax.adamw(learning_rate, weight_decay=weight_decay)

  def forward(params, stats, x, key, train):
    k_enc, k_head = jax.random.split(key)
    variables = {"params": params["encoder"], "batch_stats": stats["encoder"]}
    if not train:
      emb = encoder.apply(variables, x, train=False)
      return head.apply({"params": params["head"], "batch_stats": stats["head"]}, emb,
                        train=False).reshape(-1), stats
    emb, enc_upd = encoder.apply(variables, x, train=True, rngs={"dropout": k_enc},
                                 mutable=["batch_stats"])
    out, head_upd = head.apply({"params": params["head"], "batch_stats": stats["head"]}, emb,
                               train=True, rngs={"dropout": k_head}, mutable=["batch_stats"])
    return out.reshape(-1), {"encoder": enc_upd["batch_stats"], "head": head_upd["batch_stats"]}

  def train_step(params, stats, opt_state, x, y, key, step):
    key = parallel.device_key(key, step)

    def loss_fn(p):
      out, new_stats = forward(p, stats, x, key, True)
      return task_loss(task, out, y), new_stats

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    grads = parallel.pmean(grads)
    loss = parallel.pmean(loss)
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    leaves = jax.tree.leaves((loss, grads, new_stats))
    ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in leaves]))
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
    return (keep(new_params, params), keep(new_stats, stats), keep(new_opt, opt_state), loss,
            (~ok).astype(jnp.int32))

  def predict(params, stats, x):
    return forward(params, stats, x, jax.random.PRNGKey(0), False)[0]

  p_train = jax.pmap(train_step, axis_name=parallel.AXIS, donate_argnums=(0, 1, 2),
                     in_axes=(0, 0, 0, 0, 0, None, None))
  p_predict = jax.pmap(predict, axis_name=parallel.AXIS)

  @jax.jit
  def init_head(key, emb):
    return head.init({"params": key}, emb, train=False)

  return encoder, head, tx, p_train, p_predict, init_head


def _predict(p_predict, p_params, p_stats, ecg: np.ndarray, per_device: int) -> np.ndarray:
  """Outputs for every row of ``ecg`` in padded ``[devices, per_device]`` batches."""
  n_dev = jax.local_device_count()
  size = n_dev * per_device
  out = []
  for lo in range(0, ecg.shape[0], size):
    chunk = ecg[lo:lo + size]
    padded = np.pad(chunk, ((0, size - chunk.shape[0]), (0, 0), (0, 0)))
    x = jax.device_put(padded.reshape((n_dev, per_device) + padded.shape[1:]),
                       parallel.device_sharding())
    out.append(np.asarray(p_predict(p_params, p_stats, x)).reshape(-1)[:chunk.shape[0]])
  return np.concatenate(out).astype(np.float64)


def finetune(encoder: embed.Encoder, train: dict, val: dict, test: Optional[dict] = None, *,
             task: str, seed: int = 0, settings: FinetuneSettings = FinetuneSettings(),
             pcwp_threshold: float = 18.0, threshold_criterion: str = "f1") -> HeadResult:
  """Fine-tunes encoder + head on ``train`` (``load_split`` arrays, possibly a subset)."""
  if task not in ("binary", "regression"):
    raise ValueError(f"task={task!r} is not allowed; choose 'binary' or 'regression'")

  def target(split: dict, name: str) -> np.ndarray:
    pcwp = metrics_lib.check_scores(f"{name} pcwp", split["pcwp"])
    return check_targets(task, name, pcwp > pcwp_threshold if task == "binary" else pcwp,
                         pcwp.size)

  y_train, y_val = target(train, "train"), target(val, "validation")
  if task == "binary":
    t_train = y_train.astype(np.float32)
    to_score = lambda out: 1.0 / (1.0 + np.exp(-out))  # noqa: E731
  else:
    mean, scale = float(y_train.mean()), float(y_train.std()) or 1.0
    t_train = ((y_train - mean) / scale).astype(np.float32)
    to_score = lambda out: out * scale + mean  # noqa: E731

  s = settings
  model_json = encoder.model_config.to_json(sort_keys=True)
  _, _, tx, p_train, p_predict, init_head = _compiled(model_json, task, float(s.learning_rate),
                                                      float(s.weight_decay), float(s.dropout))
  key = jax.random.PRNGKey(seed)
  head_key, run_key = jax.random.split(key)
  head_vars = init_head(head_key, jnp.zeros((2, encoder.model_config.embedding_dim)))
  params = {"encoder": encoder.variables["params"], "head": head_vars["params"]}
  stats = {"encoder": encoder.variables.get("batch_stats", {}), "head": head_vars["batch_stats"]}
  params, stats = host_copy((params, stats))  # never train on the frozen encoder's own arrays
  opt_state = tx.init(params)
  p_params, p_stats, p_opt = (parallel.replicate(t) for t in (params, stats, host_copy(opt_state)))

  n_dev = jax.local_device_count()
  stream = index_stream(train["ecg"].shape[0], seed)
  stopper = Stopper(higher_is_better=task == "binary", patience=s.patience)
  best = host_copy(parallel.unreplicate((p_params, p_stats)))
  step, skipped = 0, 0
  sharding = parallel.device_sharding()
  while step < s.max_steps and not stopper.done:
    for _ in range(s.eval_every_steps):
      idx = take_indices(stream, (n_dev, s.per_device_batch_size))
      x = jax.device_put(train["ecg"][idx], sharding)
      y = jax.device_put(t_train[idx], sharding)
      p_params, p_stats, p_opt, _, bad = p_train(p_params, p_stats, p_opt, x, y, run_key, step)
      step += 1
      skipped += int(bad[0])
    if skipped == step:
      raise FloatingPointError(f"fine-tuning ({task}, seed {seed}): all {step} steps had a "
                               "non-finite loss or gradient; lower config.probe.finetune."
                               "learning_rate")
    out = _predict(p_predict, p_params, p_stats, val["ecg"], s.per_device_batch_size)
    if stopper.update(step, validation_criterion(task, y_val, to_score(out))):
      best = host_copy(parallel.unreplicate((p_params, p_stats)))
  final = host_copy(parallel.unreplicate((p_params, p_stats)))
  b_params, b_stats = parallel.replicate(best[0]), parallel.replicate(best[1])
  val_scores = to_score(_predict(p_predict, b_params, b_stats, val["ecg"],
                                 s.per_device_batch_size))
  test_scores = None if test is None else to_score(
      _predict(p_predict, b_params, b_stats, test["ecg"], s.per_device_batch_size))
  threshold = (metrics_lib.choose_threshold(y_val, val_scores, threshold_criterion)
               if task == "binary" else None)
  return HeadResult(task=task, val_scores=val_scores, test_scores=test_scores,
                    threshold=threshold, best_step=stopper.best_step, steps_run=step,
                    history=tuple(stopper.history),
                    best_variables={"params": best[0], "batch_stats": best[1]},
                    final_variables={"params": final[0], "batch_stats": final[1]},
                    n_train=int(train["ecg"].shape[0]))


def subset(split: dict, indices: np.ndarray) -> dict:
  return {k: v[indices] for k, v in split.items()}


def variables_of(result: HeadResult) -> dict[str, Any]:
  """The fine-tuned encoder's variables (to embed with it, e.g. for a projection plot)."""
  v = result.best_variables
  return {"params": v["params"]["encoder"], "batch_stats": v["batch_stats"]["encoder"]}
