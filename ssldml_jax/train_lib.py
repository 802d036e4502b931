"""The pretrain trainer: ``train_and_evaluate(config, workdir)`` and ``load_encoder(workdir)``.

The loop feeds device-shaped batches from the input pipeline to the method's step
(``ssldml_jax.steps``) compiled with ``pmap`` or ``shard_map`` (``config.train.parallel``), logs
(``ssldml_jax.metrics_log``) and checkpoints (``ssldml_jax.checkpoint``). A run started on a
workdir that holds checkpoints resumes from the newest readable one, with the train state, the
run's RNG key and the input-stream position, so a killed run that is started again ends with the
same parameters, bit for bit, as one never interrupted. The position is the same on every process,
so a run may also resume on another number of processes (or hosts) with the same global batch.

Workdir layout: ``config.json``, ``metrics.jsonl``, ``tensorboard/``, ``checkpoints/<step>/``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
from absl import flags, logging
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from ssldml_jax import checkpoint, cli, methods, metrics_log, models, parallel, steps
from ssldml_jax import preemption, workdirs
from ssldml_jax.data import pipeline


class NonFiniteError(RuntimeError):
  """Too many consecutive steps with a non-finite loss or gradient; the message says where."""


# --- Config -------------------------------------------------------------------------------------

def validate_train(config: ml_collections.ConfigDict) -> None:
  """Checks ``config.train`` and ``config.seed``; raises ``cli.ConfigError``."""
  cli.check_int(config, "seed", 0)
  cli.check_choice(config, "train.parallel", ("pmap", "shard_map"))
  if config.train.parallel == "shard_map" and jax.process_count() > 1:
    raise cli.ConfigError("config.train.parallel='shard_map' maps over this process's devices "
                          "only; use 'pmap' for multi-process runs")
  cli.check_int(config, "train.num_steps", 1, allow_none=True)  # when set, overrides epochs
  cli.check_int(config, "train.num_epochs", 1)
  for key in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
              "max_consecutive_nonfinite"):
    cli.check_int(config, f"train.{key}", 1)
  cli.check_int(config, "train.eval_every_steps", 1, allow_none=True)
  cli.check_int(config, "train.eval_batches", 0)
  for key in ("progress_bar", "async_checkpoints"):
    cli.check_choice(config, f"train.{key}", (True, False))


def validate_config(config: ml_collections.ConfigDict) -> methods.Method:
  """Every key a pretraining reads, each section by its owner; returns the method."""
  method = methods.get(cli.get_path(config, "method"))
  if not method.pretrains:
    raise cli.ConfigError(f"config.method={method.name!r} is not trained (the baseline row of "
                          "the probe tables); choose one of "
                          + ", ".join(repr(n) for n in methods.names(pretrained_only=True)))
  pipeline.validate(config)
  models.validate(config)
  steps.validate_optim(config)
  validate_train(config)
  method.validate(config)
  return method


def train_split_key(config: ml_collections.ConfigDict) -> str:
  """The ``config.data`` key of the split a method trains on: the labeled training split if it
  uses labels, else the pretraining pool."""
  return "train_split" if methods.get(config.method).uses_labels else "pretrain_split"


def check_splits(config: ml_collections.ConfigDict, info: dict) -> None:
  """The splits this run reads exist in the dataset; the error names the config key."""
  keys = [train_split_key(config)] + (["validation_split"] if config.train.eval_batches else [])
  for key in keys:
    split = config.data[key]
    if split not in info["splits"]:
      raise cli.ConfigError(f"config.data.{key}={split!r} is not a split of {info['name']} "
                            f"(has {', '.join(sorted(info['splits']))})")


def label_records(config: ml_collections.ConfigDict) -> tuple[Optional[np.ndarray], str]:
  """``(record indices, name)`` of the label row ``config.task.train_labels`` of the labeled
  training split (``(None, 'all')`` for '100%'), drawn as the probe with seed
  ``task.train_labels_seed`` draws it (``subsets.train_label_rows`` on the labeled ECGs' patient
  ids in record order, the order in which the probe embeds them)."""
  from ssldml_jax.data import reader
  from ssldml_jax.eval import subsets

  row, seed = config.task.train_labels, int(config.task.train_labels_seed)
  if row == subsets.FULL:
    return None, "all"
  labels = reader.read_labels(pipeline.load_builder(config.data), config.data.train_split)
  labeled = np.flatnonzero(np.isfinite(labels["pcwp"]))
  try:
    rows = subsets.train_label_rows(labels["patient_id"][labeled], row, seed)
  except ValueError as e:
    raise cli.ConfigError(f"config.task.train_labels={row!r}: {e}") from None
  return labeled[rows], f"{row} seed {seed}"


def num_train_steps(config: ml_collections.ConfigDict, info: dict,
                    num_records: Optional[int] = None) -> int:
  """``train.num_steps``, else ``num_epochs`` passes over the training split (or over its
  ``num_records`` of a label row)."""
  if config.train.num_steps is not None:
    return int(config.train.num_steps)
  split = config.data[train_split_key(config)]
  size = info["splits"][split] if num_records is None else num_records
  per_epoch = pipeline.steps_per_epoch(size, config.data)
  return int(config.train.num_epochs) * max(per_epoch, 1)


# --- Compiled steps -----------------------------------------------------------------------------

def _map(fn: Callable, mode: str, donate: bool) -> Callable:
  """``fn`` over the local devices: every input and output carries a leading device axis.

  ``pmap`` maps it directly; ``shard_map`` splits the same leading axis over a one-axis mesh and
  each device drops (then restores) its size-1 slice, so both modes take the same arrays.
  """
  donate_argnums = (0,) if donate else ()
  if mode == "pmap":
    return jax.pmap(fn, axis_name=parallel.AXIS, donate_argnums=donate_argnums)

  def per_device(*args):
    out = fn(*jax.tree.map(lambda x: x[0], args))
    return jax.tree.map(lambda x: jnp.asarray(x)[None], out)

  # check_vma=False: pmap's semantics (every value per device), which the step is written for;
  # the DTW wavefront's loop carries are not typed as device-varying.
  mapped = jax.shard_map(per_device, mesh=parallel.local_mesh(), in_specs=P(parallel.AXIS),
                         out_specs=P(parallel.AXIS), check_vma=False)
  return jax.jit(mapped, donate_argnums=donate_argnums)


# Keys that change what a step computes, besides what the method reads. Keys elsewhere
# (logging, checkpoints, data paths, step counts) do not, so runs that differ only there share one
# compiled program.
_PROGRAM_KEYS = ("method", "model", "optim", "data.sampling_rate", "train.parallel")
_DATA_ONLY_TASK_KEYS = ("train_labels", "train_labels_seed")


class Program:
  """What a config compiles to: models, optimiser, schedule, the per-device steps and their
  mapped, compiled forms (compiled on first call)."""

  def __init__(self, config: ml_collections.ConfigDict, total_steps: int):
    self.config = config
    self.models = steps.build_models(config)
    self.tx, self.schedule = steps.make_optimizer(config, total_steps)
    self.per_device_train_step = steps.make_train_step(config, self.models, self.tx,
                                                       self.schedule)
    self.per_device_eval_step = steps.make_eval_step(config, self.models)
    mode = config.train.parallel
    self.train_step = _map(self.per_device_train_step, mode, donate=True)
    self.eval_step = _map(self.per_device_eval_step, mode, donate=False)
    # Initialisation runs once: on CPU, compile it for compile speed (4x faster, same values).
    fast = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    self._init = jax.jit(functools.partial(steps.init_state, config, self.models, self.tx),
                         static_argnums=(1,), compiler_options=fast)

  def init_state(self, key: jax.Array, num_samples: int) -> steps.TrainState:
    return self._init(key, num_samples)


@functools.lru_cache(maxsize=8)
def _program(key_json: str, total_steps: int, num_devices: int) -> Program:
  del num_devices  # Part of the cache key only: a mapped step is traced for a device count.
  return Program(ml_collections.ConfigDict(json.loads(key_json)), total_steps)


def build_program(config: ml_collections.ConfigDict, total_steps: int) -> Program:
  """The program of a config, shared by runs in one process that differ only in keys that do
  not change the step (a resumed run in a test, the jobs of ``reproduce``): each compiles once."""
  key = methods.project(config, _PROGRAM_KEYS + methods.get(config.method).reads)
  if "task" in key:  # which labels a run trains on does not change its step
    with key.unlocked():
      for leaf in _DATA_ONLY_TASK_KEYS:
        if leaf in key.task:
          del key.task[leaf]
  schedule_depends_on_total = config.optim.schedule == "cosine"
  key_json = key.to_json(sort_keys=True)
  return _program(key_json, total_steps if schedule_depends_on_total else 0,
                  jax.local_device_count())


# --- Host side ----------------------------------------------------------------------------------

def device_batch(batch: dict, *, sharding: Optional[jax.sharding.Sharding] = None) -> dict:
  """A pipeline batch as the step takes it: string ids dropped, an int32 ``patient_key`` added."""
  out = dict(pipeline.device_arrays(batch))
  out["patient_key"] = steps.patient_keys(batch["patient_id"])
  return jax.device_put(out, sharding or parallel.device_sharding())


def first_replica(tree: Any) -> Any:
  """Device 0's copy of a replicated (leading device axis) tree, as host arrays.

  Reads the first shard directly: indexing ``x[0]`` would compile a gather per leaf shape.
  """
  return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)


def _state_tree(state: steps.TrainState, rng: jax.Array) -> dict:
  """The checkpointed tree: plain nested dicts of arrays."""
  return {"train_state": flax.serialization.to_state_dict(state), "rng": rng}


def _from_tree(template: steps.TrainState, tree: dict) -> tuple[steps.TrainState, jax.Array]:
  return flax.serialization.from_state_dict(template, tree["train_state"]), tree["rng"]


def _mean_metrics(history: list[dict]) -> dict:
  """Mean of each metric (host arrays) over the steps that were applied; skipped steps are
  counted apart."""
  skipped = [float(h["nonfinite"][0]) for h in history]
  good = [h for h, s in zip(history, skipped) if not s]
  keys = [k for k in history[-1] if k not in ("nonfinite", "nonfinite_streak")]
  out = {k: float(np.mean([h[k][0] for h in good])) if good else float("nan") for k in keys}
  out["nonfinite_steps"] = float(sum(skipped))
  return out


def evaluate(program: Program, p_state: Any, p_rng: jax.Array, config: ml_collections.ConfigDict,
             split: str, max_batches: int) -> dict:
  """The method's loss (and its other metrics) on up to ``max_batches`` of ``split``, weighted by
  the real (unpadded) examples of each batch."""
  totals: dict[str, float] = {}
  weight = 0.0
  for i, batch in enumerate(pipeline.make_eval_iterator(config.data, split)):
    if i >= max_batches:
      break
    real = float(np.sum(batch["mask"]))
    real = float(multihost_utils.process_allgather(np.float32(real)).sum()) \
        if jax.process_count() > 1 else real
    if real == 0:
      continue
    metrics = jax.device_get(program.eval_step(p_state, device_batch(batch), p_rng))
    for key, value in metrics.items():
      totals[key] = totals.get(key, 0.0) + real * float(value[0])
    weight += real
  return {k: v / weight for k, v in totals.items()} if weight else {}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Pretrains ``config.method`` in ``workdir`` (resuming there if it holds a checkpoint).

  Returns the last logged training metrics and the final evaluation (keys ``eval/...``). Raises
  ``cli.ConfigError`` for a bad config or workdir, ``NonFiniteError`` after
  ``train.max_consecutive_nonfinite`` skipped steps in a row, and
  ``checkpoint.CheckpointError`` when the workdir's checkpoints are all unreadable; and
  ``cli.RunError``s: ``locks.LockHeld`` when another run uses the workdir,
  ``preemption.Preempted`` after a checkpoint saved on SIGTERM, ``atomic.DiskFullError``,
  ``integrity.DamagedDataError``.
  """
  method = validate_config(config)
  with workdirs.exclusive(workdir) as workdir, preemption.notice() as notice:
    return _train_and_evaluate(config, method, workdir, notice)


