"""Frozen-encoder embeddings of whole dataset splits, cached beside the probe as ``.npz``.

Every ECG of a split is embedded exactly once: the evaluation pipeline pads the last batch and
marks the real rows in ``mask``, the encoder runs under ``pmap`` over the local devices with its
BatchNorm running averages (``train=False``), and only masked-in rows are kept. Several
processes each embed their own slice and then exchange them, so every host ends with the whole
split in the pipeline's order. The count and the uniqueness of the ``ecg_id`` s are checked
against the dataset's split size; a mismatch is an error, never a silent gap.

A cache file ``<dir>/<split>.npz`` holds ``embedding`` (n, d) float32, ``ecg_id`` and
``patient_id`` as fixed-width unicode arrays, ``pcwp`` / ``age`` float32 (NaN unknown), ``sex``
int32 (-1 unknown), and 0-d text ``source`` (which weights), ``dataset`` and ``split``. It is
read with ``allow_pickle=False``; a file made by other weights or another dataset is recomputed.

Export (any split, e.g. the unlabeled pool, to ``<workdir>/embeddings/<split>.npz``)::

    python -m ssldml_jax.eval.embed --config=configs/probe.py --workdir=runs/emb \\
        --config.encoder_workdir=runs/ssl_dml_dtw --config.export_splits=unlabeled,test
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssldml_jax import atomic, cli, models, parallel, workdirs

FIELDS = ("embedding", "ecg_id", "patient_id", "pcwp", "age", "sex")
_META = ("source", "dataset", "split")
EMBEDDINGS_DIR = "embeddings"


@dataclasses.dataclass(frozen=True)
class Encoder:
  """A frozen encoder: its module (BatchNorm not mapped), weights, and the input it expects."""
  module: Any
  variables: dict                        # {'params': ..., 'batch_stats': ...} host arrays
  model_config: ml_collections.ConfigDict
  sampling_rate: Optional[int]           # Hz the encoder was trained at (None: the dataset's)
  bandpass: Optional[tuple]
  source: str                            # names the weights; part of every cache key
  workdir: Optional[str] = None          # the pretrain workdir (None: random init)
  step: Optional[int] = None             # its checkpoint step
  seed: int = 0                          # the seed it was pretrained (or initialised) with


@functools.lru_cache(maxsize=8)
def _init_fn(module: Any) -> Callable:
  """The jitted initialisation of ``module`` (compiled once per architecture)."""
  # The encoder pools over time, so its parameters do not depend on the length used here.
  x = jnp.zeros((2, 256, 12), jnp.float32)
  return jax.jit(lambda k: module.init({"params": k}, x, train=False))


def random_encoder(config: ml_collections.ConfigDict, seed: int) -> Encoder:
  """``config.model`` with freshly initialised weights: the "random encoder" baseline."""
  module = models.build_encoder(config.model, bn_axis_name=None)
  variables = _init_fn(module)(jax.random.PRNGKey(seed))
  variables = jax.tree.map(np.asarray, dict(variables))
  model = json.dumps(config.model.to_dict(), sort_keys=True, default=str)
  return Encoder(module=module, variables=variables, model_config=config.model,
                 sampling_rate=config.data.sampling_rate, bandpass=config.data.bandpass,
                 source=f"random init, seed {seed}, model {model}", seed=int(seed))


def pretrained_encoder(workdir: str) -> Encoder:
  """The newest checkpoint of a pretrain workdir (``train_lib.load_encoder``)."""
  from ssldml_jax import checkpoint, train_lib  # The trainer only when a checkpoint is read.

  workdir = os.path.abspath(workdir)
  if not os.path.isdir(workdir):
    raise cli.ConfigError(f"config.encoder_workdir={workdir!r} does not exist")
  try:
    module, variables, pre_config = train_lib.load_encoder(workdir)
  except (FileNotFoundError, checkpoint.CheckpointError) as e:
    raise cli.ConfigError(f"config.encoder_workdir={workdir!r}: {e}") from None
  meta = checkpoint.latest_readable_meta(workdir) or {}
  step = meta.get("step")
  return Encoder(module=module, variables=jax.tree.map(np.asarray, dict(variables)),
                 model_config=pre_config.model, sampling_rate=pre_config.data.sampling_rate,
                 bandpass=pre_config.data.bandpass,
                 source=f"{workdir} step {'?' if step is None else step}", workdir=workdir,
                 step=None if step is None else int(step), seed=int(pre_config.seed))


def load_encoder(config: ml_collections.ConfigDict) -> Encoder:
  """``config.encoder_workdir``'s encoder, or a random one (seed ``config.seed``) when None."""
  if config.encoder_workdir is None:
    return random_encoder(config, int(config.seed))
  return pretrained_encoder(config.encoder_workdir)


