"""The grain input pipeline: TFDS array_record splits to device-shaped host batches.

Training batches come from one record stream that every process computes alike: all records of
the split, in a new permutation every epoch (grain's index shuffle, from the seed), epochs back to
back. Global batch k is the next ``G`` records of the stream (``G`` = per-device batch x all
devices), and each process reads only its own rows of it: process ``p`` the ``L`` records
``[p L, (p + 1) L)`` (``L`` = per-device batch x its local devices), which is where they lie in the
device-major global batch that mining gathers. So the records of a global batch, and their place
on the global devices, depend on the seed, the stream position and ``G`` only: 2 processes of 2
devices see the batches of 1 process of 4, and a run may resume on another process count. grain
transforms decode int16 microvolts to float32 millivolts, resample to
``config.data.sampling_rate``, optionally band-pass, and shape ``[local_devices,
per_device_batch, T, 12]``. Only the end of a finite run drops a remainder, so an epoch is about
``steps_per_epoch`` batches. grain prepares batches ahead of the consumer: ``config.data.prefetch``
of them in a background thread, or in each of ``config.data.num_workers`` worker processes.
``get_state()`` is the stream position after the last batch *handed out* (not the last one
prefetched), the same on every process, so a checkpoint resumes mid-epoch exactly.

Damaged data stops the run with an ``integrity.DamagedDataError`` that names the dataset, the
split and the file (and the record where known), raised in the consumer's thread: damaged shards
and features are found when a split is opened (``reader.Records``), a record that does not
decode when it is read.

Evaluation batches visit every example of a split exactly once over all processes: each process
takes a contiguous slice, the last batch is padded to full shape and ``mask`` marks the real rows,
and every process yields the same number of batches (extra ones fully masked) so that collective
steps stay in lockstep.

``read_split`` holds a whole (small, labeled) split in host memory: the evaluation batches of one
process, unpadded. Records are decoded by ``reader.Records``, shared with every other reader.

Batch dict: ``ecg`` float32, ``pcwp`` / ``age`` float32 (NaN unknown), ``sex`` int32 (-1 unknown),
``mask`` bool (all True in training), ``ecg_id`` / ``patient_id`` numpy str arrays (host only: drop
them before ``jax.device_put``), every array with the leading ``[devices, per_device]`` axes.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Iterator, Optional

from absl import flags
import grain
import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from ssldml_jax import cli
from ssldml_jax.data import build, reader, records

HOST_ONLY_KEYS = ("ecg_id", "patient_id")
_LABEL_KEYS = ("pcwp", "age", "sex")


# --- Config -------------------------------------------------------------------------------------

def _settings(data_config: ml_collections.ConfigDict, stored_rate: Optional[int] = None) -> dict:
  """Checks the ``config.data`` keys the pipeline reads; bad values name their key.

  Called once before the dataset is opened (or built), so that a typo fails at once, and again
  with the stored rate, which ``sampling_rate=None`` stands for.
  """
  c = data_config
  wrapped = ml_collections.ConfigDict({"data": c})
  for key, low in (("per_device_batch_size", 1), ("eval_per_device_batch_size", 1),
                   ("num_workers", 0), ("prefetch", 0)):
    cli.check_int(wrapped, f"data.{key}", low)
  rate = cli.get_path(wrapped, "data.sampling_rate")
  if rate is None:
    rate = stored_rate
  elif not (isinstance(rate, int) and rate >= 1):
    raise cli.ConfigError(f"config.data.sampling_rate={rate!r} must be a positive integer (Hz)")
  band = cli.get_path(wrapped, "data.bandpass")
  if band is not None:
    nyquist = math.inf if rate is None else rate / 2
    ok = (isinstance(band, (tuple, list)) and len(band) == 2
          and all(isinstance(b, (int, float)) for b in band) and 0 < band[0] < band[1] < nyquist)
    if not ok:
      raise cli.ConfigError(f"config.data.bandpass={band!r} must be None or (low_hz, high_hz) "
                            f"with 0 < low < high < {rate / 2:g} (Nyquist at {rate} Hz)")
    band = (float(band[0]), float(band[1]))
  _worker_ready(c.num_workers)
  if rate is not None:
    rate = int(rate)
  return {"rate": rate, "bandpass": band, "shuffle": bool(c.shuffle),
          "per_device": c.per_device_batch_size, "eval_per_device": c.eval_per_device_batch_size,
          "num_workers": c.num_workers, "prefetch": c.prefetch}


SPLIT_KEYS = ("pretrain_split", "train_split", "validation_split", "test_split")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks ``config.data``; raises ``cli.ConfigError`` naming the first bad key.

  Split names are checked against the dataset when it is opened (``dataset_info``).
  """
  name = cli.get_path(config, "data.name")
  if not isinstance(name, str) or not name:
    raise cli.ConfigError(f"config.data.name={name!r} must be a dataset name such as "
                          "'ecg_synth/default'")
  data_dir = cli.get_path(config, "data.data_dir")
  if data_dir is not None and not isinstance(data_dir, str):
    raise cli.ConfigError(f"config.data.data_dir={data_dir!r} must be a directory or None")
  for key in SPLIT_KEYS:
    split = cli.get_path(config, f"data.{key}")
    if not isinstance(split, str) or not split:
      raise cli.ConfigError(f"config.data.{key}={split!r} must be a split name")
  for key in ("shuffle", "build_if_missing"):
    cli.check_choice(config, f"data.{key}", (True, False))
  _settings(config.data)


