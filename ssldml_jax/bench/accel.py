"""One-command acceptance check and cost figures of a GPU/TPU host (``launch/accel_check.sh``).

``python -m ssldml_jax.bench.accel [--quick] [--out=DIR] [--data_dir=DIR] [--tilings]``

Stages, each in its own process so that every one starts with the accelerator's memory free:

1. ``measure``: the backend and its devices; the Pallas DTW kernel against the XLA program
   (agreement first, then time and G cells/s at B = 64 and 256, T = 500 and 2,500, and a 10%
   band); ``bench train_step`` in float32 and bfloat16 (step time, ECG/s, MFU against the chip's
   published peak, or the measured matmul peak where the chip is not in ``PEAKS``), float32 at
   per-device batch 64 and bfloat16 at 64 and 256.
2. ``pretrain``: ``python -m ssldml_jax.pretrain --config=configs/ssl_dml_dtw.py``, 200 steps at
   paper size on ``ecg_synth/default`` (built if missing).
3. ``after``: that run's step time, split between mining (the DTW rows of one device, timed
   alone at the run's shapes) and the rest; input pipeline ECG/s with and without worker
   processes.

Then the projected time of an epoch of the paper's 5.4 M ECGs, a summary table, and every figure
in ``DIR/accel_check.json``. ``--quick`` runs the same stages at toy sizes (seconds each; on a
CPU the kernel runs in Pallas interpret mode), so that the check itself is tested. ``--tilings``
also times every kernel tiling at B = 64, T = 500. The exit status is 1 if a stage failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from typing import Any, Callable, Optional, Sequence

EPOCH_ECGS = 5.4e6          # the paper's pretraining set
GOALS = {"dtw_ms": 2.0, "ecg_per_s": 10_000.0, "mining_share": 0.20}
# Published dense peaks per chip (FLOP/s): (bfloat16, float32 as XLA runs it: TF32 on NVIDIA
# tensor cores, bf16 passes on TPU). Matched by substring of ``device_kind``, first match wins.
PEAKS = (("H200", 989e12, 495e12), ("H100 PCIe", 756e12, 378e12), ("H100", 989e12, 495e12),
         ("A100", 312e12, 156e12), ("L40S", 362e12, 183e12), ("L4", 121e12, 60e12),
         ("TPU v6", 918e12, 918e12), ("TPU v5p", 459e12, 459e12), ("TPU v5", 197e12, 197e12),
         ("TPU v4", 275e12, 275e12))
FULL = dict(dtw_cases=((64, 500), (64, 2500), (256, 500), (256, 2500)), dtw_band=(64, 500, 50),
            repeats=5, width=64, stage_sizes=None, rate=250, steps=10,
            train_steps=(("float32", 64), ("bfloat16", 64), ("bfloat16", 256)),
            pretrain="configs/ssl_dml_dtw.py", pretrain_steps=200, log_every=50,
            dataset="ecg_synth/default", input_batch=64, input_ecgs=4096, matmul=None)
QUICK = dict(dtw_cases=((4, 21),), dtw_band=(4, 21, 3), repeats=1, width=8,
             stage_sizes=(1, 1, 1, 1), rate=10, steps=2,
             train_steps=(("float32", 4), ("bfloat16", 4)),
             pretrain="configs/ssl_dml_dtw.py:tiny", pretrain_steps=6, log_every=2,
             dataset="ecg_synth/tiny", input_batch=16, input_ecgs=64, matmul=(256,))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --- Stage 1: backend, DTW kernel, train step ----------------------------------------------------

def env_stage() -> dict:
  import jax
  from ssldml_jax.bench import common
  devices = jax.devices()
  kind = devices[0].device_kind
  out = {"date": datetime.date.today().isoformat(), "cpu": common.cpu_model(),
         "cores": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__,
         "jaxlib": common.version("jaxlib"), "backend": jax.default_backend(),
         "devices": len(devices), "device_kind": kind}
  stats = getattr(devices[0], "memory_stats", lambda: None)()
  if stats and "bytes_limit" in stats:
    out["device_memory_gib"] = stats["bytes_limit"] / 2**30
  match = next((p for p in PEAKS if p[0].lower() in kind.lower()), None)
  if match:
    out.update(peak_bf16=match[1], peak_f32=match[2], peak_source=f"published ({match[0]})")
  return out


def _time_pair(fns: dict, repeats: int) -> dict:
  from ssldml_jax.bench import common
  return common.time_interleaved(fns, rounds=repeats, warmup=1)


def dtw_case(b: int, t: int, window: Optional[int], repeats: int) -> dict:
  """The kernel and the XLA program on the same ``(b, t, 12)`` batch against itself."""
  import jax
  import numpy as np
  from ssldml_jax import dtw, dtw_pallas
  from ssldml_jax.bench import dtw as bench_dtw
  x = jax.device_put(bench_dtw.make_signals(b, t, seed=b + t))
  fns = {impl: jax.jit(lambda v, impl=impl: dtw.cross_dtw(v, v, window=window, impl=impl))
         .lower(x).compile() for impl in ("xla", "pallas")}
  got = {impl: np.asarray(fn(x)) for impl, fn in fns.items()}
  off = ~np.eye(b, dtype=bool)
  err = float(np.max(np.abs(got["pallas"] - got["xla"])[off] / got["xla"][off]))
  if not err <= 1e-4:
    raise AssertionError(f"B={b} T={t} window={window}: the kernel differs from the XLA program "
                         f"by {err:.2e} (relative)")
  times = _time_pair({impl: (lambda fn=fn: fn(x)) for impl, fn in fns.items()}, repeats)
  cells = b * b * dtw.dtw_cells(t, t, window)
  lanes, anchors = dtw_pallas.default_tiling(t, t, window)
  return {"batch": b, "length": t, "window": window, "max_rel_diff": err, "cells": cells,
          "xla_s": times["xla"], "pallas_s": times["pallas"],
          "speedup": times["xla"] / times["pallas"],
          "xla_gcups": cells / times["xla"] / 1e9, "pallas_gcups": cells / times["pallas"] / 1e9,
          "lanes": lanes, "anchors": anchors}


def dtw_tilings(b: int, t: int, repeats: int) -> list[dict]:
  """Every kernel tiling at one size (full DTW), each checked against the XLA program."""
  import jax
  import numpy as np
  from ssldml_jax import cli, dtw, dtw_pallas
  from ssldml_jax.bench import common
  from ssldml_jax.bench import dtw as bench_dtw
  x = jax.device_put(bench_dtw.make_signals(b, t, seed=1))
  want = np.asarray(dtw.cross_dtw(x, x, impl="xla")) ** 2
  kernel = dtw._kernel_accumulated  # pylint: disable=protected-access  (interpreted off GPU)
  rows = []
  for lanes in dtw_pallas.LANE_CHOICES:
    for anchors in dtw_pallas.ANCHOR_CHOICES:
      fn = jax.jit(lambda v, lanes=lanes, anchors=anchors: kernel(v, v, None, lanes=lanes,
                                                                   anchors=anchors))
      row = {"batch": b, "length": t, "lanes": lanes, "anchors": anchors}
      try:
        got = np.asarray(fn(x))
        off = ~np.eye(b, dtype=bool)
        row["max_rel_diff"] = float(np.max(np.abs(got - want)[off] / want[off]))
        row["seconds"] = common.time_call(lambda fn=fn: fn(x), repeats=repeats)
      except Exception as e:  # pylint: disable=broad-except  # A tiling that fails is a result.
        row["error"] = cli.error_line(e)
      rows.append(row)
      print(f"  tiling lanes={lanes} anchors={anchors}: "
            + (row.get("error") or f"{row['seconds'] * 1e3:.2f} ms, max rel diff "
               f"{row['max_rel_diff']:.1e}"), flush=True)
  return rows


def train_step_stage(sizes: dict, env: dict) -> list[dict]:
  """The supervised train step (ResNet-18 at paper width) in float32 and bfloat16."""
  import jax
  import jax.numpy as jnp
  from ssldml_jax.bench import train_step
  if "peak_bf16" not in env:
    device = jax.local_devices()[0]
    env["peak_bf16"], who = train_step.matmul_peak(device, jnp.bfloat16, sizes["matmul"])
    env["peak_f32"], _ = train_step.matmul_peak(device, jnp.float32, sizes["matmul"])
    env["peak_source"] = f"measured ({who})"
  rows = []
  for dtype, batch in sizes["train_steps"]:
    r = train_step.run(batch=batch, rate=sizes["rate"], num_steps=sizes["steps"], warmup=2,
                       width=sizes["width"], stage_sizes=sizes["stage_sizes"],
                       with_torch=False, dtype=dtype)
    peak = env["peak_bf16"] if dtype == "bfloat16" else env["peak_f32"]
    r["mfu"] = r["achieved_flops"] / peak
    rows.append(r)
    print(f"  train step {dtype} B={batch}: {r['jax_s'] * 1e3:.2f} ms, "
          f"{r['jax_ecg_per_s']:,.0f} ECG/s, MFU {100 * r['mfu']:.1f}%", flush=True)
  return rows


def measure_stage(sizes: dict, tilings: bool) -> dict:
  from ssldml_jax import cli
  out: dict[str, Any] = {"env": env_stage()}
  print(f"  {out['env']['backend']}: {out['env']['devices']} x {out['env']['device_kind']}, "
        f"jax {out['env']['jax']}", flush=True)
  out["dtw"] = []
  cases = [(b, t, None) for b, t in sizes["dtw_cases"]] + [tuple(sizes["dtw_band"])]
  for b, t, w in cases:
    try:
      r = dtw_case(b, t, w, sizes["repeats"])
    except Exception as e:  # pylint: disable=broad-except  # Said, then the rest is measured.
      error = cli.error_line(e, 300)
      out.setdefault("dtw_failed", []).append({"batch": b, "length": t, "window": w,
                                               "error": error})
      print(f"  DTW B={b} T={t} window={w}: FAILED: {error}", flush=True)
      continue
    out["dtw"].append(r)
    print(f"  DTW B={b} T={t} window={w}: kernel {r['pallas_s'] * 1e3:.2f} ms "
          f"({r['pallas_gcups']:.1f} G cells/s), XLA {r['xla_s'] * 1e3:.2f} ms, "
          f"x{r['speedup']:.1f}, agree to {r['max_rel_diff']:.1e}", flush=True)
  if tilings:
    b, t = sizes["dtw_cases"][0]
    out["dtw_tilings"] = dtw_tilings(b, t, sizes["repeats"])
  out["train_step"] = train_step_stage(sizes, out["env"])
  return out


# --- Stage 3: after the pretraining run ----------------------------------------------------------

def pretrain_timing(workdir: str) -> dict:
  """Step time of a finished run from its metrics (the first logged interval, which includes
  compilation, is left out)."""
  from ssldml_jax import metrics_log
  rates = [(m["steps_per_sec"], m["ecg_per_sec"]) for m in metrics_log.read_metrics(workdir)
           if "steps_per_sec" in m]
  if len(rates) < 2:
    raise RuntimeError(f"{workdir}/metrics.jsonl has {len(rates)} timed intervals; 2 needed")
  steps_per_s = statistics.median(r[0] for r in rates[1:])
  global_batch = round(rates[-1][1] / rates[-1][0])
  return {"step_s": 1.0 / steps_per_s, "global_batch": global_batch,
          "ecg_per_s": steps_per_s * global_batch, "intervals": len(rates) - 1}


def mining_time(workdir: str, repeats: int) -> dict:
  """The DTW rows one device computes per step of that run (its ECGs against the global
  batch, decimated as the step does), timed alone."""
  import jax
  from ssldml_jax import dtw, metrics_log
  from ssldml_jax.bench import common
  from ssldml_jax.bench import dtw as bench_dtw
  from ssldml_jax.data import pipeline
  from ssldml_jax.methods import ssl_dml
  config = metrics_log.read_config(workdir)
  m = config.mining
  factor = int(m.decimate)
  length = -(-pipeline.dataset_info(config.data)["num_samples"] // factor)
  local = config.data.per_device_batch_size
  n = local * jax.device_count()
  x = jax.device_put(bench_dtw.make_signals(n, length, seed=2))
  window = ssl_dml.mining_window(config)
  fn = jax.jit(lambda a, b: dtw.cross_dtw(a, b, window=window, impl=m.dtw_impl))
  fn = fn.lower(x[:local], x).compile()
  seconds = common.time_call(lambda: fn(x[:local], x), repeats=repeats)
  return {"mining_s": seconds, "rows": local, "columns": n, "length": length,
          "window": window, "impl": m.dtw_impl}


def input_stage(sizes: dict, data_dir: str) -> list[dict]:
  from ssldml_jax.bench import input as bench_input
  from ssldml_jax.data import build
  build.ensure_built(sizes["dataset"], data_dir)
  workers = min(8, os.cpu_count() or 1)
  rows = []
  for k in (0, workers):
    config = bench_input.data_config(sizes["dataset"], data_dir, batch=sizes["input_batch"],
                                     rate=None)   # the stored rate: 250 Hz for the paper's
    config.num_workers = k
    rate = bench_input.pipeline_rate(config, sizes["input_ecgs"])
    rows.append({"workers": k, "ecg_per_s": rate})
    print(f"  input pipeline, {k} worker processes: {rate:,.0f} ECG/s", flush=True)
  return rows


def after_stage(sizes: dict, workdir: str, data_dir: str) -> dict:
  out: dict[str, Any] = {}
  out["pretrain"] = pretrain_timing(workdir)
  out["pretrain"].update(mining_time(workdir, sizes["repeats"]))
  p = out["pretrain"]
  p["mining_share"] = p["mining_s"] / p["step_s"]
  # Timed apart, mining can exceed a step on a busy machine: the rest is then 0, not negative.
  p["encoder_s"] = max(p["step_s"] - p["mining_s"], 0.0)
  print(f"  pretraining step {p['step_s'] * 1e3:.1f} ms ({p['ecg_per_s']:,.0f} ECG/s): mining "
        f"{p['mining_s'] * 1e3:.1f} ms ({100 * p['mining_share']:.0f}%), the rest "
        f"{p['encoder_s'] * 1e3:.1f} ms", flush=True)
  out["input"] = input_stage(sizes, data_dir)
  return out


# --- The orchestrating process -------------------------------------------------------------------

def _child_env(quick: bool) -> dict:
  """Toy sizes measure nothing: compile them fast (XLA's backend optimisations off)."""
  env = dict(os.environ)
  if quick:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
  return env


def _child(args: argparse.Namespace, stage: str, json_path: str, extra: Sequence[str] = ()):
  cmd = [sys.executable, "-m", "ssldml_jax.bench.accel", f"--stage={stage}",
         f"--json={json_path}", f"--out={args.out}", f"--data_dir={args.data_dir}"]
  cmd += ["--quick"] * args.quick + ["--tilings"] * args.tilings + list(extra)
  return cmd


def _run_stage(name: str, cmd: Sequence[str], json_path: Optional[str], results: dict,
               failed: list, args: argparse.Namespace) -> None:
  print(f"\n== {name} ==\n$ {' '.join(cmd)}", flush=True)
  start = time.perf_counter()
  try:
    code = subprocess.call(list(cmd), cwd=ROOT, env=_child_env(args.quick),
                           timeout=args.stage_timeout)
  except subprocess.TimeoutExpired:
    code = f"stopped after --stage_timeout={args.stage_timeout:g} s"
  seconds = time.perf_counter() - start
  results.setdefault("stage_seconds", {})[name] = seconds
  if code != 0:
    failed.append(f"{name} ({code if isinstance(code, str) else f'exit status {code}'})")
    return
  if json_path:
    with open(json_path, encoding="utf-8") as f:
      results.update(json.load(f))


def projection(results: dict) -> dict:
  """Hours per epoch of 5.4 M ECGs from each throughput measured."""
  out = {}
  p = results.get("pretrain")
  if p:
    out["pretrain_ssl_dml_dtw"] = EPOCH_ECGS / p["ecg_per_s"]
  devices = results.get("env", {}).get("devices", 1)
  bf16 = [r for r in results.get("train_step", []) if r["dtype"] == "bfloat16"]
  if bf16:
    best = max(bf16, key=lambda r: r["jax_ecg_per_s"])
    out["train_step_bf16"] = EPOCH_ECGS / (best["jax_ecg_per_s"] * devices)
  if results.get("input"):
    out["input_pipeline"] = EPOCH_ECGS / max(r["ecg_per_s"] for r in results["input"])
  return out


def _goal(met: bool, quick: bool) -> str:
  return "-" if quick else ("met" if met else "NOT met")


def summary_rows(results: dict, quick: bool) -> list[list[str]]:
  from ssldml_jax.bench import common
  env, rows = results.get("env", {}), []
  if "backend" in env:
    rows.append(["backend", f"{env['backend']}: {env['devices']} x {env['device_kind']}",
                 f"jax {env['jax']}", ""])
  for r in results.get("dtw", []):
    band = f", window {r['window']}" if r["window"] else ""
    goal = ""
    if r["batch"] == 64 and r["length"] == 500 and not r["window"]:
      goal = f"<= {GOALS['dtw_ms']:g} ms: " + _goal(r["pallas_s"] * 1e3 <= GOALS["dtw_ms"], quick)
    rows.append([f"DTW {r['batch']}x{r['batch']}, T={r['length']}{band}",
                 f"kernel {common.seconds(r['pallas_s'])} ({r['pallas_gcups']:.1f} G cells/s)",
                 f"XLA {common.seconds(r['xla_s'])}: x{r['speedup']:.1f}; agree "
                 f"{r['max_rel_diff']:.0e}", goal])
  for r in results.get("dtw_failed", []):
    band = f", window {r['window']}" if r["window"] else ""
    rows.append([f"DTW {r['batch']}x{r['batch']}, T={r['length']}{band}", "kernel FAILED",
                 r["error"][:60], ""])
  for r in results.get("train_step", []):
    goal = ""
    if r["dtype"] == "bfloat16":
      goal = f">= {GOALS['ecg_per_s']:,.0f} ECG/s: " + _goal(
          r["jax_ecg_per_s"] >= GOALS["ecg_per_s"], quick)
    rows.append([f"train step {r['dtype']}, B={r['batch']}, T={r['num_samples']}",
                 f"{common.seconds(r['jax_s'])}, {r['jax_ecg_per_s']:,.0f} ECG/s",
                 f"MFU {100 * r['mfu']:.1f}% of {env.get('peak_source', '')}", goal])
  p = results.get("pretrain")
  if p:
    rows.append([f"pretrain ssl_dml_dtw, global batch {p['global_batch']}",
                 f"{common.seconds(p['step_s'])}/step, {p['ecg_per_s']:,.0f} ECG/s",
                 f"mining {common.seconds(p['mining_s'])} ({100 * p['mining_share']:.0f}%), "
                 f"rest {common.seconds(p['encoder_s'])}",
                 f"mining <= {100 * GOALS['mining_share']:.0f}%: "
                 + _goal(p["mining_share"] <= GOALS["mining_share"], quick)])
  for r in results.get("input", []):
    rows.append([f"input pipeline, {r['workers']} workers", f"{r['ecg_per_s']:,.0f} ECG/s",
                 "", ""])
  for name, seconds in results.get("epoch_seconds", {}).items():
    goal = ""
    if name == "train_step_bf16":
      goal = "< 10 min: " + _goal(seconds < 600, quick)
    rows.append([f"epoch of 5.4 M ECGs ({name})", f"{seconds / 3600:.2f} h", "", goal])
  return rows


def _write_json(path: str, data: dict) -> None:
  from ssldml_jax import atomic
  from ssldml_jax.bench import common
  atomic.write_text(path, json.dumps(common.jsonable(data), indent=1))


def orchestrate(args: argparse.Namespace) -> int:
  from ssldml_jax.bench import common
  sizes = QUICK if args.quick else FULL
  config_file = sizes["pretrain"].split(":")[0]
  if not os.path.isfile(os.path.join(ROOT, config_file)):
    print(f"accel_check: {config_file} not found under {ROOT}: run it from the repository "
          "checkout", file=sys.stderr)
    return 2
  os.makedirs(args.out, exist_ok=True)
  results: dict[str, Any] = {"quick": args.quick}
  failed: list[str] = []
  measure_json = os.path.join(args.out, "measure.json")
  _run_stage("backend, DTW kernel, train step", _child(args, "measure", measure_json),
             measure_json, results, failed, args)
  workdir = os.path.join(args.out, "pretrain")
  shutil.rmtree(workdir, ignore_errors=True)
  pretrain = [sys.executable, "-m", "ssldml_jax.pretrain", f"--config={sizes['pretrain']}",
              f"--workdir={workdir}", f"--config.data.data_dir={args.data_dir}",
              f"--config.train.num_steps={sizes['pretrain_steps']}",
              f"--config.train.log_every_steps={sizes['log_every']}",
              f"--config.train.checkpoint_every_steps={10 * sizes['pretrain_steps']}",
              "--config.train.eval_batches=0", "--config.train.progress_bar=False"]
  _run_stage("pretraining ssl_dml_dtw", pretrain, None, results, failed, args)
  if not any(f.startswith("pretraining") for f in failed):
    after_json = os.path.join(args.out, "after.json")
    _run_stage("step split, input pipeline", _child(args, "after", after_json, [
        f"--workdir={workdir}"]), after_json, results, failed, args)
  results["epoch_seconds"] = projection(results)
  results["failed"] = failed
  path = os.path.join(args.out, "accel_check.json")
  _write_json(path, results)
  print(f"\n== summary ({'quick: toy sizes, goals not applied' if args.quick else 'full'}) ==",
        flush=True)
  print(common.table(["stage", "figure", "detail", "goal"], summary_rows(results, args.quick)))
  print(f"all figures: {path}" + (f"\nFAILED: {', '.join(failed)}" if failed else ""), flush=True)
  return 1 if failed else 0


def _stage_main(args: argparse.Namespace) -> int:
  sizes = QUICK if args.quick else FULL
  stages: dict[str, Callable[[], dict]] = {
      "measure": lambda: measure_stage(sizes, args.tilings),
      "after": lambda: after_stage(sizes, args.workdir, args.data_dir)}
  try:
    data = stages[args.stage]()
  except Exception:  # pylint: disable=broad-except  # Reported by the parent as a failed stage.
    traceback.print_exc()
    return 1
  _write_json(args.json, data)
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="bash launch/accel_check.sh",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="toy sizes: the check of the check")
  parser.add_argument("--out", default=os.path.join("runs", "accel_check"),
                      help="where the figures and the pretraining run go")
  parser.add_argument("--data_dir", default=None,
                      help="datasets (default $SSLDML_DATA_DIR or ~/ssldml_data)")
  parser.add_argument("--tilings", action="store_true", help="also time every kernel tiling")
  parser.add_argument("--stage_timeout", type=float, default=None,
                      help="seconds after which a stage is stopped and counted as failed")
  parser.add_argument("--stage", choices=("measure", "after"), help=argparse.SUPPRESS)
  parser.add_argument("--json", help=argparse.SUPPRESS)
  parser.add_argument("--workdir", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  args.out = os.path.abspath(args.out)
  args.data_dir = os.path.abspath(args.data_dir or os.environ.get("SSLDML_DATA_DIR")
                                  or os.path.expanduser("~/ssldml_data"))
  if args.stage:
    return _stage_main(args)
  return orchestrate(args)


if __name__ == "__main__":
  sys.exit(main())
