"""Full fine-tuning of a pretrained encoder with the paper's MLP head, on the raw ECGs.

The encoder starts from the frozen encoder's weights (or a random one, for the baseline row),
the head from a seeded initialisation; both are trained together under ``pmap`` over the local
devices with BatchNorm statistics averaged over the ``parallel.AXIS`` axis (so every device
normalises with the global batch and keeps the same running averages) and gradients averaged
with ``parallel.pmean``. Targets and early stopping follow ``head_training``, as in ``mlp_probe``:
BCE or MSE on the standardised mPCWP (or the loss of any probe target), validation AUROC / RMSE
after every ``eval_every_steps`` steps, the best parameters copied to host memory when they are
found, and a non-finite step skipped.

The labeled splits are small (thousands of ECGs), so they are read once into host memory
(``pipeline.read_split``, every ECG exactly once, in the pipeline's order) and minibatches of any
label fraction are drawn from there. Meant for a GPU/TPU; on a CPU only tiny models finish in time.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ssldml_jax import cli, models, parallel
from ssldml_jax.eval import embed, head_training, targets


@dataclasses.dataclass(frozen=True)
class FinetuneSettings(head_training.HeadSettings):
  """Fine-tuning's ``HeadSettings`` and its batch per device (``config.probe.finetune``; its
  ``seeds`` are the caller's business). ``dropout`` is the head's; the encoder keeps its own."""
  learning_rate: float = 1e-4
  max_steps: int = 2000
  eval_every_steps: int = 100
  patience: int = 5
  per_device_batch_size: int = 64


@functools.lru_cache(maxsize=8)
def _compiled(model_json: str, task: str, width: int, learning_rate: float, weight_decay: float,
              dropout: float):
  """Modules, optimiser and the pmapped train / predict steps of one architecture and task."""
  model_config = ml_collections.ConfigDict(json.loads(model_json))
  encoder = models.build_encoder(model_config, bn_axis_name=parallel.AXIS)
  dtype = models.DTYPES[model_config.dtype]
  head = models.ProbeHead(out_dim=head_training.out_dim(task, width), dropout=dropout,
                          bn_axis_name=parallel.AXIS, dtype=dtype)
  tx = optax.adamw(learning_rate, weight_decay=weight_decay)

  def forward(params, stats, x, key, train):
    k_enc, k_head = jax.random.split(key)
    variables = {"params": params["encoder"], "batch_stats": stats["encoder"]}
    if not train:
      emb = encoder.apply(variables, x, train=False)
      return head.apply({"params": params["head"], "batch_stats": stats["head"]}, emb,
                        train=False), stats
    emb, enc_upd = encoder.apply(variables, x, train=True, rngs={"dropout": k_enc},
                                 mutable=["batch_stats"])
    out, head_upd = head.apply({"params": params["head"], "batch_stats": stats["head"]}, emb,
                               train=True, rngs={"dropout": k_head}, mutable=["batch_stats"])
    return out, {"encoder": enc_upd["batch_stats"], "head": head_upd["batch_stats"]}

  def train_step(params, stats, opt_state, x, y, key, step):
    key = parallel.device_key(key, step)

    def loss_fn(p):
      out, new_stats = forward(p, stats, x, key, True)
      return head_training.task_loss(task, out, y), new_stats

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
  """Outputs for every row of ``ecg`` in padded ``[devices, per_device]`` batches
  (``embed.map_batches``): (n,) for one output, else (n, K)."""
  out = embed.map_batches(lambda x: p_predict(p_params, p_stats, x), ecg, per_device)
  return head_training.scores_of(out.astype(np.float64))


def predictor(model_config: ml_collections.ConfigDict, variables: dict,
              output: head_training.OutputMap, *, width: int,
              per_device_batch_size: int) -> Callable[[np.ndarray], np.ndarray]:
  """``f(ecg) -> scores`` of a fine-tuned model (``HeadResult.best_variables``, its output map)
  for raw ECGs ``(n, T, 12)`` millivolts at the encoder's rate, computed as in training. The
  variables are placed on the devices once, here, for every call of ``f``."""
  model_json = model_config.to_json(sort_keys=True)
  # The optimiser and dropout rate do not enter a prediction.
  _, _, _, _, p_predict, _ = _compiled(model_json, output.task, width, 0.0, 0.0, 0.0)
  p_params = parallel.replicate(variables["params"])
  p_stats = parallel.replicate(variables["batch_stats"])
  return lambda ecg: output(_predict(p_predict, p_params, p_stats, ecg, per_device_batch_size))


def require_single_process() -> None:
  """Fine-tuning feeds every local device from one host's copy of the labeled splits."""
  if jax.process_count() > 1:
    raise cli.ConfigError("config.probe.heads: 'finetune' runs in a single process (each host "
                          "would hold only its slice of the labeled cohort); run the probe on one "
                          "host, or leave 'finetune' out")


