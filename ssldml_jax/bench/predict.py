"""``predict`` throughput on ECG files: reading and checking vs. the model, and a per-file loop.

``python -m ssldml_jax.bench predict [--ecgs=N] [--width=64] [--per_device_batch_size=32]
[--repeats=N] [--quick] [--no_record]``

This project: ``ssldml_jax.predict.run`` on a folder of N WFDB records (10 s at 500 Hz, 12 leads
with PTB-XL's lead names) and a saved probe (a random ResNet-18 encoder at 250 Hz and a linear
head on its embeddings): every file read, checked and resampled to 250 Hz as a build record,
then embedded under ``pmap`` in padded batches and scored. Its own clock splits the time into
reading / checking / resampling and the model (encoder and head).

Peer: the per-file loop a user would write around the same model: ``wfdb.rdrecord``, leads
picked by name, ``scipy.signal.resample_poly`` to 250 Hz, then the same jitted encoder and head
on that one ECG. Both are checked to give the same scores (1e-4) before timing; both run in one
process from the page cache (files just written), so the figures measure CPU, not disk.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
import time
from typing import Optional, Sequence

import numpy as np

from ssldml_jax.bench import common

RATE_IN, RATE_MODEL = 500, 250
LEAD_NAMES = ("I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")


def write_records(directory: str, n: int, seed: int = 0) -> list[str]:
  """``n`` WFDB records of 10 s at 500 Hz: a few sines per lead plus noise (millivolts)."""
  import wfdb

  rng = np.random.default_rng(seed)
  t = np.arange(10 * RATE_IN) / RATE_IN
  paths = []
  for i in range(n):
    freq = rng.uniform(0.8, 2.0, 12)
    x = (0.5 * np.sin(2 * np.pi * freq * t[:, None] + rng.uniform(0, 6, 12))
         + 0.1 * np.sin(2 * np.pi * 8 * freq * t[:, None]) + rng.normal(0, 0.02, (t.size, 12)))
    name = f"ecg{i:05d}"
    wfdb.wrsamp(name, fs=RATE_IN, units=["mV"] * 12, sig_name=list(LEAD_NAMES), p_signal=x,
                fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12,
                write_dir=directory)
    paths.append(os.path.join(directory, name))
  return paths


def saved_probe(root: str, width: int, stage_sizes: Optional[tuple] = None) -> str:
  """A probe workdir with a random ResNet-18 of ``width`` (``stage_sizes``: blocks per stage,
  fewer for a quick check) and a linear binary head."""
  from ssldml_jax import config_defaults
  from ssldml_jax.data import ecg_files
  from ssldml_jax.eval import embed, fitting, linear_probe, probe_config, saved_probes, targets

  c = probe_config.add_entry_keys(probe_config.add_probe_section(config_defaults.base_config()))
  c.model.width, c.data.sampling_rate, c.probe.heads = width, RATE_MODEL, ("linear",)
  c.model.stage_sizes = stage_sizes
  encoder = embed.random_encoder(c, 0)
  dim = int(c.model.embedding_dim)
  rng = np.random.default_rng(1)
  res = linear_probe.ProbeResult(
      task="binary", hyper_name="C", hyper=1.0, grid=(1.0,), val_criterion=(0.5,),
      val_scores=np.linspace(0.1, 0.9, 4), test_scores=np.zeros(1), threshold=0.5,
      coef=rng.normal(size=dim), intercept=0.0,
      standardizer=linear_probe.Standardizer(np.zeros(dim), np.ones(dim)), n_train=1)
  fit = fitting.Fit("linear", "binary", "100%", 0, 1, res.test_scores, res.val_scores, 0.5, {},
                    res)
  fmt = ecg_files.RecordFormat(stored_rate=RATE_MODEL, num_samples=10 * RATE_MODEL,
                               model_rate=RATE_MODEL)
  saved_probes.save(os.path.join(root, saved_probes.HEADS_DIR), config=c, fits=[fit],
                    probe_targets=[targets.parse("binary", 18.0)],
                    validation={"pcwp": np.array([10.0, 20.0, 12.0, 25.0], np.float32)},
                    encoder=encoder, record_format=fmt, dataset="bench")
  return root


def make_peer(probe_dir: str):
  """The per-file loop: ``score(path) -> probability`` with the saved probe's weights."""
  import jax
  import scipy.signal
  import wfdb

  from ssldml_jax.eval import saved_probes

  probe = saved_probes.load(probe_dir)
  (ensemble,) = probe.ensembles
  arrays = probe.arrays(ensemble.files[0])
  module, variables = probe.encoder.module, probe.encoder.variables
  embed_one = jax.jit(lambda x: module.apply(variables, x[None], train=False)[0])

  def score(path: str) -> float:
    record = wfdb.rdrecord(path)
    order = [list(record.sig_name).index(lead) for lead in LEAD_NAMES]
    x = scipy.signal.resample_poly(record.p_signal[:, order], 1, RATE_IN // RATE_MODEL, axis=0,
                                   padtype="line").astype(np.float32)
    emb = np.asarray(embed_one(x), np.float64)
    z = (emb - arrays["mean"]) / arrays["scale"] @ arrays["coef"] + arrays["intercept"]
    return float(1.0 / (1.0 + np.exp(-z)))

  return score


