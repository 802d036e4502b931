"""The main job end to end on ecg_synth/tiny: tables, predictions, embeddings, plots, a resumed run.

One test runs the job once and checks it part by part: under ``pytest -n 2`` a module fixture
would run once per worker, doubling the most expensive setup of the suite.
"""

import csv
import os

import numpy as np
import pytest

from ssldml_jax import cli
from ssldml_jax.eval import tables

METHODS = ("ssl_dml_euclidean", "random")
QUICKSTART_TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                               "quickstart.py") + ":tiny"


def _labels(config, split):
  from ssldml_jax.data import build, reader

  return reader.read_labels(build.ensure_built(config.data.name), split)


def _check_tables(config, root):
  for stem in ("cohort", "classification", "regression", "subgroups_binary",
               "subgroups_regression", "label_fractions_binary", "label_fractions_regression",
               "subgroup_tests"):
    for ext in (".md", ".csv", ".tex"):
      assert os.path.getsize(os.path.join(root, "tables", stem + ext)) > 0, stem + ext
  with open(os.path.join(root, "tables", "classification.md")) as f:
    body = tables.read_markdown_body(f.read())
  with open(os.path.join(root, "tables", "classification.tex")) as f:
    latex = tables.read_latex_body(f.read())
  with open(os.path.join(root, "tables", "classification.csv")) as f:
    header, *csv_body = csv.reader(f)
  assert header == ["Method", "n", "AUROC", "AUPRC", "F1", "Accuracy"]
  assert csv_body == body  # Every row and cell, as in Markdown.
  assert [r[0] for r in body] == ["SSL-DML (Euclidean)", "Random encoder"]
  assert [r[0] for r in latex] == [r[0] for r in body] and len(latex) == len(body)
  n_test = len(_labels(config, "test")["ecg_id"])
  for row, tex in zip(body, latex):
    assert len(row) == len(tex) == len(header) and row[1] == tex[1] == str(n_test)
    for cell, tex_cell in zip(row[2:], tex[2:]):  # AUROC .. accuracy, same numbers in LaTeX
      point, low, high = tables.parse_cell(cell)
      assert 0.0 <= low <= point <= high <= 1.0
      assert tables.parse_cell(tex_cell, latex=True) == (point, low, high)
  with open(os.path.join(root, "tables", "label_fractions_binary.csv")) as f:
    assert next(csv.reader(f)) == ["Method", "1%", "10%", "100%", "n=40"]


def _check_predictions(config, root):
  labels = _labels(config, "test")
  by_id = dict(zip(labels["ecg_id"], labels["pcwp"]))
  for method in METHODS:
    with open(os.path.join(root, "predictions", f"{method}.csv")) as f:
      rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    assert sorted(r["ecg_id"] for r in rows) == sorted(labels["ecg_id"].tolist())
    for r in rows:
      assert int(r["y_true_binary"]) == int(by_id[r["ecg_id"]] > 18.0)
      assert float(r["y_true_regression"]) == pytest.approx(by_id[r["ecg_id"]], abs=1e-3)
      assert 0.0 < float(r["y_score_binary"]) < 1.0
      assert np.isfinite(float(r["y_score_regression"]))
  for name in ("example_ecg", "roc_pr", "calibration", "embedding_random",
               "embedding_ssl_dml_euclidean", "conditions/00_normal", "conditions/01_lbbb"):
    with open(os.path.join(root, "plots", name + ".png"), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def _check_embeddings(config, root):
  """Every train ECG embedded exactly once on 8 devices, rows matching a direct forward pass."""
  import jax
  from ssldml_jax import reproduce
  from ssldml_jax.data import build, reader, records
  from ssldml_jax.eval import embed, probe_config

  assert jax.local_device_count() == 8
  builder = build.ensure_built(config.data.name)
  labels = reader.read_labels(builder, "train")
  assert len(labels["ecg_id"]) % (8 * config.data.eval_per_device_batch_size) != 0  # padded
  saved = embed.load_npz(os.path.join(root, "probe", "random", "embeddings", "train.npz"))
  np.testing.assert_array_equal(saved["ecg_id"], labels["ecg_id"])  # all, once, in record order
  np.testing.assert_array_equal(saved["patient_id"], labels["patient_id"])
  np.testing.assert_allclose(saved["pcwp"], labels["pcwp"])
  assert saved["ecg_id"].dtype.kind == "U" and saved["embedding"].dtype == np.float32
  encoder = embed.load_encoder(probe_config.probe_stage_config(config, "random", None))
  assert saved["source"] == encoder.source
  source = builder.as_data_source("train")
  rate = builder.builder_config.sampling_rate
  rows = [0, len(labels["ecg_id"]) - 1]  # first batch and the padded last one
  ecg = np.stack([records.resample(records.int16_uv_to_mv(source[i]["ecg"]), rate,
                                   config.data.sampling_rate) for i in rows]).astype(np.float32)
  direct = encoder.module.apply(encoder.variables, ecg, train=False)
  np.testing.assert_allclose(saved["embedding"][rows], np.asarray(direct), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_main_job_end_to_end_and_resumed(ecg_synth_tiny, tmp_path, capsys):
  from ssldml_jax import reproduce

  config = cli.load_config_file(QUICKSTART_TINY)
  config.methods = METHODS
  config.train.num_steps = 2
  # One narrow stage and the linear probe only: every jit compile stays cheap (the MLP and
  # fine-tuning paths have their own tests).
  config.model.width, config.model.stage_sizes, config.model.embedding_dim = 4, (1,), 8
  config.probe.heads = config.probe.fraction_heads = ("linear",)
  root = str(tmp_path)
  made = reproduce.run(config, root)
  _check_tables(config, root)
  _check_predictions(config, root)
  _check_embeddings(config, root)

  capsys.readouterr()
  stamp = os.path.getmtime(os.path.join(root, "probe", "random", "probe_results.json"))
  again = reproduce.run(config, root)
  out = capsys.readouterr().out
  assert out.count("done earlier") == 1 and out.count("results in") == 2
  assert os.path.getmtime(os.path.join(root, "probe", "random", "probe_results.json")) == stamp
  assert tables.to_markdown(again["classification"]) == tables.to_markdown(made["classification"])


def test_bad_method_names_the_key():
  from ssldml_jax import reproduce

  config = cli.load_config_file(QUICKSTART_TINY)
  config.methods = ("ssl_dml_dtw", "byol")
  with pytest.raises(cli.ConfigError, match=r"config\.methods=.*'byol'"):
    reproduce.validate(config)
