"""``python -m ssldml_jax.bench {dtw,mining,train_step,input,predict,all} [flags]``: the
benchmarks.

Each name runs ``ssldml_jax.bench.<name>.main(flags)``; ``all`` runs every one in turn with the
same flags (``--quick`` and ``--no_record`` are understood by all) and ends with one table of all
their comparisons. ``<name> --help`` lists a benchmark's own flags.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Optional, Sequence

BENCHMARKS = ("dtw", "mining", "train_step", "input", "predict")


def _load(name: str):
  """The benchmark's module, or None (with a line saying so) when it does not exist yet."""
  module = f"ssldml_jax.bench.{name}"
  try:
    return importlib.import_module(module)
  except ModuleNotFoundError as e:
    if e.name != module:
      raise    # The benchmark exists but needs something missing: show that error.
    print(f"benchmark {name!r} is not available: no module {module} "
          f"(ssldml_jax/bench/{name}.py)", flush=True)
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  usage = f"usage: python -m ssldml_jax.bench {{{','.join(BENCHMARKS + ('all',))}}} [flags]"
  if not argv or argv[0] in ("-h", "--help"):
    print(usage + "\n\n" + (__doc__ or "").strip().split("\n\n", 1)[1])
    return 0 if argv else 2
  name, flags = argv[0], argv[1:]
  if name not in BENCHMARKS + ("all",):
    print(f"unknown benchmark {name!r}; {usage}", file=sys.stderr)
    return 2
  if name == "all":
    return run_all(flags)
  module = _load(name)
  if module is None:
    return 1
  module.main(flags)
  return 0


def comparison_rows(name: str, result: Any) -> list[dict]:
  """The comparison rows in what a benchmark's ``main`` returned (a list, or a dict's 'rows')."""
  rows = result.get("rows", []) if isinstance(result, dict) else list(result or [])
  return [dict(r, benchmark=r.get("benchmark", name)) for r in rows
          if isinstance(r, dict) and "ours_s" in r]


def run_all(flags: Sequence[str]) -> int:
  """Every benchmark in turn, then one table of all their rows; 1 if any failed or is missing.

  A benchmark that fails (a peer not installed, an agreement check) is reported in one line and
  the others still run.
  """
  from ssldml_jax.bench import common
  rows, failed = [], []
  for each in BENCHMARKS:
    print(f"\n== {each} ==", flush=True)
    module = _load(each)
    if module is None:
      failed.append(f"{each} (missing)")
      continue
    try:
      rows += comparison_rows(each, module.main(flags))
    except Exception as e:  # pylint: disable=broad-except  # One line, then the next benchmark.
      print(f"benchmark {each} failed: {type(e).__name__}: {e}", flush=True)
      failed.append(each)
  print("\n== all ==\n" + common.machine_line(), flush=True)
  common.print_comparison(
      [dict(r, case=f"{r['benchmark']}: {r.get('case', '')}") for r in rows],
      "every benchmark (ratio = peer time / ssldml_jax time; above 1: ssldml_jax is faster)")
  print(common.load_line(), flush=True)
  if failed:
    print(f"not run or failed: {', '.join(failed)}", flush=True)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
