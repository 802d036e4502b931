"""Tables render to Markdown, CSV and LaTeX that parse back to the same numbers; plots write."""

import csv
import io
import math

import numpy as np
import pytest

from ssldml_jax.eval import bootstrap as B
from ssldml_jax.eval import subgroups as S
from ssldml_jax.eval import tables as T


def _rows():
  est = B.Estimate(point=0.8123, low=0.7901, high=0.8344, n_ecgs=500, n_patients=200,
                   n_resamples=1000)
  return [
      T.Row.from_estimate("SSL-DML", "binary", "auroc", est),
      T.Row("SSL-DML", "binary", "auprc", 0.61, 0.55, 0.67, 500),
      T.Row("SSL-DML", "binary", "f1", 0.58, 0.52, 0.63, 500, sd=0.0123, note="*"),
      T.Row("random_init", "binary", "auroc", 0.7004, 0.6712, 0.7288, 480),
      T.Row("random_init", "binary", "accuracy", 0.7, math.nan, math.nan, 480),
      T.Row("SSL-DML", "regression", "pearson_r", -0.12, -0.2049, -0.0401, 500),
      T.Row("SSL-DML", "regression", "rmse", 7.891, 7.5, 8.3, 500),
      T.Row("SSL-DML", "binary", "auroc", 0.75, 0.7, 0.8, 100, group="female"),
      T.Row("SSL-DML", "binary", "auroc", 0.77, 0.72, 0.82, 120, group=">=75"),
      T.Row("SSL-DML", "binary", "auroc", 0.66, 0.6, 0.71, 500, fraction="1%"),
      T.Row("SSL-DML", "binary", "auroc", 0.71, 0.66, 0.75, 500, fraction="n=1000"),
  ]


def _same_result(a, b) -> bool:
  """Two ``cell_parts`` (point, low, high, SD, note), NaN (n/a, no interval) equal to NaN."""
  return all(x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
             for x, y in zip(a, b, strict=True))


def _latex_lines(tex: str) -> list[list[str]]:
  """Header and body cells of a table written by ``to_latex``."""
  header = tex.split(r"\toprule", 1)[1].split(r"\midrule", 1)[0].strip()
  return [[c.strip() for c in header.removesuffix(r"\\").split(" & ")]] + T.read_latex_body(tex)


def assert_round_trip(table: T.Table, path_stem: str) -> None:
  """The three files of ``table`` read back to exactly its header and body: every row, every
  cell; LaTeX's cells to the same numbers (its own dash and minus) or the escaped text."""
  md, text_csv, tex = (open(p, encoding="utf-8").read() for p in T.write_table(table, path_stem))
  want = [list(table.header)] + [list(row) for row in table.body]
  assert list(csv.reader(io.StringIO(text_csv))) == want
  assert T.read_markdown_body(md) == want[1:]
  header, rule = [line for line in md.splitlines() if line.startswith("|")][:2]
  assert T.read_markdown_body("\n".join([header, rule, header])) == want[:1]
  assert (f"**{table.caption}**" in md) == bool(table.caption)
  got = _latex_lines(tex)
  assert len(got) == len(want)
  for line, wanted in zip(got, want):
    assert len(line) == len(wanted), (line, wanted)
    for cell, text in zip(line, wanted):
      try:
        number = T.cell_parts(text)
      except ValueError:
        assert cell == T.latex_escape(text)
      else:
        assert _same_result(T.cell_parts(cell, latex=True), number), (cell, text)


def _tables() -> dict:
  rows = _rows()
  odd = [T.Row("A|B & C_1", "binary", "auroc", -0.5, -0.75, 0.25, 7)]  # escaped in md and tex
  from ssldml_jax.eval import comparisons, premise, significance

  diff = significance.Difference(0.8, 0.75, 0.05, -0.012, 0.11, 0.0004, 1000)
  compared = [comparisons.Comparison("ssl", "random", "binary", "100%", "auroc", diff, 0.02),
              comparisons.Comparison("ssl", "simclr", "regression", "1%", "rmse", diff, 0.7)]
  premises = [premise.Premise(m, 30, 1920, {k: (v, v - 0.25, v + 0.5) for k in premise.STATS})
              for m, v in (("dtw", 0.5), ("euclidean", -0.125))]
  return {"classification": T.target_table(rows + odd, "binary", T.CLASSIFICATION_COLUMNS,
                                             caption="Elevated mPCWP"),
          "regression": T.target_table(
              rows + [T.Row("random_init", "regression", "mae", 6.5, math.nan, math.nan, 480)],
              "regression", T.REGRESSION_COLUMNS, caption="mPCWP regression (mmHg)"),
          "subgroups": T.subgroup_table(rows),
          "fractions": T.label_fraction_table(rows),
          "group_tests": T.group_test_table(_group_tests()),
          "comparisons": comparisons.table(compared, {"ssl": "SSL & co"}, "linear"),
          "pretext": premise.table(premises, {}, 18.0)}


def _group_tests():
  return [("SSL-DML", "binary", S.GroupTest("auroc", "female", "male", "DeLong", 0.8, 0.75, 0.05,
                                            -0.02, 0.12, 0.012, 100, 120, 40, 50, 0.3, 0.25)),
          ("SSL-DML", "regression", S.GroupTest("rmse", "female", "male", "bootstrap", 7.0, 8.0,
                                                -1.0, -2.0, 0.1, 0.04, 100, 120, 40, 50,
                                                math.nan, math.nan)),
          ("Random", "binary", S.GroupTest("auroc", "18-35", ">=75", "DeLong", 0.7, 0.7, 0.0,
                                           -0.1, 0.1, math.nan, 10, 12, 4, 5, 0.2, 0.1))]


