"""What every benchmark program shares: its command line, the machine line, timing, tables and
the record.

Benchmarks compare this project with a peer in the same run on the same machine (SPEC section 8),
so what matters is the ratio printed next to both times; the machine line says where it ran.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import time
from importlib import metadata
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np

BENCHMARKS_MD = "BENCHMARKS.md"
RECORD_HEADING = "## Recorded runs"


def arg_parser(name: str, doc: str) -> argparse.ArgumentParser:
  """The parser of ``python -m ssldml_jax.bench <name>``, described by the first line of ``doc``."""
  return argparse.ArgumentParser(prog=f"python -m ssldml_jax.bench {name}",
                                 description=doc.splitlines()[0])


def parse_args(parser: argparse.ArgumentParser, args: Optional[Sequence[str]], *, quick: str,
               positive: Sequence[str] = (),
               at_least: Optional[Mapping[str, int]] = None) -> argparse.Namespace:
  """``args`` parsed, with the options every benchmark has added last to ``parser``.

  Those are ``--quick`` (a smoke run of seconds, never recorded; ``quick`` says what it runs) and
  ``--no_record``. An option of ``positive`` below 1, or of ``at_least`` below its bound, is a
  one-line usage error naming it (exit status 2).
  """
  parser.add_argument("--quick", action="store_true", help=quick)
  parser.add_argument("--no_record", action="store_true",
                      help="do not append the figures to BENCHMARKS.md")
  a = parser.parse_args(args)
  for key, low in {**dict.fromkeys(positive, 1), **(at_least or {})}.items():
    if getattr(a, key) < low:
      parser.error(f"--{key}={getattr(a, key)} must be >= {low}")
  return a


def int_list(flag: str, low: int) -> Callable[[str], tuple[int, ...]]:
  """An argparse ``type`` for ``flag``: comma-separated integers, each at least ``low``."""
  def parse(text: str) -> tuple[int, ...]:
    try:
      values = tuple(int(s) for s in text.split(","))
    except ValueError:
      values = ()
    if not values or min(values) < low:
      raise argparse.ArgumentTypeError(f"{flag}={text!r} must be comma-separated integers "
                                       f">= {low}")
    return values
  return parse


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def version(package: str) -> str:
  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return "not installed"


def machine_line(peers: Sequence[str] = ()) -> str:
  """One line: date, CPU, cores, JAX backend and devices, versions (of ``peers`` too)."""
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  parts = [datetime.date.today().isoformat(),
           f"{cpu_model()}, {os.cpu_count()} cores",
           f"jax {jax.__version__} on {jax.default_backend()} ({len(devices)} x {', '.join(kinds)})",
           f"numpy {np.__version__}", f"python {platform.python_version()}"]
  parts += [f"{p} {version(p)}" for p in peers]
  return " | ".join(parts)


def load_line() -> str:
  """The load averages (``uptime``): figures from a shared machine mean little without them."""
  if not hasattr(os, "getloadavg"):
    return "load average: unknown"
  return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min)"


def block(value: Any) -> Any:
  """Waits for every JAX array in ``value`` (other leaves pass through)."""
  return jax.block_until_ready(value)


def timings(fn: Callable[[], Any], *, repeats: int = 3, warmup: int = 1) -> list[float]:
  """Seconds of each of ``repeats`` calls of ``fn()`` after ``warmup`` untimed ones.

  A call is over when its result is ready (``block_until_ready``), so asynchronous dispatch is
  not mistaken for speed; the warm-up calls absorb compilation.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  for _ in range(warmup):
    block(fn())
  out = []
  for _ in range(repeats):
    start = time.perf_counter()
    block(fn())
    out.append(time.perf_counter() - start)
  return out


def time_call(fn: Callable[[], Any], *, repeats: int = 3, warmup: int = 1) -> float:
  """Median seconds of one call of ``fn()`` (see ``timings``)."""
  return statistics.median(timings(fn, repeats=repeats, warmup=warmup))