def data_config_for(config: ml_collections.ConfigDict,
                    encoder: Encoder) -> ml_collections.ConfigDict:
  """The probe's ``config.data`` with the sampling rate and band-pass the encoder was trained on.

  An encoder only makes sense on the input it learned from, so these follow the encoder even
  when the probe config says otherwise (a message says so).
  """
  data = ml_collections.ConfigDict(config.data.to_dict())
  for key, value in (("sampling_rate", encoder.sampling_rate), ("bandpass", encoder.bandpass)):
    if data[key] != value:
      print(f"probe: config.data.{key}={data[key]!r} replaced by the encoder's {value!r}",
            flush=True)
      data[key] = value
  return data


@functools.lru_cache(maxsize=8)
def make_embed_fn(module: Any) -> Callable:
  """``f(replicated_variables, ecg [devices, n, T, 12]) -> [devices, n, d]`` under ``pmap``.

  Cached per architecture (flax modules compare by their fields), so the encoders of a
  ``reproduce`` run, which share one, compile it once.
  """
  return jax.pmap(lambda variables, ecg: module.apply(variables, ecg, train=False),
                  axis_name=parallel.AXIS)


def map_batches(fn: Callable, ecg: np.ndarray, per_device: int) -> np.ndarray:
  """The outputs ``(n, ...)`` of a pmapped ``fn`` (``[devices, per_device, T, 12]`` ->
  ``[devices, per_device, ...]``) for every row of ``ecg`` ``(n, T, 12)``, taken as float32 in
  padded batches of ``per_device`` x the local devices (one compiled shape), padding dropped."""
  n_dev = jax.local_device_count()
  size = n_dev * per_device
  out = []
  for lo in range(0, ecg.shape[0], size):
    chunk = np.asarray(ecg[lo:lo + size], np.float32)
    padded = np.pad(chunk, ((0, size - chunk.shape[0]), (0, 0), (0, 0)))
    x = jax.device_put(padded.reshape((n_dev, per_device) + padded.shape[1:]),
                       parallel.device_sharding())
    value = np.asarray(fn(x))
    out.append(value.reshape((size,) + value.shape[2:])[:chunk.shape[0]])
  return np.concatenate(out)


def embed_array(embed_fn: Callable, replicated: Any, ecg: np.ndarray,
                per_device: int) -> np.ndarray:
  """Embeddings ``(n, d)`` float32 of ECGs ``(n, T, 12)`` (model input), in padded batches of
  ``per_device`` x the local devices (``map_batches``); ``replicated``: the encoder's variables
  from ``parallel.replicate``."""
  return map_batches(lambda x: embed_fn(replicated, x), ecg, per_device).astype(np.float32)


def _allgather_text(values: np.ndarray) -> np.ndarray:
  """Fixed-width unicode arrays of every process, stacked (as UCS-4 code points)."""
  from jax.experimental import multihost_utils

  width = int(np.max(multihost_utils.process_allgather(np.int32(max(values.dtype.itemsize // 4,
                                                                    1)))))
  codes = np.asarray(values, f"<U{width}").view(np.uint32).reshape(len(values), width)
  gathered = np.asarray(multihost_utils.process_allgather(codes))
  return gathered.reshape(-1, width).copy().view(f"<U{width}").reshape(-1)


def _allgather(arrays: dict) -> dict:
  """Each process's padded arrays (equal shapes: the pipeline pads to the same batch count)."""
  from jax.experimental import multihost_utils

  out = {}
  for key, value in arrays.items():
    if value.dtype.kind == "U":
      out[key] = _allgather_text(value)
    else:
      gathered = np.asarray(multihost_utils.process_allgather(value))
      out[key] = gathered.reshape((-1,) + value.shape[1:])
  return out


def embed_split(encoder: Encoder, data_config: ml_collections.ConfigDict, split: str, *,
                embed_fn: Optional[Callable] = None,
                progress: bool = False) -> dict[str, np.ndarray]:
  """Embeds every ECG of ``split`` once; returns the ``FIELDS`` arrays in the pipeline's order."""
  from ssldml_jax.data import pipeline  # Reads TFDS; imported when data is actually needed.

  embed_fn = embed_fn or make_embed_fn(encoder.module)
  batches = pipeline.make_eval_iterator(data_config, split)
  variables = parallel.replicate(encoder.variables)
  parts: dict[str, list] = {k: [] for k in FIELDS + ("mask",)}
  iterator = batches
  if progress and jax.process_index() == 0:
    from tqdm import tqdm
    iterator = tqdm(batches, total=len(batches), desc=f"embed {split}", unit="batch",
                    leave=False, dynamic_ncols=True)
  for batch in iterator:
    emb = embed_fn(variables, jax.device_put(batch["ecg"], parallel.device_sharding()))
    parts["embedding"].append(np.asarray(emb).reshape(-1, emb.shape[-1]))
    for key in FIELDS[1:] + ("mask",):
      parts[key].append(np.asarray(batch[key]).reshape(-1))
  if not parts["mask"]:
    raise RuntimeError(f"split {split!r} of {data_config.name}: the pipeline produced no batch")
  arrays = {k: np.concatenate(v) for k, v in parts.items()}
  for key in ("ecg_id", "patient_id"):
    arrays[key] = arrays[key].astype(str)
  if jax.process_count() > 1:
    arrays = _allgather(arrays)
  keep = arrays.pop("mask").astype(bool)
  out = {k: v[keep] for k, v in arrays.items()}
  out["embedding"] = out["embedding"].astype(np.float32)
  out["pcwp"] = out["pcwp"].astype(np.float32)
  out["age"] = out["age"].astype(np.float32)
  out["sex"] = out["sex"].astype(np.int32)
  _check_complete(out, data_config, split, encoder.source)
  return out