def finetune(encoder: embed.Encoder, train: dict, val: dict, test: Optional[dict] = None, *,
             task: Union[str, targets.Target], seed: int = 0,
             settings: FinetuneSettings = FinetuneSettings(), pcwp_threshold: float = 18.0,
             threshold_criterion: str = "f1") -> head_training.HeadResult:
  """Fine-tunes encoder + head on ``train`` (``pipeline.read_split`` arrays with the target's
  feature, possibly a subset). ``task``: a probe target, or the spec of one of mPCWP's
  (``'binary'``: > ``pcwp_threshold``, ``'regression'``); its labels come from
  ``targets.values``."""
  target = task if isinstance(task, targets.Target) else targets.parse(task, pcwp_threshold)
  task, width = target.kind, target.width

  def labels(split: dict, name: str) -> np.ndarray:
    known = targets.known(split, target)
    if not known.all():
      raise ValueError(f"{name}: {int((~known).sum())} ECG(s) without a {target.name} label")
    return head_training.check_targets(task, name, targets.values(split, target), known.size,
                                       width)

  y_train, y_val = labels(train, "train"), labels(val, "validation")
  t_train, to_score = head_training.loss_targets(task, y_train)

  s = settings
  model_json = encoder.model_config.to_json(sort_keys=True)
  _, _, tx, p_train, p_predict, init_head = _compiled(model_json, task, width,
                                                      float(s.learning_rate),
                                                      float(s.weight_decay), float(s.dropout))
  key = jax.random.PRNGKey(seed)
  head_key, run_key = jax.random.split(key)
  head_vars = init_head(head_key, jnp.zeros((2, encoder.model_config.embedding_dim)))
  params = {"encoder": encoder.variables["params"], "head": head_vars["params"]}
  stats = {"encoder": encoder.variables.get("batch_stats", {}), "head": head_vars["batch_stats"]}
  # Never train on the frozen encoder's own arrays.
  params, stats = head_training.host_copy((params, stats))
  opt_state = tx.init(params)
  p_params, p_stats, p_opt = (parallel.replicate(t) for t in
                              (params, stats, head_training.host_copy(opt_state)))

  n_dev = jax.local_device_count()
  stream = head_training.index_stream(train["ecg"].shape[0], seed)
  stopper = head_training.Stopper(higher_is_better=target.higher_is_better, patience=s.patience)
  best = head_training.host_copy(parallel.unreplicate((p_params, p_stats)))
  step, skipped = 0, 0
  sharding = parallel.device_sharding()
  while step < s.max_steps and not stopper.done:
    for _ in range(s.eval_every_steps):
      idx = head_training.take_indices(stream, (n_dev, s.per_device_batch_size))
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
    if stopper.update(step, head_training.validation_criterion(task, y_val, to_score(out))):
      best = head_training.host_copy(parallel.unreplicate((p_params, p_stats)))
  final = head_training.host_copy(parallel.unreplicate((p_params, p_stats)))
  b_params, b_stats = parallel.replicate(best[0]), parallel.replicate(best[1])
  val_scores = to_score(_predict(p_predict, b_params, b_stats, val["ecg"],
                                 s.per_device_batch_size))
  test_scores = None if test is None else to_score(
      _predict(p_predict, b_params, b_stats, test["ecg"], s.per_device_batch_size))
  return head_training.head_result(
      task, y_val=y_val, val_scores=val_scores, test_scores=test_scores, stopper=stopper,
      steps_run=step, best=best, final=final, n_train=train["ecg"].shape[0],
      threshold_criterion=threshold_criterion, output=to_score)


def subset(split: dict, indices: np.ndarray) -> dict:
  return {k: v[indices] for k, v in split.items()}


def variables_of(result: head_training.HeadResult) -> dict[str, Any]:
  """The fine-tuned encoder's variables (to embed with it, e.g. for a projection plot)."""
  v = result.best_variables
  return {"params": v["params"]["encoder"], "batch_stats": v["batch_stats"]["encoder"]}