def _train_and_evaluate(config: ml_collections.ConfigDict, method: methods.Method, workdir: str,
                        notice: preemption.Notice) -> dict:
  is_chief = jax.process_index() == 0
  info = pipeline.dataset_info(config.data)
  check_splits(config, info)
  records, subset = label_records(config) if method.uses_labels else (None, "all")
  total = num_train_steps(config, info, None if records is None else records.size)
  global_batch = config.data.per_device_batch_size * jax.device_count()
  program = build_program(config, total)

  init_key, run_key = jax.random.split(jax.random.PRNGKey(config.seed))
  state = program.init_state(init_key, info["num_samples"])
  with contextlib.ExitStack() as cleanup:
    ckpts = checkpoint.Checkpoints(workdir, keep=config.train.keep_checkpoints,
                                   async_save=config.train.async_checkpoints)
    cleanup.callback(ckpts.close)
    train_iter = pipeline.make_train_iterator(config.data, seed=config.seed,
                                              split=config.data[train_split_key(config)],
                                              require_pcwp=method.uses_labels, records=records,
                                              subset=subset)
    cleanup.callback(train_iter.close)
    start = 0
    restored = ckpts.restore_latest(_state_tree(state, run_key))
    if restored is not None:
      start, tree, meta = restored
      state, run_key = _from_tree(state, tree)
      # One input position for all processes, whatever their number then and now.
      try:
        train_iter.set_state(str(meta["data_state"]).encode("utf-8"))
      except (KeyError, ValueError) as e:
        raise cli.ConfigError(f"the checkpoint at step {start} in {ckpts.directory} cannot "
                              f"resume this config's input: {e}") from None
    if is_chief:
      metrics_log.write_config(workdir, config)
    log = metrics_log.MetricsLog(workdir, total_steps=total, initial_step=start,
                                 examples_per_step=global_batch,
                                 progress_bar=config.train.progress_bar, enabled=is_chief)
    cleanup.callback(log.close)
    log.message(f"{config.method}: {'resuming at' if start else 'starting'} step {start} of "
                f"{total} in {workdir} ({jax.device_count()} device(s), global batch "
                f"{global_batch}, {info['num_samples']} samples at {info['sampling_rate']} Hz)")
    if records is not None:
      log.message(f"{config.method}: trains on the {records.size} labeled ECGs of label row "
                  f"{subset} only" + (f", fewer than the global batch of {global_batch}: each "
                                      "batch repeats them" if records.size < global_batch else ""))

    def save(step: int, p_state: Any) -> None:
      host_state = first_replica(p_state)
      ckpts.save(step, _state_tree(host_state, run_key),
                 {"data_state": train_iter.get_state().decode("utf-8"),
                  "total_steps": total, "num_samples": info["num_samples"],
                  "method": config.method})

    p_state, p_rng = parallel.replicate(state), parallel.replicate(run_key)
    history: list[dict] = []
    last = {}
    mark = (time.perf_counter(), start)
    for step in range(start + 1, total + 1):
      batch = device_batch(next(train_iter))
      p_state, metrics = program.train_step(p_state, batch, p_rng)
      metrics = jax.device_get(metrics)  # Waits for the step, so the guard below is exact.
      history.append(metrics)
      streak = int(metrics["nonfinite_streak"][0])
      if streak:
        log.message(f"step {step}: non-finite loss or gradient, update skipped "
                    f"({streak} in a row)")
        if streak >= config.train.max_consecutive_nonfinite:
          ckpts.wait()
          good = ckpts.steps()
          raise NonFiniteError(
              f"stopped at step {step}: {streak} consecutive steps with a non-finite loss or "
              f"gradient (config.train.max_consecutive_nonfinite="
              f"{config.train.max_consecutive_nonfinite}); the last checkpoint, "
              + (f"step {good[-1]} in {ckpts.directory}, is intact" if good else "none, was kept")
              + "; lower config.optim.learning_rate or set config.optim.grad_clip_norm")
      if step % config.train.log_every_steps == 0 or step == total:
        now = time.perf_counter()
        last = _mean_metrics(history)
        rate = (step - mark[1]) / max(now - mark[0], 1e-9)
        last.update(steps_per_sec=rate, ecg_per_sec=rate * global_batch)
        log.write(step, last)
        history, mark = [], (now, step)
      log.progress(step)
      stop = notice.requested()  # a collective across processes: asked once per step
      if stop or step % config.train.checkpoint_every_steps == 0 or step == total:
        save(step, p_state)
      if stop:
        ckpts.wait()
        raise preemption.Preempted(
            f"preemption notice (SIGTERM) at step {step} of {total}: saved checkpoint step "
            f"{step} in {ckpts.directory}; run the same command to resume")
      every = config.train.eval_every_steps
      if every and step % every == 0 and step != total:
        _log_eval(log, step, evaluate_all(program, p_state, p_rng, config))
    final = evaluate_all(program, p_state, p_rng, config)
    _log_eval(log, total, final)
    last.update(final)
  return last