def time_interleaved(fns: dict[str, Callable[[], Any]], *, rounds: int = 3,
                     calls: int | dict[str, int] = 1, warmup: int = 1) -> dict[str, float]:
  """Median seconds per call of each function, timed in alternation.

  Each of ``rounds`` rounds runs every function in turn, ``calls`` times (an int for all, or a
  dict by name; names missing from the dict are called once), so that the varying load of a
  shared machine weighs on all of them alike. ``warmup`` untimed calls of each come first.
  """
  if rounds < 1:
    raise ValueError(f"rounds must be >= 1, got {rounds}")
  per_call: dict[str, list[float]] = {name: [] for name in fns}
  for fn in fns.values():
    for _ in range(warmup):
      block(fn())
  for _ in range(rounds):
    for name, fn in fns.items():
      n = calls.get(name, 1) if isinstance(calls, dict) else calls
      start = time.perf_counter()
      for _ in range(n):
        block(fn())
      per_call[name].append((time.perf_counter() - start) / n)
  return {name: statistics.median(t) for name, t in per_call.items()}


def seconds(s: float) -> str:
  """``s`` with a unit that keeps 3-4 significant digits readable: 12.3 s, 45.6 ms, 7.89 us."""
  if not np.isfinite(s):
    return "-"
  for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
    if s >= scale:
      return f"{s / scale:.3g} {unit}"
  return f"{s * 1e9:.3g} ns"


def ratio(peer_s: float, ours_s: float) -> str:
  """How many times faster this project is than the peer: ``x2.31`` (below 1: slower)."""
  if not ours_s or not np.isfinite(peer_s):
    return "-"
  return f"x{peer_s / ours_s:.2f}"


_NUMBER = re.compile(r"[-x]?[0-9][0-9.,e+-]*( ?[a-zA-Z/%]+)?|-")   # 12.3 ms, x1.83, 4.2e-07


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A Markdown table: numbers right-aligned, text left; floats with 4 significant digits."""
  def cell(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
      return f"{v:.4g}"
    return str(v)
  cells = [[cell(v) for v in row] for row in rows]
  widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
  lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
  lines += ["| " + " | ".join(c.rjust(w) if _NUMBER.fullmatch(c) else c.ljust(w)
                              for c, w in zip(r, widths)) + " |" for r in cells]
  return "\n".join(lines)


def print_comparison(rows: Sequence[dict], title: str) -> None:
  """Prints comparison rows as a table under ``title``.

  A row has ``case``, ``ours_s`` (this project's seconds), ``peer``, ``peer_s``, ``ratio``
  (peer / ours: above 1 means this project is faster) and optionally ``note`` and ``goal``.
  """
  headers = ["case", "ssldml_jax", "peer", "peer time", "ratio"]
  extra = [k for k in ("note", "goal") if any(k in r for r in rows)]
  body = [[r.get("case", ""), seconds(r["ours_s"]), r.get("peer", ""),
           seconds(r.get("peer_s", float("nan"))),
           f"x{r['ratio']:.2f}" if np.isfinite(r.get("ratio", float("nan"))) else "-"]
          + [r.get(k, "") for k in extra] for r in rows]
  print(f"\n{title}\n" + table(headers + extra, body), flush=True)


def jsonable(v: Any) -> Any:
  if isinstance(v, dict):
    return {str(k): jsonable(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [jsonable(x) for x in v]
  if isinstance(v, (np.integer,)):
    return int(v)
  if isinstance(v, (np.floating, float)):
    return float(f"{float(v):.6g}")
  if isinstance(v, np.ndarray):
    return jsonable(v.tolist())
  return v


def record(name: str, result: dict, path: Optional[str] = None) -> str:
  """Appends one dated line with ``result`` (as JSON) under "Recorded runs" in BENCHMARKS.md.

  The file is ``path`` or ``$SSLDML_BENCHMARKS_MD`` or ``BENCHMARKS.md`` in the working directory
  (the repository root, where the README runs benchmarks). Returns the path written.
  """
  path = path or os.environ.get("SSLDML_BENCHMARKS_MD") or BENCHMARKS_MD
  text = ""
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      text = f.read()
  add = ""
  if RECORD_HEADING not in text:
    add += ("\n" if text and not text.endswith("\n") else "") + f"\n{RECORD_HEADING}\n\n"
    add += "Lines appended by the benchmark programs (raw figures, newest last).\n\n"
  add += (f"- `{name}` {machine_line()}: "
          f"`{json.dumps(jsonable(result), separators=(',', ':'))}`\n")
  with open(path, "a", encoding="utf-8") as f:
    f.write(add)
  return path
