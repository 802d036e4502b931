"""The report over several probes: which tables, whose numbers in which table, files written."""

import csv
import filecmp
import os

import numpy as np
import pytest

from ssldml_jax import config_defaults
from ssldml_jax.eval import embed, probe_config, probe_files, report, subgroups, tables

HEADS = ("linear", "mlp")


def _config():
  c = probe_config.add_entry_keys(probe_config.add_probe_section(config_defaults.base_config()))
  c.probe.heads, c.probe.fraction_heads = HEADS, ("linear",)
  probe_config.validate(c)
  return c


def _point(name, head, target, metric, fraction="100%", group="all"):
  """A distinct number for every row, so a misplaced row shows."""
  key = f"{name}/{head}/{target}/{metric}/{fraction}/{group}"
  return round(0.05 + (sum(map(ord, key)) % 900) / 1000.0, 3)


def _outcome(name, workdir):
  rows = []
  for head in HEADS:
    for target, metrics in (("binary", ("auroc", "auprc", "f1", "accuracy")),
                            ("regression", ("rmse", "mae", "pearson_r"))):
      for metric in metrics:
        cells = [("100%", "all"), ("10%", "all"), ("100%", "female"), ("100%", "male")]
        for fraction, group in cells:
          p = _point(name, head, target, metric, fraction, group)
          rows.append((head, tables.Row(method=name, target=target, metric=metric, point=p,
                                        low=p - 0.01, high=p + 0.01, n=20, group=group,
                                        fraction=fraction)))
  rows.append(("linear", tables.Row(method=name, target="binary", metric="majority_accuracy",
                                    point=0.725, low=0.7, high=0.75, n=20)))
  tests = [(head, "binary", subgroups.GroupTest(
      metric="auroc", group_a="female", group_b="male", test="DeLong", value_a=0.7, value_b=0.6,
      difference=0.1, low=-0.1, high=0.3, p_value=0.2 if head == "linear" else 0.9, ecgs_a=9,
      ecgs_b=11, patients_a=5, patients_b=5, prevalence_a=0.3, prevalence_b=0.4))
      for head in HEADS]
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, probe_files.PREDICTIONS_FILE), "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(["ecg_id", "patient_id", "split", "y_true_binary", "y_score_binary"])
    for i in range(12):
      w.writerow([f"e{i}", f"p{i}", "test" if i % 3 else "validation", i % 2, 0.1 + 0.07 * i])
  return probe_files.ProbeOutcome(name=name, workdir=workdir, rows=rows, tests=tests, fits=[])


def test_tables_take_each_heads_rows(tmp_path):
  outcomes = [_outcome("a", str(tmp_path / "a")), _outcome("b", str(tmp_path / "b"))]
  made = report.report_tables(outcomes, _config(), labels={"a": "Method A"})
  assert set(made) == {"classification", "regression", "classification_mlp", "regression_mlp",
                       "label_fractions_binary", "label_fractions_regression",
                       "subgroups_binary", "subgroups_regression", "subgroup_tests"}
  for stem, head, target, metrics in (
      ("classification", "linear", "binary", ("auroc", "auprc", "f1", "accuracy")),
      ("classification_mlp", "mlp", "binary", ("auroc", "auprc", "f1", "accuracy")),
      ("regression_mlp", "mlp", "regression", ("rmse", "mae", "pearson_r"))):
    table = made[stem]
    assert [r[0] for r in table.body] == ["Method A", "b"]
    for line, name in zip(table.body, ("a", "b")):
      got = [tables.parse_cell(cell)[0] for cell in line[2:2 + len(metrics)]]
      assert got == pytest.approx([_point(name, head, target, m) for m in metrics])
  fractions = made["label_fractions_binary"]
  # Every configured setting is a column; one without rows (all its fits left out) shows n/a.
  assert fractions.header == ("Method", "1%", "10%", "100%", "n=1000")
  assert tables.parse_cell(fractions.body[1][2])[0] == pytest.approx(
      _point("b", "linear", "binary", "auroc", "10%"))
  assert fractions.body[1][1] == fractions.body[1][4] == tables.NA
  assert {r[1] for r in made["subgroups_binary"].body} == {"female", "male"}
  # The primary head's tests only, Holm-adjusted over the table (two tests of p = 0.2).
  assert [(r[0], r[-2], r[-1]) for r in made["subgroup_tests"].body] == [
      ("Method A", "0.200", "0.400"), ("b", "0.200", "0.400")]
  caption = made["classification"].caption
  assert "always answering the majority class scores accuracy 0.725" in caption
  assert "threshold that maximises F1 on each fit's validation scores" in caption
  assert "*" not in caption  # no comparisons, nothing marked
  assert "threshold that maximises F1" in made["subgroups_binary"].caption
  assert "threshold" not in made["subgroups_regression"].caption


