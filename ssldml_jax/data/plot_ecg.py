"""A 12-lead ECG drawn the way a cardiologist reads one: 3 x 4 leads and a lead II rhythm strip.

The page is laid out in millimetres of ECG paper (25 mm/s, 10 mm/mV), so the grid squares are the
familiar 1 mm = 40 ms x 0.1 mV and 5 mm = 200 ms x 0.5 mV, whatever the sampling rate.

``plot_conditions`` draws one page per condition of the synthetic cohort (and one without any),
titled with the condition and its criterion; from the shell::

  python -m ssldml_jax.data.plot_ecg --out_dir=plots/conditions [--sampling_rate=250] [--seed=0]
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from ssldml_jax import atomic
from ssldml_jax.data.records import LEADS, NUM_LEADS

MM_PER_S = 25.0
MM_PER_MV = 10.0
_LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
_RHYTHM_LEAD = "II"
_ROW_MM = 30.0          # vertical room per row: +-1.5 mV around the row's baseline.
_CAL_MM = 10.0          # left margin holding the 1 mV calibration pulse.
_MINOR, _MAJOR = "#f6c9c9", "#e58c8c"
_TRACE = "#111111"


def _grid(ax, width_mm: float, height_mm: float) -> None:
  def lines(step, color, lw):
    xs = np.arange(0.0, width_mm + 1e-6, step)
    ys = np.arange(0.0, height_mm + 1e-6, step)
    segs = [((x, 0.0), (x, height_mm)) for x in xs] + [((0.0, y), (width_mm, y)) for y in ys]
    ax.add_collection(LineCollection(segs, colors=color, linewidths=lw, zorder=0))
  lines(1.0, _MINOR, 0.3)
  lines(5.0, _MAJOR, 0.6)


def _calibration_pulse(ax, baseline_mm: float) -> None:
  """The 1 mV, 200 ms square pulse printed before each row."""
  x = np.array([1.0, 3.0, 3.0, 8.0, 8.0, 10.0])
  y = baseline_mm + np.array([0.0, 0.0, MM_PER_MV, MM_PER_MV, 0.0, 0.0])
  ax.plot(x, y, color=_TRACE, linewidth=0.8)


def plot_12lead(ecg_mv: np.ndarray, sampling_rate: float, path: str,
                title: Optional[str] = None) -> str:
  """Draws one ECG (T, 12) in millivolts, ``LEADS`` order, to an image file; returns ``path``.

  Standard layout: four columns of a quarter of the recording each (I/II/III, aVR/aVL/aVF,
  V1-V3, V4-V6), then the whole recording of lead II as a rhythm strip. The file type follows
  the extension of ``path`` (PNG, PDF, SVG ...).
  """
  ecg = np.asarray(ecg_mv, np.float64)
  if ecg.ndim != 2 or ecg.shape[1] != NUM_LEADS or ecg.shape[0] < 4:
    raise ValueError(f"plot_12lead({path}): expected a (T, {NUM_LEADS}) ECG, got {ecg.shape}")
  if not np.all(np.isfinite(ecg)):
    raise ValueError(f"plot_12lead({path}): the ECG has NaN or inf values")
  if not sampling_rate > 0:
    raise ValueError(f"plot_12lead({path}): sampling_rate must be positive, got {sampling_rate}")
  num_t = ecg.shape[0]
  duration_s = num_t / sampling_rate
  column = num_t // 4
  strip_mm = duration_s * MM_PER_S
  width_mm = _CAL_MM + strip_mm
  rows = len(_LAYOUT) + 1
  height_mm = rows * _ROW_MM + (8.0 if title else 0.0)

  fig = Figure(figsize=(width_mm / 25.4 * 1.2, height_mm / 25.4 * 1.2))
  FigureCanvasAgg(fig)
  ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
  _grid(ax, width_mm, height_mm)
  lead_index = {name: i for i, name in enumerate(LEADS)}
  # Each trace starts at its own baseline: the signal's median, as a paper ECG is centred.
  def trace(signal, x0_mm, baseline_mm):
    x = x0_mm + np.arange(len(signal)) / sampling_rate * MM_PER_S
    y = baseline_mm + (signal - np.median(signal)) * MM_PER_MV
    ax.plot(x, y, color=_TRACE, linewidth=0.6)

  for r, names in enumerate(_LAYOUT + ((_RHYTHM_LEAD,),)):
    baseline = height_mm - (8.0 if title else 0.0) - (r + 0.5) * _ROW_MM
    _calibration_pulse(ax, baseline)
    for c, name in enumerate(names):
      if len(names) == 1:                       # rhythm strip: the whole recording
        segment, x0 = ecg[:, lead_index[name]], _CAL_MM
      else:
        segment = ecg[c * column:(c + 1) * column, lead_index[name]]
        x0 = _CAL_MM + c * column / sampling_rate * MM_PER_S
        if c:                                   # the small bar that marks a lead change
          ax.plot([x0, x0], [baseline - 2.5, baseline + 2.5], color=_TRACE, linewidth=0.8)
      trace(segment, x0, baseline)
      ax.text(x0 + 1.5, baseline + 0.36 * _ROW_MM, name, fontsize=8, va="top")
  if title:
    ax.text(1.0, height_mm - 1.5, title, fontsize=9, va="top")
  ax.text(width_mm - 1.0, 1.0, f"{MM_PER_S:g} mm/s   {MM_PER_MV:g} mm/mV   {sampling_rate:g} Hz",
          fontsize=7, ha="right", va="bottom")
  ax.set_xlim(0.0, width_mm)
  ax.set_ylim(0.0, height_mm)
  ax.set_aspect("equal")
  ax.axis("off")
  with atomic.replacing(path, suffix=".png") as tmp:
    fig.savefig(tmp, dpi=200)
  return path


NORMAL = "normal"
_CANDIDATES = 12   # ECGs drawn per page; the first that shows its condition best is drawn


def _criterion(name: str, truth: dict, i: int) -> str:
  """The condition's criterion as the simulator rendered it, for the page title."""
  if name in ("lbbb", "rbbb"):
    return f"QRS {truth['qrs_duration_ms'][i]:.0f} ms"
  if name in ("lvh", "lvh_strain"):
    return (f"Sokolow-Lyon {truth['sokolow_lyon_mv'][i]:.1f} mV, "
            f"Cornell {truth['cornell_mv'][i]:.1f} mV")
  if name == "av_block_1":
    return f"PR {truth['pr_interval_ms'][i]:.0f} ms"
  if name == "low_voltage":
    return f"largest limb-lead QRS {truth['limb_qrs_mv'][i]:.2f} mV"
  if name in ("pvc", "pac"):
    return f"{truth[name + '_count'][i]} premature beat(s) in 10 s"
  if name == "af":
    return f"ventricular rate {truth['heart_rate_bpm'][i]:.0f} bpm"
  return (f"rate {truth['heart_rate_bpm'][i]:.0f} bpm, PR {truth['pr_interval_ms'][i]:.0f} ms, "
          f"QRS {truth['qrs_duration_ms'][i]:.0f} ms")


