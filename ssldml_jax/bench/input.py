"""Input pipeline throughput: array_record shards through grain vs one HDF5 file per ECG.

``python -m ssldml_jax.bench input [--data_dir=DIR] [--ecgs=N] [--files=N] [--batch=64]
[--resample_to=500] [--repeats=N] [--quick] [--no_record]``

This project: ``pipeline.make_train_iterator`` over ``ecg_synth`` (250 Hz x 10 s records, split
``unlabeled``), everything it does per batch: read, decode int16 microvolts to float32
millivolts, resample (when the model's rate differs), batch and shape for the devices. Without
``--data_dir`` the dataset (``ecg_synth/default``, about 8,000 ECGs, 450 MB) is built into a
temporary directory first and removed at the end; with it, an existing build is reused.

Peer: the reference code's way. The same ECGs, written as one HDF5 file per ECG with one dataset
per lead, are read back file by file; each lead is linearly interpolated (``np.interp``) to the
target length, the leads stacked, the ECGs stacked into batches. Both run in one Python process
from the page cache (files just written or read), so the figures measure CPU cost, not disk.

A second pair of rows resamples: the pipeline converts the 250 Hz records to ``--resample_to``
Hz (polyphase, ``records.resample``), the peer interpolates to that many samples.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Iterator, Optional, Sequence

import ml_collections
import numpy as np

from ssldml_jax import cli, config_defaults
from ssldml_jax.bench import common
from ssldml_jax.data import build, pipeline, records

DATASET = "ecg_synth/default"
QUICK_DATASET = "ecg_synth/tiny"
SPLIT = "unlabeled"
GOAL_ECG_PER_S = 5000.0
GOAL_RATIO = 10.0


def data_config(name: str, data_dir: str, *, batch: int,
                rate: Optional[int]) -> ml_collections.ConfigDict:
  """``config.data`` as a training run would have it, with this benchmark's dataset and batch."""
  c = config_defaults.base_config().data
  c.name, c.data_dir, c.pretrain_split = name, data_dir, SPLIT
  c.per_device_batch_size = batch
  c.sampling_rate = rate
  c.build_if_missing = False
  return c


def pipeline_rate(config: ml_collections.ConfigDict, num_ecgs: int, *, seed: int = 0,
                  warmup_batches: int = 2) -> float:
  """ECG/s of ``make_train_iterator`` (one device) over ``num_ecgs`` after a warm-up."""
  batches = pipeline.make_train_iterator(config, seed=seed, num_devices=1)
  try:
    for _ in range(warmup_batches):
      next(batches)
    done, start = 0, time.perf_counter()
    while done < num_ecgs:
      done += next(batches)["ecg"].shape[1]
    return done / (time.perf_counter() - start)
  finally:
    batches.close()


def first_ecgs(config: ml_collections.ConfigDict, n: int) -> Iterator[np.ndarray]:
  """The first ``n`` ECGs of the split, float32 millivolts at the stored rate."""
  left = n
  for batch in pipeline.make_eval_iterator(config, SPLIT, num_devices=1):
    for ecg in batch["ecg"][0][batch["mask"][0]]:
      if left == 0:
        return
      left -= 1
      yield ecg


def write_hdf5_files(ecgs: Iterator[np.ndarray], directory: str) -> list[str]:
  """One HDF5 file per ECG, one float32 dataset per lead (named as in ``records.LEADS``)."""
  import h5py
  paths = []
  for i, ecg in enumerate(ecgs):
    path = os.path.join(directory, f"ecg{i:06d}.h5")
    with h5py.File(path, "w") as f:
      for j, lead in enumerate(records.LEADS):
        f.create_dataset(lead, data=np.ascontiguousarray(ecg[:, j]))
    paths.append(path)
  return paths


def read_hdf5_ecg(path: str, num_samples: int) -> np.ndarray:
  """The reference code's per-ECG read: every lead from the file, interpolated, stacked."""
  import h5py
  with h5py.File(path, "r") as f:
    leads = [f[lead][()] for lead in records.LEADS]
  out = []
  for lead in leads:
    grid = np.linspace(0, len(lead) - 1, num_samples)
    out.append(np.interp(grid, np.arange(len(lead)), lead))
  return np.stack(out, axis=1).astype(np.float32)


def hdf5_rate(paths: Sequence[str], num_samples: int, *, batch: int, seed: int = 0) -> float:
  """ECG/s of reading ``paths`` in a shuffled order in batches (the remainder is dropped)."""
  order = np.random.default_rng(seed).permutation(len(paths))
  usable = len(order) - len(order) % batch
  start = time.perf_counter()
  for s in range(0, usable, batch):
    np.stack([read_hdf5_ecg(paths[i], num_samples) for i in order[s:s + batch]])
  return usable / (time.perf_counter() - start)


