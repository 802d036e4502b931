"""``configs/probe_ptbxl.py`` on a PTB-XL fixture: records without a superclass left out and
counted, macro-AUROC equal to scikit-learn's on the saved predictions, the benchmark's tables,
and ``predict`` on the WFDB files of fold 10 equal to the probe's own scores."""

import csv
import json
import os

import numpy as np
import pytest
from sklearn import metrics as skm

import real_data_fixtures as fx
from ssldml_jax import cli, predict, probe
from ssldml_jax.data import build, ptbxl
from ssldml_jax.eval import probe_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# wfdb calls pandas in a way pandas 3 deprecates; not this project's to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword")
COLUMNS = [f"diagnostic_superclass.{c}" for c in ptbxl.SUPERCLASSES]


@pytest.mark.slow
def test_ptbxl_benchmark_on_the_fixture(tmp_path, capsys):
  manual, data_dir = str(tmp_path / "src"), str(tmp_path / "data")
  truth = fx.write_ptbxl_benchmark(manual)
  build.build("ptbxl", data_dir, manual_dir=manual)
  config = cli.load_config_file(os.path.join(REPO, "configs", "probe_ptbxl.py") + ":tiny")
  config.data.data_dir = data_dir
  config.model.width, config.model.stage_sizes, config.model.embedding_dim = 4, (1,), 8
  workdir = str(tmp_path / "probe")
  probe.main(config, workdir)
  out = capsys.readouterr().out

  # Records without a superclass are left out of every split, and counted.
  without = {split: sum(1 for s, v, _ in truth.values() if s == split and not any(v))
             for split in ("train", "validation", "test")}
  with open(os.path.join(workdir, probe_files.RESULTS_FILE)) as f:
    results = json.load(f)
  for split, n in without.items():
    total = sum(1 for s, _, _ in truth.values() if s == split)
    assert results["labeled_ecgs"][split] == {"split": split, "ecgs": total,
                                              "labeled": total - n}
    assert f"probe: {split}: {n} of {total} ECG(s) without a label for diagnostic_superclass" in out

  # Macro-AUROC and per-superclass AUROC of the table = scikit-learn's on predictions.csv.
  pred = probe_files.read_predictions(os.path.join(workdir, probe_files.PREDICTIONS_FILE))
  test = pred["split"] == "test"
  assert sorted(pred["ecg_id"][test]) == sorted(
      i for i, (s, v, _) in truth.items() if s == "test" and any(v))
  y = np.stack([pred[f"y_true_{c}"][test] for c in COLUMNS], axis=1)
  score = np.stack([pred[f"y_score_{c}"][test] for c in COLUMNS], axis=1)
  for i, ecg_id in enumerate(pred["ecg_id"][test]):
    np.testing.assert_array_equal(y[i], truth[ecg_id][1])
  rows = {(r["metric"], r["fraction"]): r for r in results["rows"]
          if r["target"] == "diagnostic_superclass" and r["group"] == "all"}
  assert rows["macro_auroc", "100%"]["point"] == pytest.approx(
      skm.roc_auc_score(y, score, average="macro"), abs=1e-6)
  for k, c in enumerate(ptbxl.SUPERCLASSES):
    assert rows[f"auroc_{c}", "100%"]["point"] == pytest.approx(
        skm.roc_auc_score(y[:, k], score[:, k]), abs=1e-6)
  low, high = rows["macro_auroc", "100%"]["low"], rows["macro_auroc", "100%"]["high"]
  assert low <= rows["macro_auroc", "100%"]["point"] <= high

  # The benchmark's tables: one line for the (random) encoder, label fractions 1/10/100%.
  with open(os.path.join(workdir, "tables", "label_fractions_diagnostic_superclass.csv")) as f:
    table = list(csv.reader(f))
  assert table[0] == ["Method", "1%", "10%", "100%"] and table[1][0] == "random"
  with open(os.path.join(workdir, "tables", "diagnostic_superclass.csv")) as f:
    header = next(csv.reader(f))
  assert header == ["Method", "n", "Macro-AUROC", "Macro-AUPRC"] + [
      f"AUROC {c}" for c in ptbxl.SUPERCLASSES]

  # predict on the WFDB files of fold 10 (500 Hz, PTB-XL's lead names) gives the same scores.
  records = [path + ".hea" for s, _, path in truth.values() if s == "test"]
  csv_path = str(tmp_path / "fold10.csv")
  assert predict.run(workdir, records, csv_path, progress=False).failed == 0
  with open(csv_path, newline="") as f:
    by_id = {r["ecg_id"].split("_")[0].lstrip("0"): r for r in csv.DictReader(f)}
  assert len(by_id) == len(records)  # records without a superclass are scored too
  for column in COLUMNS:
    ours = [float(by_id[i][f"y_score_{column}"]) for i in pred["ecg_id"][test]]
    np.testing.assert_allclose(ours, pred[f"y_score_{column}"][test], rtol=0, atol=1e-5)
