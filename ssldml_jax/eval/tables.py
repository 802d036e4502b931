"""Result tables as Markdown, CSV and LaTeX, cells formatted "0.812 (0.790-0.834)".

A result is a flat ``Row`` (method, target, metric, point, CI, the SD over pretraining seeds, n,
where it applies the subgroup or label fraction, and a note such as the mark of a difference
that holds). A table is a pivot of rows: one line per method (and group or
fraction), one column per metric (or fraction). Rows keep the order in which they were given.
Two rows that would land in the same cell are an error, never a silent overwrite; a cell with
no row shows "n/a", as does a NaN point or interval.

Every table renders to the same three files with the same numbers (three decimals):
Markdown and CSV write the cell text as above, followed by " ±0.012" when an SD over pretraining
seeds is known and by the row's note (" *"); LaTeX (booktabs) writes "0.812 (0.790--0.834)
$\\pm$0.012" with ``$-$`` for a minus sign. ``parse_cell`` reads a cell of either kind back.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
from typing import Iterable, Optional, Sequence

from ssldml_jax import atomic
from ssldml_jax.eval import bootstrap

METRIC_LABELS = {
    "auroc": "AUROC", "auprc": "AUPRC", "f1": "F1", "accuracy": "Accuracy",
    "sensitivity": "Sensitivity", "specificity": "Specificity",
    "ppv": "PPV", "npv": "NPV", "majority_accuracy": "Majority-class accuracy",
    "rmse": "RMSE", "mae": "MAE", "pearson_r": "Pearson r",
    "macro_auroc": "Macro-AUROC", "macro_auprc": "Macro-AUPRC",
}
CLASSIFICATION_COLUMNS = ("auroc", "auprc", "f1", "accuracy", "sensitivity", "specificity", "ppv",
                          "npv")
REGRESSION_COLUMNS = ("rmse", "mae", "pearson_r")
NA = "n/a"
_NUMBER = r"(-?\d+\.\d+)"
PLUS_MINUS = "\u00b1"
_CELL = re.compile(rf"^\s*{_NUMBER}\s*(?:\(\s*{_NUMBER}\s*-\s*{_NUMBER}\s*\))?"
                   rf"\s*(?:{PLUS_MINUS}\s*{_NUMBER})?\s*(\*)?\s*$")


@dataclasses.dataclass(frozen=True)
class Row:
  method: str
  target: str            # a probe target's name ('binary', 'regression', ...)
  metric: str            # a key of METRIC_LABELS
  point: float
  low: float
  high: float
  n: int                 # test ECGs behind the estimate
  group: str = "all"     # subgroup ('female', '50-75', ...) or 'all'
  fraction: str = "100%" # label fraction ('1%', 'n=1000', ...)
  sd: float = math.nan   # SD over pretraining seeds (NaN: one seed)
  note: str = ""         # appended to the cell, e.g. '*' for a difference that holds

  @classmethod
  def from_estimate(cls, method: str, target: str, metric: str, estimate: bootstrap.Estimate,
                    **kwargs) -> "Row":
    return cls(method=method, target=target, metric=metric, point=estimate.point,
               low=estimate.low, high=estimate.high, n=estimate.n_ecgs, **kwargs)


@dataclasses.dataclass(frozen=True)
class Table:
  header: tuple
  body: tuple            # tuple of tuples of cell strings
  caption: str = ""


# ----------------------------------------------------------------------------- formatting


def format_cell(point: float, low: float = math.nan, high: float = math.nan,
                digits: int = 3, sd: float = math.nan, note: str = "") -> str:
  if not math.isfinite(point):
    return NA
  text = f"{point:.{digits}f}"
  if math.isfinite(low) and math.isfinite(high):
    text += f" ({low:.{digits}f}-{high:.{digits}f})"
  if math.isfinite(sd):
    text += f" {PLUS_MINUS}{sd:.{digits}f}"
  return text + (f" {note}" if note else "")


def format_p(p: float) -> str:
  """A p-value to three decimals, '<0.001' below that, 'n/a' when undefined."""
  if not math.isfinite(p):
    return NA
  return "<0.001" if p < 0.001 else f"{p:.3f}"


def cell_parts(text: str, latex: bool = False) -> tuple[float, float, float, float, str]:
  """(point, low, high, sd, note) of a Markdown/CSV cell, or a LaTeX one with ``latex=True``;
  NaN for 'n/a', a missing interval or SD."""
  if latex:
    # In LaTeX '--' is only the range dash (a minus sign is '$-$'), so swap it first.
    text = text.replace("--", " - ").replace("$-$", "-").replace("$\\pm$", PLUS_MINUS)
  if text.strip() == NA:
    return math.nan, math.nan, math.nan, math.nan, ""
  m = _CELL.match(text)
  if not m:
    raise ValueError(f"cannot read a result from table cell {text!r}")
  point, low, high, sd = (float(g) if g is not None else math.nan for g in m.groups()[:4])
  return point, low, high, sd, m.group(5) or ""


def parse_cell(text: str, latex: bool = False) -> tuple[float, float, float]:
  """(point, low, high) of a cell (``cell_parts`` without the SD and note)."""
  return cell_parts(text, latex)[:3]


# ------------------------------------------------------------------------------- pivoting


def pivot(rows: Iterable[Row], index: Sequence[str], column: str,
          columns: Optional[Sequence[str]] = None, *, labels: Optional[dict] = None,
          show_n: bool = True, caption: str = "") -> Table:
  """One line per distinct ``index`` tuple, one column per value of the field ``column``."""
  rows = list(rows)
  if columns is None:
    columns = list(dict.fromkeys(getattr(r, column) for r in rows))
  keys, cells, ns = [], {}, {}
  for r in rows:
    key = tuple(getattr(r, f) for f in index)
    col = getattr(r, column)
    if col not in columns:
      continue
    if key not in ns:
      keys.append(key)
      ns[key] = []
    if (key, col) in cells:
      raise ValueError(f"two results for {dict(zip(index, key))} / {column}={col!r}")
    cells[key, col] = format_cell(r.point, r.low, r.high, sd=r.sd, note=r.note)
    ns[key].append(r.n)
  labels = labels or {}
  header = tuple(f.capitalize() for f in index) + (("n",) if show_n else ()) + tuple(
      labels.get(c, c) for c in columns)
  body = []
  for key in keys:
    n = "/".join(str(v) for v in dict.fromkeys(ns[key]))  # differing n are shown, not hidden
    body.append(tuple(str(k) for k in key) + ((n,) if show_n else ()) +
                tuple(cells.get((key, c), NA) for c in columns))
  return Table(header=header, body=tuple(body), caption=caption)


def metric_label(metric: str) -> str:
  """The column label of a metric: ``METRIC_LABELS``, or 'AUROC NORM' for ``auroc_NORM`` (one
  label or class of a multi-label or multi-class target)."""
  if metric in METRIC_LABELS:
    return METRIC_LABELS[metric]
  if metric.startswith("auroc_"):
    return f"AUROC {metric[len('auroc_'):]}"
  return metric


def target_table(rows: Iterable[Row], target: str, columns: Sequence[str],
                 caption: str = "") -> Table:
  """The main table of any target: one line per method, the metrics of ``columns``."""
  rows = [r for r in rows if r.target == target and r.group == "all" and r.fraction == "100%"]
  return pivot(rows, ("method",), "metric", columns,
               labels={c: metric_label(c) for c in columns}, caption=caption)


def subgroup_table(rows: Iterable[Row], target: str = "binary",
                   columns: Optional[Sequence[str]] = None,
                   caption: str = "Subgroups (sex, age band)") -> Table:
  columns = columns or (CLASSIFICATION_COLUMNS if target == "binary" else REGRESSION_COLUMNS)
  rows = [r for r in rows if r.target == target and r.group != "all"]
  return pivot(rows, ("method", "group"), "metric", columns,
               labels={c: metric_label(c) for c in columns}, caption=caption)


def label_fraction_table(rows: Iterable[Row], metric: str = "auroc", caption: str = "",
                         fractions: Sequence[str] = ()) -> Table:
  """One column per label fraction: those of the rows and ``fractions`` (the configured ones,
  so that a fraction whose fits were all left out shows as n/a rather than vanishing)."""
  rows = [r for r in rows if r.metric == metric and r.group == "all"]
  fractions = sorted(dict.fromkeys([r.fraction for r in rows] + list(fractions)),
                     key=_fraction_key)
  return pivot(rows, ("method",), "fraction", fractions, labels={}, show_n=False,
               caption=caption or f"{metric_label(metric)} by label fraction")


def _fraction_key(name: str) -> tuple:
  """Percentages ascending, then fixed label counts ('n=1000') ascending, then anything else."""
  try:
    if name.endswith("%"):
      return (0, float(name[:-1]), name)
    if name.startswith("n="):
      return (1, float(name[2:]), name)
  except ValueError:
    pass
  return (2, 0.0, name)


def group_test_table(results: Iterable[tuple[str, str, object]], caption: str = "") -> Table:
  """``results``: (method, target, subgroups.GroupTest); p-values Holm-adjusted over the table."""
  from ssldml_jax.eval import significance

  results = list(results)
  adjusted = significance.holm([r.p_value for _, _, r in results])
  body = []
  for (method, target, r), p_holm in zip(results, adjusted):
    prevalence = ("n/a" if not math.isfinite(r.prevalence_a) else
                  f"{r.prevalence_a:.3f} / {r.prevalence_b:.3f}")
    body.append((method, target, metric_label(r.metric),
                 f"{r.group_a} vs {r.group_b}", f"{r.ecgs_a} / {r.ecgs_b}",
                 f"{r.patients_a} / {r.patients_b}", prevalence, format_cell(r.value_a),
                 format_cell(r.value_b), format_cell(r.difference, r.low, r.high), r.test,
                 format_p(r.p_value), format_p(p_holm)))
  header = ("Method", "Target", "Metric", "Groups (A vs B)", "ECGs A / B", "Patients A / B",
            "Prevalence A / B", "A", "B", "A - B (95% CI)", "Test", "p", "p (Holm)")
  return Table(header=header, body=tuple(body), caption=caption)


# -------------------------------------------------------------------------------- writers


def to_markdown(table: Table) -> str:
  def line(cells):
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
  out = [line(table.header), "|" + "|".join("---" for _ in table.header) + "|"]
  out += [line(r) for r in table.body]
  return (f"**{table.caption}**\n\n" if table.caption else "") + "\n".join(out) + "\n"


def to_csv(table: Table) -> str:
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(table.header)
  writer.writerows(table.body)
  return buffer.getvalue()


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}", ">": r"$>$", "<": r"$<$"}


def latex_escape(text: str) -> str:
  return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _latex_cell(text: str) -> str:
  if text != NA and _CELL.match(text):
    point, low, high, sd, note = cell_parts(text)
    digits = len(text.split()[0].split(".")[1])

    def num(v):
      s = f"{abs(v):.{digits}f}"
      return ("$-$" if v < 0 else "") + s
    out = num(point)
    if math.isfinite(low):
      out += f" ({num(low)}--{num(high)})"
    if math.isfinite(sd):
      out += f" $\\pm${num(sd)}"
    return out + (f" {note}" if note else "")
  return latex_escape(text)


def to_latex(table: Table) -> str:
  spec = "l" * len(table.header)
  lines = [r"\begin{table}[t]", r"\centering"]
  if table.caption:
    lines.append(rf"\caption{{{latex_escape(table.caption)}}}")
  lines += [rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
            " & ".join(latex_escape(h) for h in table.header) + r" \\", r"\midrule"]
  lines += [" & ".join(_latex_cell(c) for c in row) + r" \\" for row in table.body]
  lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
  return "\n".join(lines) + "\n"


def write_table(table: Table, path_stem: str) -> list[str]:
  """Writes ``path_stem`` + .md, .csv and .tex, each atomically; returns the paths."""
  return [atomic.write_text(path_stem + ext, render(table))
          for ext, render in ((".md", to_markdown), (".csv", to_csv), (".tex", to_latex))]


def read_latex_body(text: str) -> list[list[str]]:
  """Cells of the body lines of a table written by ``to_latex`` (for checks and scripts)."""
  lines = text.split(r"\midrule", 1)[1].split(r"\bottomrule", 1)[0].strip().splitlines()
  return [[c.strip() for c in line.rstrip().removesuffix(r"\\").split(" & ")] for line in lines]


def read_markdown_body(text: str) -> list[list[str]]:
  """Cells of the body lines of a table written by ``to_markdown``."""
  lines = [l for l in text.splitlines() if l.startswith("|")][2:]
  return [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", l)[1:-1]] for l in lines]