def measure(name: str, data_dir: str, *, num_ecgs: int, num_files: int, batch: int,
            resample_to: Optional[int], repeats: int, workdir: str) -> list[dict]:
  """The pipeline and the per-file way at the stored rate and, optionally, resampled."""
  stored = data_config(name, data_dir, batch=batch, rate=None)
  info = pipeline.dataset_info(stored)
  rate, samples = info["stored_sampling_rate"], info["stored_num_samples"]
  available = info["splits"][SPLIT]
  num_files = min(num_files, available)
  if num_files < batch:
    raise ValueError(f"--files={num_files}: {name} split {SPLIT!r} has {available} ECGs, and "
                     f"at least one batch of {batch} is needed")
  print(f"  {name}: {available} ECGs in {SPLIT!r}, {rate} Hz x {samples} samples; writing "
        f"{num_files} HDF5 files ...", flush=True)
  start = time.perf_counter()
  paths = write_hdf5_files(first_ecgs(stored, num_files), workdir)
  print(f"  wrote {len(paths)} HDF5 files in {time.perf_counter() - start:.1f} s", flush=True)

  rows = []
  targets = [rate] + ([resample_to] if resample_to and resample_to != rate else [])
  for target in targets:
    config = data_config(name, data_dir, batch=batch, rate=target)
    num_samples = pipeline.dataset_info(config)["num_samples"]
    ours, peer = [], []
    for r in range(repeats):  # Alternated, so that a passing load weighs on both alike.
      ours.append(pipeline_rate(config, num_ecgs, seed=r))
      peer.append(hdf5_rate(paths, num_samples, batch=batch, seed=r))
    ours_rate, peer_rate = float(np.median(ours)), float(np.median(peer))
    case = f"{rate} Hz records" + (f" -> {target} Hz" if target != rate else "")
    print(f"  {case}: pipeline {ours_rate:,.0f} ECG/s, HDF5 per file {peer_rate:,.0f} ECG/s "
          f"(medians of {repeats})", flush=True)
    rows.append({"benchmark": "input", "case": f"{case}, batch {batch}",
                 "ours_s": 1.0 / ours_rate, "peer": "HDF5 file per ECG + np.interp",
                 "peer_s": 1.0 / peer_rate, "ratio": ours_rate / peer_rate,
                 "note": f"{ours_rate:,.0f} vs {peer_rate:,.0f} ECG/s"})
  return rows


def main(args: Optional[Sequence[str]] = None) -> list[dict]:
  parser = common.arg_parser("input", __doc__)
  parser.add_argument("--data_dir", default=None,
                      help="where ecg_synth is (built there if missing); default: a temporary "
                           "directory, removed at the end")
  parser.add_argument("--ecgs", type=int, default=4096, help="ECGs timed per pipeline pass")
  parser.add_argument("--files", type=int, default=2048, help="HDF5 files written and read")
  parser.add_argument("--batch", type=int, default=64, help="ECGs per batch")
  parser.add_argument("--resample_to", type=int, default=500,
                      help="also time resampling the 250 Hz records to this rate (0: skip)")
  parser.add_argument("--repeats", type=int, default=3, help="passes of each; the median counts")
  a = common.parse_args(parser, args,
                        quick="ecg_synth/tiny (100 Hz), few ECGs: seconds, for a smoke run",
                        positive=("ecgs", "files", "batch", "repeats"))
  if a.quick:
    name, a.ecgs, a.files, a.batch, a.repeats = QUICK_DATASET, 128, 64, 16, 1
  else:
    name = DATASET
  print(common.machine_line(["h5py", "grain"]), flush=True)
  print(common.load_line(), flush=True)
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()  # The build's progress bars would bury the figures.
  scratch = tempfile.mkdtemp(prefix="ssldml_bench_input_")
  try:
    data_dir = a.data_dir or os.path.join(scratch, "data")
    start = time.perf_counter()
    build.ensure_built(name, data_dir)
    print(f"  dataset ready in {time.perf_counter() - start:.1f} s ({data_dir})", flush=True)
    files = os.path.join(scratch, "hdf5")
    os.makedirs(files)
    rows = measure(name, data_dir, num_ecgs=a.ecgs, num_files=a.files, batch=a.batch,
                   resample_to=a.resample_to or None, repeats=a.repeats, workdir=files)
  except (build.DatasetError, records.BadRecordError, cli.ConfigError, ValueError) as e:
    raise SystemExit(f"bench input: {e}") from None
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  if not a.quick:  # The goals are for 250 Hz records.
    main_row = rows[0]
    met = 1.0 / main_row["ours_s"] >= GOAL_ECG_PER_S and main_row["ratio"] >= GOAL_RATIO
    main_row["goal"] = (f">= {GOAL_ECG_PER_S:,.0f} ECG/s and >= {GOAL_RATIO:g}x: "
                        + ("met" if met else "NOT met"))
  common.print_comparison(rows, "input pipeline (time per ECG)")
  print(common.load_line(), flush=True)
  if not (a.quick or a.no_record):
    common.record("input", {"rows": rows})
  return rows
