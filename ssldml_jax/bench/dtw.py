"""DTW distance matrix of a batch of 12-lead ECGs: this project vs dtaidistance (C, OpenMP).

``python -m ssldml_jax.bench dtw [--batch=64] [--lengths=500,2500] [--windows=none,0.1]
[--repeats=N] [--block=16] [--quick] [--no_record]``

Each case times ``jax.jit(pairwise_dtw)`` (compiled beforehand) and
``dtaidistance.dtw_ndim.distance_matrix_fast`` (its C library, parallel over all cores) on the
same float32 signals (float64 for dtaidistance, which needs doubles), after checking that the two
agree within 1e-4 relative. Windows are given as a number of samples or a fraction of ``T``.

Cell updates are counted the same way for both: ``B (B - 1) / 2`` pairs times the cells of one
DTW table inside the band (``T^2`` without a band, about ``T (2w - 1)`` with window ``w``).
On a GPU (``jax.default_backend() == 'gpu'``) the same cases and a larger batch are timed for
this project alone (time and G cell updates per second).
"""

from __future__ import annotations

import argparse
import time
from typing import Optional, Sequence

import jax
import numpy as np

from ssldml_jax import dtw
from ssldml_jax.bench import common

BATCH = 64
CHANNELS = 12
LENGTHS = (500, 2500)          # 10 s at 50 Hz and at 250 Hz.
WINDOWS = ("none", "0.1")
QUICK = dict(batch=16, lengths=(100, 250), repeats=1)
GPU_BATCHES = (64, 256)
RTOL = 1e-4


def parse_window(text: str, length: int) -> Optional[int]:
  """``none`` -> None; ``0.1`` -> 10% of ``length`` (rounded); ``50`` -> 50 samples."""
  text = text.strip().lower()
  if text in ("none", "full", ""):
    return None
  value = float(text)
  if value <= 0:
    raise ValueError(f"window {text!r} must be positive, 'none', or a fraction of T in (0, 1)")
  return max(1, round(value * length)) if value < 1 else int(value)


def make_signals(batch: int, length: int, seed: int = 0) -> np.ndarray:
  """Smooth random 12-channel signals (a random walk low-passed by a moving average).

  Neither implementation prunes, so timing does not depend on the data; smooth signals keep the
  accuracy check representative of ECGs (random white noise would be as good for timing).
  """
  rng = np.random.default_rng(seed)
  x = np.cumsum(rng.normal(size=(batch, length + 8, CHANNELS)), axis=1)
  kernel = np.ones(9) / 9.0
  x = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="valid"), 1, x)
  x = x - x.mean(axis=1, keepdims=True)
  return (x / x.std(axis=(1, 2), keepdims=True)).astype(np.float32)


def dtaidistance_matrix(x: np.ndarray, window: Optional[int]) -> np.ndarray:
  """dtaidistance's C, parallel distance matrix as a full symmetric matrix."""
  from dtaidistance import dtw_ndim  # pylint: disable=import-outside-toplevel  # A bench peer only.
  # distance_matrix_fast raises if the C library is missing (never a silent Python fallback).
  d = dtw_ndim.distance_matrix_fast(np.ascontiguousarray(x, dtype=np.double), window=window)
  d = np.where(np.isinf(d), d.T, d)   # It fills the upper triangle only.
  np.fill_diagonal(d, 0.0)
  return d


def check_peer() -> str:
  """A line saying that dtaidistance's compiled, OpenMP code is what runs."""
  from dtaidistance import dtw as ddtw  # pylint: disable=import-outside-toplevel
  from dtaidistance import dtw_cc_omp  # pylint: disable=import-outside-toplevel
  if ddtw.dtw_cc is None:
    raise RuntimeError("dtaidistance's C library is not available; the comparison needs it")
  omp = dtw_cc_omp is not None and dtw_cc_omp.is_openmp_supported()
  return f"dtaidistance {common.version('dtaidistance')}: C library, OpenMP {'on' if omp else 'off'}"