@pytest.mark.parametrize("name", sorted(_tables()))
def test_tables_round_trip_exactly(name, tmp_path):
  table = _tables()[name]
  assert len(table.body) >= 2 and all(len(r) == len(table.header) for r in table.body)
  assert_round_trip(table, str(tmp_path / "sub" / name))


def test_classification_table_cells():
  table = T.target_table(_rows(), "binary", T.CLASSIFICATION_COLUMNS)
  assert table.header == ("Method", "n", "AUROC", "AUPRC", "F1", "Accuracy", "Sensitivity",
                          "Specificity", "PPV", "NPV")
  assert table.body == (("SSL-DML", "500", "0.812 (0.790-0.834)", "0.610 (0.550-0.670)",
                         "0.580 (0.520-0.630) \u00b10.012 *") + ("n/a",) * 5,
                        ("random_init", "480", "0.700 (0.671-0.729)", "n/a", "n/a", "0.700")
                        + ("n/a",) * 4)
  assert T.parse_cell(table.body[0][2]) == (0.812, 0.790, 0.834)
  assert T.cell_parts(table.body[0][4]) == (0.58, 0.52, 0.63, 0.012, "*")
  tex = T.to_latex(table)
  assert [r[0] for r in T.read_latex_body(tex)] == ["SSL-DML", "random\\_init"]
  assert "\\toprule" in tex and "0.812 (0.790--0.834)" in tex
  assert "0.580 (0.520--0.630) $\\pm$0.012 *" in tex


def test_negative_numbers_and_latex_minus():
  table = T.target_table(_rows(), "regression", T.REGRESSION_COLUMNS)
  assert table.body[0][2:] == ("7.891 (7.500-8.300)", "n/a", "-0.120 (-0.205--0.040)")
  assert T.parse_cell("-0.120 (-0.205--0.040)") == (-0.12, -0.205, -0.04)
  tex = T.to_latex(table)
  assert "$-$0.120 ($-$0.205--$-$0.040)" in tex
  cells = T.read_latex_body(tex)[0]
  assert T.parse_cell(cells[4], latex=True) == (-0.12, -0.205, -0.04)
  assert T.parse_cell("0.812 (0.790--0.834)", latex=True) == (0.812, 0.79, 0.834)


def test_subgroup_fraction_and_group_test_tables():
  rows = _rows()
  sub = T.subgroup_table(rows)
  assert [r[:3] for r in sub.body] == [("SSL-DML", "female", "100"), ("SSL-DML", ">=75", "120")]
  assert "$>$=75" in T.to_latex(sub)
  frac = T.label_fraction_table(rows)
  assert frac.header == ("Method", "1%", "100%", "n=1000")  # conventional order, not input order
  assert frac.body[0] == ("SSL-DML", "0.660 (0.600-0.710)", "0.812 (0.790-0.834)",
                          "0.710 (0.660-0.750)")
  assert frac.body[1] == ("random_init", "n/a", "0.700 (0.671-0.729)", "n/a")
  pv = T.group_test_table(_group_tests())
  assert pv.body[0] == ("SSL-DML", "binary", "AUROC", "female vs male", "100 / 120", "40 / 50",
                        "0.300 / 0.250", "0.800", "0.750", "0.050 (-0.020-0.120)", "DeLong",
                        "0.012", "0.024")   # Holm over the two defined p-values: 2 x 0.012
  assert pv.body[1][6] == "n/a" and pv.body[1][-2:] == ("0.040", "0.040")
  assert pv.body[2][-2:] == ("n/a", "n/a")
  assert "| SSL-DML | binary | AUROC | female vs male |" in T.to_markdown(pv)
  assert T.format_p(0.0004) == "<0.001" and T.format_p(0.01234) == "0.012"


def test_duplicate_results_are_an_error():
  rows = _rows() + [T.Row("SSL-DML", "binary", "auroc", 0.9, 0.8, 0.95, 500)]
  with pytest.raises(ValueError, match="two results for {'method': 'SSL-DML'} / metric='auroc'"):
    T.target_table(rows, "binary", T.CLASSIFICATION_COLUMNS)


def test_plots_write_pngs_and_pca_matches_sklearn(tmp_path):
  from sklearn.decomposition import PCA

  from ssldml_jax.eval import plots

  rng = np.random.default_rng(0)
  emb = rng.normal(size=(80, 6)) * np.array([5.0, 3.0, 1.0, 1.0, 0.5, 0.1])
  proj, ratio = plots.pca_2d(emb)
  ref = PCA(n_components=2).fit(emb)
  np.testing.assert_allclose(np.abs(proj), np.abs(ref.transform(emb)), atol=1e-8)
  np.testing.assert_allclose(ratio, ref.explained_variance_ratio_)
  y = rng.random(80) < 0.4
  prob = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, 80), 0, 1)
  curves = {"a": (y, prob), "b": (y, rng.random(80))}
  for path in (plots.plot_roc_pr(curves, str(tmp_path / "roc_pr.png")),
               plots.plot_calibration(curves, str(tmp_path / "calibration.png")),
               plots.plot_embedding_projection(emb, rng.normal(16, 8, 80),
                                               str(tmp_path / "proj.png"), max_points=50)):
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