def _worker_ready(num_workers: int) -> None:
  """grain's worker processes read absl flags; outside an absl program they hold their defaults."""
  if num_workers and not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def load_builder(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The builder of ``config.data.name``, built first when missing and ``build_if_missing``."""
  try:
    return build.ensure_built(data_config.name, data_config.get("data_dir"),
                              build_if_missing=bool(data_config.get("build_if_missing", True)))
  except (build.DatasetError, records.BadRecordError) as e:
    # BadRecordError: a real dataset that needs --manual_dir cannot be built on the fly.
    raise cli.ConfigError(f"config.data.name={data_config.name!r}: {e}") from None


def _model_num_samples(num_samples: int, rate_in: int, rate_out: int) -> int:
  return records.resample(np.zeros((num_samples, 1), np.float32), rate_in, rate_out).shape[0]


def _check_split(builder: tfds.core.DatasetBuilder, split: str, key: str) -> int:
  splits = builder.info.splits
  if split not in splits:
    raise cli.ConfigError(f"{key}={split!r} is not a split of {builder.info.full_name} (has "
                          f"{', '.join(sorted(splits))})")
  return int(splits[split].num_examples)


def dataset_info(data_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Examples per split and the record shape the model sees (after resampling)."""
  _settings(data_config)
  builder = load_builder(data_config)
  stored_rate, stored_samples = reader.stored_format(builder)
  settings = _settings(data_config, stored_rate)
  return {
      "name": builder.info.full_name,
      "data_dir": str(builder.data_dir),
      "splits": {name: int(split.num_examples) for name, split in builder.info.splits.items()},
      "sampling_rate": settings["rate"],
      "num_samples": _model_num_samples(stored_samples, stored_rate, settings["rate"]),
      "stored_sampling_rate": stored_rate,
      "stored_num_samples": stored_samples,
      "leads": records.LEADS,
  }


def steps_per_epoch(num_examples: int, data_config: ml_collections.ConfigDict, *,
                    num_devices: Optional[int] = None, process_count: Optional[int] = None) -> int:
  """Training batches per epoch of a split of ``num_examples`` (remainders are dropped)."""
  num_devices = num_devices or jax.local_device_count()
  process_count = process_count or jax.process_count()
  return (num_examples // process_count) // (num_devices * data_config.per_device_batch_size)


# --- Transforms ---------------------------------------------------------------------------------

def _example(record: dict) -> dict:
  """The fields of a decoded record that a batch carries."""
  return {key: record[key] for key in ("ecg", "ecg_id", "patient_id") + _LABEL_KEYS}


class _ToDeviceBatch(grain.transforms.Map):
  """A stacked batch to model input: millivolts at the model rate, padded, ``[devices, n, ...]``."""

  def __init__(self, *, stored_rate: int, rate: int, bandpass: Optional[tuple[float, float]],
               num_devices: int, per_device: int):
    self._stored_rate, self._rate, self._bandpass = stored_rate, rate, bandpass
    self._num_devices, self._per_device = num_devices, per_device

  def map(self, batch: dict) -> dict:
    ecg = records.model_input(batch["ecg"], self._stored_rate, self._rate, self._bandpass)
    out = {"ecg": ecg, "mask": np.ones(len(ecg), bool)}
    for key in _LABEL_KEYS + HOST_ONLY_KEYS:
      out[key] = batch[key]
    return _to_devices(_pad(out, self._num_devices * self._per_device), self._num_devices)


def _pad(batch: dict, size: int) -> dict:
  """Pads every field to ``size`` rows; padded rows have ``mask`` False, NaN labels, '' ids."""
  missing = size - len(batch["mask"])
  if missing <= 0:
    return batch
  fill = {"ecg": 0.0, "mask": False, "pcwp": np.nan, "age": np.nan, "sex": records.SEX_UNKNOWN,
          "ecg_id": "", "patient_id": ""}
  return {key: np.concatenate([value, np.full((missing,) + value.shape[1:], fill[key],
                                              value.dtype)])
          for key, value in batch.items()}


def _to_devices(batch: dict, num_devices: int) -> dict:
  return {key: value.reshape((num_devices, -1) + value.shape[1:]) for key, value in batch.items()}


def _empty_batch(num_devices: int, per_device: int, num_samples: int) -> dict:
  """A batch of padding only (``mask`` all False): what a process with nothing left yields."""
  size = num_devices * per_device
  batch = {"ecg": np.zeros((0, num_samples, records.NUM_LEADS), np.float32),
           "mask": np.zeros(0, bool), "pcwp": np.zeros(0, np.float32),
           "age": np.zeros(0, np.float32), "sex": np.zeros(0, np.int32),
           "ecg_id": np.zeros(0, "<U1"), "patient_id": np.zeros(0, "<U1")}
  return _to_devices(_pad(batch, size), num_devices)


# --- The training stream ---------------------------------------------------------------------

# Batches offered by an endless training iterator: far more than any run takes, small enough that
# stream positions stay exact integers.
_ENDLESS_BATCHES = 2**40


class _LocalBatches:
  """This process's rows of each global batch of the training stream, one item per batch.

  Item ``i`` is global batch ``i`` after stream position ``start``: the records at positions
  ``start + i G + p L + r`` for ``r < L``, stacked. An item is a whole batch (not a record) so
  that grain's worker processes, which take items in turn, hand the batches back in order.
  """

  def __init__(self, records: reader.Records, *, shuffle: bool, seed: int, start: int,
               global_batch: int, local_batch: int, process_index: int, num_batches: int):
    self._records = records
    order = grain.MapDataset.range(len(records))
    # Indexing past the end continues into the next epoch, with the permutation of that epoch.
    self._order = order.shuffle(seed=seed) if shuffle else order
    self._first = start + process_index * local_batch
    self._global_batch, self._local_batch = global_batch, local_batch
    self._num_batches = num_batches

  def __len__(self) -> int:
    return self._num_batches

  def __getitem__(self, index: int) -> dict:
    first = self._first + int(index) * self._global_batch
    examples = [_example(self._records[self._order[position]])
                for position in range(first, first + self._local_batch)]
    return {key: np.stack([e[key] for e in examples]) for key in examples[0]}

  def __repr__(self) -> str:
    return f"LocalBatches({self._records!r}, first={self._first}, n={self._num_batches})"


# --- Iteration ----------------------------------------------------------------------------------

def _prefetched(dataset: grain.MapDataset, prefetch: int, num_workers: int) -> Iterator[dict]:
  """Iterates ``dataset`` with grain preparing elements ahead of the consumer: ``prefetch`` of
  them in one background thread (none when 0), or in each of ``num_workers`` worker processes.

  An element's error is raised by ``next()`` in the consumer's thread.
  """
  read = grain.ReadOptions(num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch)
  iterable = dataset.to_iter_dataset(read)
  if num_workers:
    iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=max(prefetch, 1)))
  iterator = iter(iterable)
  iterator.start_prefetch()  # Now rather than at the first next(): overlaps with compiling.
  return iterator