def check_agreement(probe_dir: str, paths: Sequence[str], workdir: str, peer) -> float:
  """The largest score difference between predict and the peer on ``paths`` (raises above
  1e-4: the two would not be doing the same thing)."""
  from ssldml_jax import predict

  out = os.path.join(workdir, "check.csv")
  predict.run(probe_dir, list(paths), out, progress=False)
  with open(out, newline="") as fh:
    ours = {r["ecg_id"]: float(r["y_score_binary"]) for r in csv.DictReader(fh)}
  worst = max(abs(ours[os.path.basename(p)] - peer(p)) for p in paths)
  if worst > 1e-4:
    raise AssertionError(f"predict and the per-file loop differ by {worst:.2g} in probability")
  return worst


def measure(n: int, width: int, per_device: int, repeats: int, scratch: str) -> list[dict]:
  from ssldml_jax import predict

  files = os.path.join(scratch, "ecgs")
  os.makedirs(files)
  start = time.perf_counter()
  paths = write_records(files, n)
  print(f"  wrote {n} WFDB records (10 s, {RATE_IN} Hz) in {time.perf_counter() - start:.1f} s",
        flush=True)
  probe_dir = saved_probe(os.path.join(scratch, "probe"), width)
  peer = make_peer(probe_dir)
  worst = check_agreement(probe_dir, paths[:4], scratch, peer)
  print(f"  predict and the per-file loop agree to {worst:.1g} (probability)", flush=True)
  out = os.path.join(scratch, "out.csv")
  predict.run(probe_dir, [files], out, per_device_batch_size=per_device, progress=False)  # warm
  ours, peer_s, read, model = [], [], [], []
  for _ in range(repeats):  # alternated, so that a passing load weighs on both alike
    start = time.perf_counter()
    summary = predict.run(probe_dir, [files], out, per_device_batch_size=per_device,
                          progress=False)
    ours.append(time.perf_counter() - start)
    read.append(summary.read_s)
    model.append(summary.model_s)
    start = time.perf_counter()
    for p in paths:
      peer(p)
    peer_s.append(time.perf_counter() - start)
  ours_s, peer_total = float(np.median(ours)), float(np.median(peer_s))
  read_s, model_s = float(np.median(read)), float(np.median(model))
  print(f"  predict: {n / ours_s:,.1f} ECG/s end to end ({1e3 * read_s / n:.2f} ms/ECG reading, "
        f"checking, resampling; {1e3 * model_s / n:.2f} ms/ECG encoder and head; "
        f"{100 * read_s / (read_s + model_s):.0f}% reading); per-file loop "
        f"{n / peer_total:,.1f} ECG/s (medians of {repeats})", flush=True)
  return [{"benchmark": "predict", "case": f"{n} WFDB files, 500 -> 250 Hz, ResNet-18 width "
           f"{width}", "ours_s": ours_s / n, "peer": "per-file loop (wfdb, scipy, jit, batch 1)",
           "peer_s": peer_total / n, "ratio": peer_total / ours_s,
           "note": f"{n / ours_s:,.1f} ECG/s; reading {1e3 * read_s / n:.2f} ms + model "
                   f"{1e3 * model_s / n:.2f} ms per ECG",
           "read_ms_per_ecg": 1e3 * read_s / n, "model_ms_per_ecg": 1e3 * model_s / n}]


def main(args: Optional[Sequence[str]] = None) -> list[dict]:
  parser = common.arg_parser("predict", __doc__)
  parser.add_argument("--ecgs", type=int, default=256, help="WFDB records written and scored")
  parser.add_argument("--width", type=int, default=64, help="ResNet-18 width (64: the paper's)")
  parser.add_argument("--per_device_batch_size", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=3, help="passes of each; the median counts")
  a = common.parse_args(parser, args, quick="a narrow model, 32 ECGs: a smoke run",
                        positive=("ecgs", "width", "per_device_batch_size", "repeats"))
  if a.quick:
    a.ecgs, a.width, a.repeats = 32, 8, 1
  print(common.machine_line(["wfdb", "scipy"]), flush=True)
  print(common.load_line(), flush=True)
  scratch = tempfile.mkdtemp(prefix="ssldml_bench_predict_")
  try:
    rows = measure(a.ecgs, a.width, a.per_device_batch_size, a.repeats, scratch)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  common.print_comparison(rows, "predict on WFDB files (time per ECG; ratio = per-file loop / "
                                "predict)")
  print(common.load_line(), flush=True)
  if not (a.quick or a.no_record):
    common.record("predict", {"rows": rows})
  return rows