def plot_conditions(out_dir: str, sampling_rate: int = 250, seed: int = 0) -> list[str]:
  """Draws one 10-s 12-lead page per condition of the synthetic cohort into ``out_dir``.

  Pages are ``00_normal.png`` (no condition) and ``NN_<condition>.png`` in
  ``simulator.CONDITIONS`` order, each an ECG with only that condition, titled with its name and
  its criterion's value. A 65-year-old patient with mPCWP 16 mmHg; among a few ECGs drawn from
  ``seed``, the page shows one that shows the condition (a textbook QRS axis, AF on the day,
  three or more premature beats) with the least noise and the least rotated heart. Returns the
  paths written.
  """
  from ssldml_jax.data import conditions, simulator

  pages = []
  for page, name in enumerate((NORMAL,) + simulator.CONDITIONS):
    rng = np.random.default_rng([seed, page])
    n = _CANDIDATES
    present = [() if name == NORMAL else (name,)] * n
    ecg, truth = simulator.simulate_ecgs(
        rng, n, pcwp=np.full(n, 16.0), age=np.full(n, 65.0),
        sex=np.arange(n) % 2, sampling_rate=sampling_rate, conditions_present=present)
    # A textbook axis: normal, or left in LBBB and LVH.
    low, high = (-45.0, 60.0) if name in ("lbbb", "lvh", "lvh_strain") else (-30.0, 90.0)
    shows = (truth["qrs_axis_deg"] >= low) & (truth["qrs_axis_deg"] <= high)
    if name in ("pvc", "pac"):
      shows &= truth[name + "_count"] >= 3
    elif name == "af":
      shows &= truth["af"]
    # Noise: baseline wander (how the 1-s means of each lead move) plus muscle noise (the
    # median sample-to-sample step, which the waves barely move).
    seconds = ecg[:, :ecg.shape[1] // sampling_rate * sampling_rate]
    means = seconds.reshape(n, -1, sampling_rate, ecg.shape[2]).mean(axis=2)
    noise = (means.std(axis=1).mean(axis=1)
             + np.median(np.abs(np.diff(ecg, axis=1)), axis=(1, 2)))
    # Least noise and least rotation of the heart away from the textbook position.
    typical = (noise / np.median(noise)
               + np.linalg.norm(truth["heart_rotation_deg"] - [0.0, 0.0, -8.0], axis=1) / 30.0)
    i = int(np.argmin(np.where(shows, typical, np.inf) if shows.any() else typical))
    title = (conditions.TITLES.get(name, "No condition (sinus rhythm)")
             + f" - {_criterion(name, truth, i)}")
    path = os.path.join(out_dir, f"{page:02d}_{name}.png")
    pages.append(plot_12lead(ecg[i], sampling_rate, path, title=title))
  return pages


def main(argv: Sequence[str]) -> int:
  import argparse
  parser = argparse.ArgumentParser(
      prog="python -m ssldml_jax.data.plot_ecg",
      description="Draw one 12-lead page per condition of the synthetic cohort.")
  parser.add_argument("--out_dir", required=True, help="folder for the PNG pages")
  parser.add_argument("--sampling_rate", type=int, default=250, help="Hz (>= 50)")
  parser.add_argument("--seed", type=int, default=0, help="non-negative integer")
  args = parser.parse_args(argv)
  if args.sampling_rate < 50:
    print(f"error: --sampling_rate={args.sampling_rate} must be at least 50 Hz", file=sys.stderr)
    return 2
  if args.seed < 0:
    print(f"error: --seed={args.seed} must be a non-negative integer", file=sys.stderr)
    return 2
  for path in plot_conditions(args.out_dir, args.sampling_rate, args.seed):
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