class Batches:
  """Batches of a grain dataset, prepared ahead; a training stream's also tell their position.

  ``make_dataset(start)`` makes the ``grain.MapDataset`` of the batches from stream position
  ``start`` (None: no batches); a position advances ``stride`` records a batch (the global
  batch). ``stream`` names the stream (dataset, split, records, seed, shuffle) in the state, so
  that a state is only ever set on an iterator of the same stream. ``num_examples``: the records
  of the split per epoch, over all processes; ``steps_per_epoch``: the global batches they make
  (after ``require_pcwp`` filtering, unlike a count from ``dataset_info``).
  """

  def __init__(self, make_dataset: Callable[[int], Optional[grain.MapDataset]], *,
               prefetch: int, num_workers: int, stride: int = 0, stream: Optional[dict] = None,
               num_examples: int = 0, batch_size: int = 1):
    self._make_dataset = make_dataset
    self._prefetch, self._num_workers = prefetch, num_workers
    self._stride, self._stream = stride, stream or {}
    self.num_examples = num_examples
    self.steps_per_epoch = num_examples // batch_size
    self._iterator: Iterator[dict] = iter(())
    self._start(0)

  def _start(self, position: int) -> None:
    self._position = position
    dataset = self._make_dataset(position)
    self._iterator = iter(()) if dataset is None else _prefetched(dataset, self._prefetch,
                                                                 self._num_workers)

  def __iter__(self) -> "Batches":
    return self

  def __next__(self) -> dict:
    batch = next(self._iterator)
    self._position += self._stride
    return batch

  def get_state(self) -> bytes:
    """JSON bytes: the stream position after the last batch returned (the same on every
    process, whatever their number)."""
    return json.dumps({"position": self._position, "stream": self._stream}).encode("utf-8")

  def set_state(self, state: bytes) -> None:
    """Continues from a ``get_state()`` of an iterator over the same stream (any process count
    or batch size: the next batch starts at the stored position)."""
    try:
      saved = json.loads(state)
      position, stream = int(saved["position"]), saved["stream"]
    except (ValueError, TypeError, KeyError) as e:
      raise ValueError(f"not a training-stream state ({type(e).__name__}: {e})") from None
    if stream != self._stream:
      differ = sorted(k for k in set(stream) | set(self._stream)
                      if stream.get(k) != self._stream.get(k))
      raise ValueError("the stored input position belongs to another record stream ("
                       + ", ".join(f"{k} {stream.get(k)!r} there, {self._stream.get(k)!r} here"
                                   for k in differ) + ")")
    self.close()
    self._start(position)

  def close(self) -> None:
    """Stops grain's prefetching (its thread or worker processes)."""
    close = getattr(self._iterator, "close", None)
    if close is not None:
      close()
    self._iterator = iter(())