def run_case(x: np.ndarray, window: Optional[int], *, repeats: int, block: int,
             with_peer: bool = True) -> dict:
  b, t, _ = x.shape
  cells = b * (b - 1) // 2 * dtw.dtw_cells(t, t, window)
  xd = jax.device_put(x)
  start = time.perf_counter()
  fn = jax.jit(lambda v: dtw.pairwise_dtw(v, window=window, block=block)).lower(xd).compile()
  compile_s = time.perf_counter() - start
  memory = fn.memory_analysis()
  temp_mb = getattr(memory, "temp_size_in_bytes", float("nan")) / 2**20
  row = {"case": f"B={b} T={t} window={window}", "batch": b, "length": t, "window": window,
         "cells": cells, "compile_s": compile_s, "temp_mib": temp_mb}
  ours = np.asarray(fn(xd))
  if with_peer:
    kept = {}

    def peer():
      kept["ref"] = dtaidistance_matrix(x, window)
      return kept["ref"]

    timed = common.time_interleaved({"ours": lambda: fn(xd), "peer": peer}, rounds=repeats,
                                    warmup=0)
    ref = kept["ref"]
    iu = np.triu_indices(b, 1)
    err = float(np.max(np.abs(ours[iu] - ref[iu]) / ref[iu]))
    if not err <= RTOL:
      raise AssertionError(f"{row['case']}: pairwise_dtw differs from dtaidistance by {err:.2e} "
                           f"(relative), more than {RTOL:g}")
    row.update(ours_s=timed["ours"], peer="dtaidistance", peer_s=timed["peer"],
               ratio=timed["peer"] / timed["ours"], max_rel_diff=err,
               gcups=cells / timed["ours"] / 1e9, peer_gcups=cells / timed["peer"] / 1e9)
    row["note"] = (f"{row['gcups']:.3f} vs {row['peer_gcups']:.3f} G cells/s, "
                   f"compile {compile_s:.1f} s, temp {temp_mb:.0f} MiB, max rel diff {err:.1e}")
  else:
    row["ours_s"] = common.time_call(lambda: fn(xd), repeats=repeats, warmup=0)
    row["gcups"] = cells / row["ours_s"] / 1e9
  return row


def _windows(text: str) -> tuple[str, ...]:
  values = tuple(s.strip() for s in text.split(","))
  for v in values:
    try:
      parse_window(v, 100)
    except ValueError as e:
      raise argparse.ArgumentTypeError(f"--windows: {e}") from None
  return values


def main(args: Optional[Sequence[str]] = None) -> list[dict]:
  parser = common.arg_parser("dtw", __doc__)
  parser.add_argument("--batch", type=int, default=BATCH, help="ECGs in the batch")
  parser.add_argument("--lengths", type=common.int_list("--lengths", 1), default=LENGTHS,
                      help="samples, e.g. 500,2500")
  parser.add_argument("--windows", type=_windows, default=WINDOWS,
                      help="Sakoe-Chiba bands: none, a fraction of T (0.1) or samples (50)")
  parser.add_argument("--repeats", type=int, default=1, help="timed runs of each (median)")
  parser.add_argument("--block", type=int, default=dtw.DEFAULT_BLOCK, help="anchors per block")
  a = common.parse_args(parser, args,
                        quick=f"batch {QUICK['batch']}, T in {QUICK['lengths']}: seconds",
                        positive=("repeats", "block"), at_least={"batch": 2})
  if a.quick:
    a.batch, a.lengths, a.repeats = QUICK["batch"], QUICK["lengths"], QUICK["repeats"]
  print(common.machine_line(["dtaidistance"]), flush=True)
  print(check_peer(), flush=True)
  rows = []
  for length in a.lengths:
    x = make_signals(a.batch, length)
    for w in a.windows:
      row = run_case(x, parse_window(w, length), repeats=a.repeats, block=a.block)
      print(f"  {row['case']}: ssldml_jax {common.seconds(row['ours_s'])}, dtaidistance "
            f"{common.seconds(row['peer_s'])}, x{row['ratio']:.2f}; {row['note']}", flush=True)
      rows.append(row)
  for row in rows:
    row["goal"] = f">= 1x: {'met' if row['ratio'] >= 1.0 else 'NOT met'}"
  common.print_comparison(rows, f"DTW distance matrix, {CHANNELS} leads, squared-Euclidean "
                                f"local cost (time per matrix; cells = pairs x band cells)")
  if jax.default_backend() == "gpu":
    gpu_rows = []
    for b in (a.batch,) if a.quick else GPU_BATCHES:
      for length in a.lengths:
        x = make_signals(b, length)
        for w in a.windows:
          r = run_case(x, parse_window(w, length), repeats=max(3, a.repeats), block=a.block,
                       with_peer=False)
          gpu_rows.append(r)
          print(f"  gpu {r['case']}: {common.seconds(r['ours_s'])}, "
                f"{r['gcups']:.2f} G cells/s", flush=True)
    rows += gpu_rows
  if not (a.quick or a.no_record):
    common.record("dtw", rows)
  return rows