def _check_complete(out: dict, data_config: ml_collections.ConfigDict, split: str,
                    source: str) -> None:
  from ssldml_jax.data import pipeline

  expected = pipeline.dataset_info(data_config)["splits"][split]
  ids = out["ecg_id"]
  where = f"split {split!r} of {data_config.name}"
  if len(ids) != expected:
    raise RuntimeError(f"{where}: embedded {len(ids)} ECGs, the split has {expected}")
  unique, counts = np.unique(ids, return_counts=True)
  if unique.size != ids.size:
    raise RuntimeError(f"{where}: ecg_id {unique[counts > 1][0]!r} embedded "
                       f"{int(counts.max())} times ({int((counts > 1).sum())} repeated id(s))")
  bad = np.flatnonzero(~np.isfinite(out["embedding"]).all(axis=1))
  if bad.size:
    raise RuntimeError(f"{where}: {bad.size} embedding(s) are NaN/inf, first ECG "
                       f"{ids[bad[0]]!r}; the encoder ({source}) is broken")


def save_npz(path: str, arrays: dict[str, np.ndarray], *, source: str, dataset: str,
             split: str) -> str:
  """Writes the embeddings atomically (a killed run leaves no half-written cache)."""
  with atomic.replacing(path, suffix=".npz") as tmp:
    np.savez(tmp, **{k: np.asarray(arrays[k]) for k in FIELDS},
             source=np.asarray(source), dataset=np.asarray(dataset), split=np.asarray(split))
  return path


def load_npz(path: str) -> dict[str, Any]:
  """The arrays of ``FIELDS`` and the text metadata of a file written by ``save_npz``."""
  with np.load(path, allow_pickle=False) as f:
    missing = [k for k in FIELDS + _META if k not in f.files]
    if missing:
      raise ValueError(f"{path}: not an embeddings file (missing {', '.join(missing)})")
    out = {k: f[k] for k in FIELDS}
    out.update({k: str(f[k]) for k in _META})
  return out


def cached_split(encoder: Encoder, data_config: ml_collections.ConfigDict, split: str,
                 directory: str, *, embed_fn: Optional[Callable] = None,
                 progress: bool = True) -> dict[str, np.ndarray]:
  """``<directory>/<split>.npz`` if made by the same weights on the same dataset, else computed
  (and written by process 0)."""
  path = os.path.join(directory, f"{split}.npz")
  if os.path.isfile(path):
    try:
      cached = load_npz(path)
    except (OSError, ValueError) as e:
      print(f"embeddings: {path} is unreadable ({e}); recomputing", flush=True)
    else:
      if cached["source"] == encoder.source and cached["dataset"] == data_config.name:
        return {k: cached[k] for k in FIELDS}
      print(f"embeddings: {path} was made by other weights or data; recomputing", flush=True)
  out = embed_split(encoder, data_config, split, embed_fn=embed_fn, progress=progress)
  if jax.process_index() == 0:
    save_npz(path, out, source=encoder.source, dataset=data_config.name, split=split)
  return out


def export(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """Embeds ``config.export_splits`` into ``<workdir>/embeddings/<split>.npz``; returns paths."""
  from ssldml_jax.eval import probe_config

  splits = probe_config.split_list(config.export_splits)
  if not splits:
    raise cli.ConfigError("config.export_splits is empty; name the splits to export, e.g. "
                          "--config.export_splits=unlabeled,test")
  encoder = load_encoder(config)
  data_config = data_config_for(config, encoder)
  from ssldml_jax.data import pipeline

  available = pipeline.dataset_info(data_config)["splits"]
  unknown = [s for s in splits if s not in available]
  if unknown:
    raise cli.ConfigError(f"config.export_splits: {', '.join(map(repr, unknown))} not among the "
                          f"splits of {data_config.name} ({', '.join(sorted(available))})")
  embed_fn = make_embed_fn(encoder.module)
  directory = os.path.join(workdir, EMBEDDINGS_DIR)
  paths = []
  for split in splits:
    out = cached_split(encoder, data_config, split, directory, embed_fn=embed_fn)
    paths.append(os.path.join(directory, f"{split}.npz"))
    print(f"{split}: {out['embedding'].shape[0]} ECGs x {out['embedding'].shape[1]} dims -> "
          f"{paths[-1]}", flush=True)
  return paths


def main(config: ml_collections.ConfigDict, workdir: str) -> None:
  from absl import logging

  logging.set_verbosity(logging.ERROR)
  export(config, workdirs.prepare(workdir))


if __name__ == "__main__":
  parallel.initialize_distributed()
  cli.define_flags()
  cli.run(main)