# --- Entry points -------------------------------------------------------------------------------

def _process(process_index: Optional[int], process_count: Optional[int]) -> tuple[int, int]:
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if not 0 <= index < count:
    raise ValueError(f"process_index {index} is outside [0, {count})")
  return index, count


def _known_pcwp(source: Any) -> np.ndarray:
  """Indices of the records whose pcwp is known (reads the split once)."""
  return np.array([i for i in range(len(source)) if np.isfinite(source[i]["pcwp"])], np.int64)


def make_train_iterator(data_config: ml_collections.ConfigDict, *, seed: int,
                        split: Optional[str] = None, num_epochs: Optional[int] = None,
                        require_pcwp: bool = False, records: Optional[np.ndarray] = None,
                        subset: str = "", num_devices: Optional[int] = None,
                        process_index: Optional[int] = None,
                        process_count: Optional[int] = None) -> Batches:
  """Shuffled, drop-remainder training batches of ``split`` (``config.data.pretrain_split``).

  ``num_epochs=None`` repeats forever. ``require_pcwp`` keeps only records with a known mPCWP
  (the supervised methods: ``split='train'``). ``records``: train on these record indices of the
  split only (a label subset, named ``subset`` in the stream state); such a subset may hold
  fewer records than a global batch: it is then tiled into the smallest whole number of copies
  that fills one, so that every batch holds each of its records about equally often (and
  grain's shuffle, which costs tens of milliseconds per new epoch, turns over once a batch, not
  several times). The returned iterator has ``get_state()`` / ``set_state(bytes)`` and
  ``close()``.
  """
  builder = load_builder(data_config)
  stored_rate, _ = reader.stored_format(builder)
  settings = _settings(data_config, stored_rate)
  key = "split" if split else "config.data.pretrain_split"
  split = split or data_config.pretrain_split
  _check_split(builder, split, key)
  num_devices = num_devices or jax.local_device_count()
  index, count = _process(process_index, process_count)

  source = reader.Records(builder, split)
  name = "all"
  if records is not None:
    records = np.asarray(records, np.int64)
    if records.size == 0 or records.min() < 0 or records.max() >= len(source):
      raise ValueError(f"records: {records.size} indices, which must be non-empty and lie in "
                       f"[0, {len(source)}) (split {split!r})")
    name = subset or f"{records.size} records"
    source = source.subset(records, name)
  if require_pcwp:
    known = _known_pcwp(source)
    if records is not None:
      if known.size != len(source):
        raise ValueError(f"records: {len(source) - known.size} of the {len(source)} records of "
                         f"subset {name!r} have no mPCWP")
    else:
      name = "known_pcwp"
      source = source.subset(known, name)
  local_batch = num_devices * settings["per_device"]
  global_batch = local_batch * count
  if records is not None and len(source) < global_batch:
    source = source.subset(np.tile(records, -(-global_batch // len(source))), name)
  if len(source) < global_batch:
    raise cli.ConfigError(
        f"config.data.per_device_batch_size={settings['per_device']} x {num_devices * count} "
        f"devices = {global_batch} exceeds the {len(source)} training examples of "
        f"{builder.info.full_name} split {split!r}"
        + (" with a known pcwp" if require_pcwp else ""))
  seed = int(seed) % 2**32
  to_batch = _ToDeviceBatch(stored_rate=stored_rate, rate=settings["rate"],
                            bandpass=settings["bandpass"], num_devices=num_devices,
                            per_device=settings["per_device"])

  def make_dataset(start: int) -> Optional[grain.MapDataset]:
    if num_epochs is None:
      num_batches = _ENDLESS_BATCHES
    else:
      num_batches = max(num_epochs * len(source) - start, 0) // global_batch
    if not num_batches:
      return None
    batches = _LocalBatches(source, shuffle=settings["shuffle"], seed=seed, start=start,
                            global_batch=global_batch, local_batch=local_batch,
                            process_index=index, num_batches=num_batches)
    return grain.MapDataset.source(batches).map(to_batch)

  stream = {"dataset": builder.info.full_name, "split": split, "records": len(source),
            "subset": name, "seed": seed,
            "shuffle": settings["shuffle"]}
  return Batches(make_dataset, prefetch=settings["prefetch"], num_workers=settings["num_workers"],
                 stride=global_batch, stream=stream, num_examples=len(source),
                 batch_size=global_batch)


class EvalBatches:
  """Every example of a split exactly once over all processes, in padded, masked batches.

  Iterable any number of times (each pass starts from the first example); ``len()`` is the
  number of batches, the same on every process.
  """

  def __init__(self, builder: tfds.core.DatasetBuilder, split: str, settings: dict, *,
               num_devices: int, process_index: int, process_count: int):
    stored_rate, stored_samples = reader.stored_format(builder)
    self._settings, self._num_devices = settings, num_devices
    self._stored_rate = stored_rate
    self._num_samples = _model_num_samples(stored_samples, stored_rate, settings["rate"])
    total = _check_split(builder, split, "split")
    mine = np.array_split(np.arange(total), process_count)[process_index]
    self.num_examples = len(mine)
    self._batch_size = num_devices * settings["eval_per_device"]
    largest = math.ceil(total / process_count)
    self._num_batches = math.ceil(largest / self._batch_size)
    self._source = reader.Records(builder, split, mine,
                                  f"process{process_index}of{process_count}")

  def __len__(self) -> int:
    return self._num_batches

  def __iter__(self) -> Iterator[dict]:
    produced = 0
    if len(self._source):
      dataset = (grain.MapDataset.source(self._source).map(_example)
                 .batch(self._batch_size, drop_remainder=False)
                 .map(_ToDeviceBatch(stored_rate=self._stored_rate, rate=self._settings["rate"],
                                     bandpass=self._settings["bandpass"],
                                     num_devices=self._num_devices,
                                     per_device=self._settings["eval_per_device"])))
      batches = Batches(lambda start: dataset, prefetch=self._settings["prefetch"],
                        num_workers=self._settings["num_workers"])
      try:
        for batch in batches:
          produced += 1
          yield batch
      finally:
        batches.close()
    for _ in range(self._num_batches - produced):
      yield _empty_batch(self._num_devices, self._settings["eval_per_device"], self._num_samples)


def make_eval_iterator(data_config: ml_collections.ConfigDict, split: str, *,
                       num_devices: Optional[int] = None, process_index: Optional[int] = None,
                       process_count: Optional[int] = None) -> EvalBatches:
  """Padded evaluation batches of ``split`` (``config.data.eval_per_device_batch_size``)."""
  _settings(data_config)
  builder = load_builder(data_config)
  stored_rate, _ = reader.stored_format(builder)
  index, count = _process(process_index, process_count)
  return EvalBatches(builder, split, _settings(data_config, stored_rate),
                     num_devices=num_devices or jax.local_device_count(), process_index=index,
                     process_count=count)


def read_split(data_config: ml_collections.ConfigDict, split: str) -> dict[str, np.ndarray]:
  """Every ECG of ``split`` in host memory, in record order, as the model sees it (the evaluation
  batches unpadded): ``ecg`` (n, T, 12) float32 and the label fields of ``reader.LABEL_FIELDS``.

  For the small labeled splits (thousands of ECGs); this process reads the whole split, whatever
  the process count.
  """
  batches = make_eval_iterator(data_config, split, process_index=0, process_count=1)
  parts: dict[str, list] = {k: [] for k in ("ecg", "mask") + reader.LABEL_FIELDS}
  for batch in batches:
    for key in parts:
      value = np.asarray(batch[key])
      parts[key].append(value.reshape((-1,) + value.shape[2:]))
  arrays = {k: np.concatenate(v) for k, v in parts.items()}
  keep = arrays.pop("mask").astype(bool)
  out = {k: v[keep] for k, v in arrays.items()}
  if len(out["ecg_id"]) != batches.num_examples:
    raise RuntimeError(f"split {split!r} of {data_config.name}: read {len(out['ecg_id'])} ECGs, "
                       f"the split has {batches.num_examples}")
  return out


def device_arrays(batch: dict) -> dict:
  """The part of a batch that goes to the devices (drops the host-only string ids)."""
  return {key: value for key, value in batch.items() if key not in HOST_ONLY_KEYS}