def evaluate_all(program: Program, p_state: Any, p_rng: jax.Array,
                 config: ml_collections.ConfigDict) -> dict:
  """``eval/<split>/<metric>`` on ``config.data.validation_split`` (none if 0 batches)."""
  if not config.train.eval_batches:
    return {}
  split = config.data.validation_split
  metrics = evaluate(program, p_state, p_rng, config, split, config.train.eval_batches)
  return {f"eval/{split}/{k}": v for k, v in metrics.items()}


def _log_eval(log: metrics_log.MetricsLog, step: int, metrics: dict) -> None:
  if metrics:
    log.write(step, metrics)
    log.message(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())))


# --- For the probe trainer ------------------------------------------------------------------------

def load_encoder(workdir: str) -> tuple[Any, dict, ml_collections.ConfigDict]:
  """``(model, variables, config)`` of the newest checkpoint of a pretrain ``workdir``.

  ``model`` is the encoder (BatchNorm not mapped over devices), ``variables`` its ``params``
  and ``batch_stats`` (host arrays), so ``model.apply(variables, x, train=False)`` embeds ECGs.
  Reads without writing, so it is safe while the run is still going.
  """
  config = metrics_log.read_config(workdir)
  meta = checkpoint.latest_readable_meta(workdir)
  if meta is None:
    raise FileNotFoundError(f"no checkpoint in {checkpoint.checkpoint_dir(workdir)}")
  mods = steps.build_models(config, bn_axis_name=None)
  tx, _ = steps.make_optimizer(config, int(meta.get("total_steps", 1)))
  init_key, run_key = jax.random.split(jax.random.PRNGKey(config.seed))
  # Shapes are all a restore needs: no initialisation is computed.
  shapes = jax.eval_shape(functools.partial(steps.init_state, config, mods, tx,
                                            num_samples=int(meta.get("num_samples", 64))),
                          init_key)
  template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  ckpts = checkpoint.Checkpoints(workdir, read_only=True)
  try:
    restored = ckpts.restore_latest(_state_tree(template, run_key))
  finally:
    ckpts.close()
  if restored is None:
    raise FileNotFoundError(f"no checkpoint in {checkpoint.checkpoint_dir(workdir)}")
  state, _ = _from_tree(template, restored[1])
  variables = {"params": state.params["encoder"], "batch_stats": state.batch_stats["encoder"]}
  return mods.encoder, variables, config


def main(config: ml_collections.ConfigDict, workdir: str) -> None:
  """``train_and_evaluate`` with its expected failures as one line on stderr and exit status 1.

  absl logs at WARNING unless ``--verbosity`` is given: orbax's INFO lines would bury the
  progress bar.
  """
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    train_and_evaluate(config, workdir)
  except (NonFiniteError, checkpoint.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