def test_main_table_marks_the_differences_from_random_that_hold(tmp_path):
  from ssldml_jax.eval import comparisons, significance

  outcomes = [_outcome("a", str(tmp_path / "a")), _outcome("random", str(tmp_path / "r"))]

  def comparison(metric, p_holm, reference="random", fraction="100%"):
    diff = significance.Difference(0.8, 0.7, 0.1, 0.05, 0.15, p_holm, 100)
    return comparisons.Comparison("a", reference, "binary", fraction, metric, diff, p_holm)

  found = [comparison("auroc", 0.01), comparison("f1", 0.2), comparison("auprc", 0.01, "b"),
           comparison("accuracy", 0.01, fraction="10%")]
  made = report.report_tables(outcomes, _config(), {"a": "Method A"}, comparisons=found)
  line = made["classification"].body[0]
  assert line[0] == "Method A"
  notes = [tables.cell_parts(cell)[4] for cell in line[2:6]]
  assert notes == ["*", "", "", ""]   # AUROC holds; F1 does not; AUPRC holds against b only
  assert "* the difference from the random encoder holds" in made["classification"].caption
  assert all(tables.cell_parts(c)[4] == "" for c in made["classification_mlp"].body[0][2:])
  assert [r[:5] for r in made["comparisons"].body] == [
      ("Method A", "random", "binary", "100%", "AUROC"),
      ("Method A", "random", "binary", "100%", "F1"), ("Method A", "b", "binary", "100%", "AUPRC"),
      ("Method A", "random", "binary", "10%", "Accuracy")]
  assert [r[-1] for r in made["comparisons"].body] == ["yes", "no", "yes", "yes"]


def test_write_report_files(tmp_path):
  outcomes = [_outcome("a", str(tmp_path / "a")), _outcome("b", str(tmp_path / "b"))]
  config = _config()
  rng = np.random.default_rng(0)
  arrays = {"embedding": rng.normal(size=(6, 4)).astype(np.float32),
            "ecg_id": np.array([f"e{i}" for i in range(6)]),
            "patient_id": np.array([f"p{i}" for i in range(6)]),
            "pcwp": rng.uniform(5, 30, 6).astype(np.float32), "age": np.full(6, 50, np.float32),
            "sex": np.zeros(6, np.int32)}
  embed.save_npz(outcomes[0].embeddings_path("test"), arrays, source="s", dataset="d",
                 split="test")
  root = str(tmp_path / "report")
  made = report.write_report(outcomes, config, root)
  for stem, table in made.items():
    with open(os.path.join(root, "tables", stem + ".md")) as fh:
      assert fh.read() == tables.to_markdown(table)
    assert os.path.getsize(os.path.join(root, "tables", stem + ".tex")) > 0
  for o in outcomes:
    assert filecmp.cmp(o.predictions_path, os.path.join(root, "predictions", f"{o.name}.csv"),
                       shallow=False)
  plots = sorted(os.listdir(os.path.join(root, "plots")))
  assert plots == ["calibration.png", "embedding_a.png", "roc_pr.png"]  # b has no embeddings


def test_any_target_gets_its_main_fraction_and_subgroup_tables(tmp_path):
  c = _config()
  c.probe.targets = ("binary", "diagnostic_superclass:multilabel")
  metrics = ("macro_auroc", "macro_auprc", "auroc_NORM", "auroc_MI")
  rows = []
  for fraction, group in (("100%", "all"), ("10%", "all"), ("100%", "male")):
    for metric in metrics:
      p = _point("a", "linear", "ds", metric, fraction, group)
      rows.append(("linear", tables.Row(method="a", target="diagnostic_superclass",
                                        metric=metric, point=p, low=p - 0.01, high=p + 0.01,
                                        n=7, group=group, fraction=fraction)))
  outcome = probe_files.ProbeOutcome(name="a", workdir=str(tmp_path), rows=rows, tests=[],
                                     fits=[])
  made = report.report_tables([outcome], c, labels={"a": "A"})
  main = made["diagnostic_superclass"]
  assert main.header == ("Method", "n", "Macro-AUROC", "Macro-AUPRC", "AUROC NORM", "AUROC MI")
  assert main.caption.startswith("diagnostic_superclass (multilabel), logistic / ridge probe")
  assert [tables.parse_cell(cell)[0] for cell in main.body[0][2:]] == pytest.approx(
      [_point("a", "linear", "ds", m) for m in metrics])
  fractions = made["label_fractions_diagnostic_superclass"]
  assert tables.parse_cell(fractions.body[0][2])[0] == pytest.approx(
      _point("a", "linear", "ds", "macro_auroc", "10%"))
  assert made["subgroups_diagnostic_superclass"].body[0][:2] == ("A", "male")
  # No row of the binary target: its tables are empty, not filled from another target.
  assert made["classification"].body == ()
  assert report.printed_stems(c) == ["label_fractions_binary",
                                     "label_fractions_diagnostic_superclass", "classification",
                                     "diagnostic_superclass"]
