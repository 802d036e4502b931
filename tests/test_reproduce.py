"""The main job end to end on ecg_synth/tiny: tables, predictions, embeddings, plots, the label
rows' own pretrainings, a resumed run.

One test runs the job once and checks it part by part: under ``pytest -n 2`` a module fixture
would run once per worker, doubling the most expensive setup of the suite.
"""

import csv
import os

import numpy as np
import pytest

from ssldml_jax import cli
from ssldml_jax.eval import tables

METHODS = ("ssl_dml_euclidean", "supervised", "random")
SEEDS = (0, 1)
QUICKSTART_TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                               "quickstart.py") + ":tiny"


def _labels(config, split):
  from ssldml_jax.data import build, reader

  return reader.read_labels(build.ensure_built(config.data.name), split)


def _check_tables(config, root):
  for stem in ("cohort", "classification", "regression", "subgroups_binary",
               "subgroups_regression", "label_fractions_binary", "label_fractions_regression",
               "subgroup_tests", "comparisons", "pretext"):
    for ext in (".md", ".csv", ".tex"):
      assert os.path.getsize(os.path.join(root, "tables", stem + ext)) > 0, stem + ext
  with open(os.path.join(root, "tables", "classification.md")) as f:
    body = tables.read_markdown_body(f.read())
  with open(os.path.join(root, "tables", "classification.tex")) as f:
    latex = tables.read_latex_body(f.read())
  with open(os.path.join(root, "tables", "classification.csv")) as f:
    header, *csv_body = csv.reader(f)
  assert header == ["Method", "n", "AUROC", "AUPRC", "F1", "Accuracy", "Sensitivity",
                    "Specificity", "PPV", "NPV"]
  assert csv_body == body  # Every row and cell, as in Markdown.
  assert [r[0] for r in body] == ["SSL-DML (Euclidean)", "Supervised", "Random encoder"]
  assert [r[0] for r in latex] == [r[0] for r in body] and len(latex) == len(body)
  n_test = len(_labels(config, "test")["ecg_id"])
  for row, tex in zip(body, latex):
    assert len(row) == len(tex) == len(header) and row[1] == tex[1] == str(n_test)
    for cell, tex_cell in zip(row[2:4], tex[2:4]):  # AUROC, AUPRC: same numbers in LaTeX
      point, low, high, sd, _ = tables.cell_parts(cell)
      assert 0.0 <= low <= point <= high <= 1.0 and sd >= 0.0  # two pretraining seeds: an SD
      assert tables.cell_parts(tex_cell, latex=True)[:4] == (point, low, high, sd)
  with open(os.path.join(root, "tables", "label_fractions_binary.csv")) as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["Method", "1%", "10%", "100%", "n=40"]
  assert all(cell != tables.NA for cell in rows[2][1:])  # Supervised: every row, honestly
  with open(os.path.join(root, "tables", "comparisons.csv")) as f:
    compared = list(csv.DictReader(f))
  assert {(r["Method"], r["Reference"]) for r in compared} == {
      ("SSL-DML (Euclidean)", "Random encoder"), ("Supervised", "Random encoder"),
      ("Supervised", "SSL-DML (Euclidean)")}
  with open(os.path.join(root, "tables", "pretext.csv")) as f:
    assert [r["Method"] for r in csv.DictReader(f)] == ["SSL-DML (Euclidean)"]


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
  saved = embed.load_npz(os.path.join(root, "probe", "random", "seed1", "embeddings",
                                      "train.npz"))
  np.testing.assert_array_equal(saved["ecg_id"], labels["ecg_id"])  # all, once, in record order
  np.testing.assert_array_equal(saved["patient_id"], labels["patient_id"])
  np.testing.assert_allclose(saved["pcwp"], labels["pcwp"])
  assert saved["ecg_id"].dtype.kind == "U" and saved["embedding"].dtype == np.float32
  encoder = embed.load_encoder(probe_config.probe_stage_config(
      reproduce.replicate_config(config, 1), "random", None))
  assert saved["source"] == encoder.source
  source = builder.as_data_source("train")
  rate = builder.builder_config.sampling_rate
  rows = [0, len(labels["ecg_id"]) - 1]  # first batch and the padded last one
  ecg = np.stack([records.resample(records.int16_uv_to_mv(source[i]["ecg"]), rate,
                                   config.data.sampling_rate) for i in rows]).astype(np.float32)
  direct = encoder.module.apply(encoder.variables, ecg, train=False)
  np.testing.assert_allclose(saved["embedding"][rows], np.asarray(direct), rtol=1e-4, atol=1e-5)


def _check_label_rows(root, fed):
  """The supervised encoder behind a label-limited row was fed that row's patients only, the
  ones its probe trains on; the full one patients from the whole labeled training split."""
  from ssldml_jax.eval import embed, probe_files, subsets

  for seed in SEEDS:
    for row in ("1%", "10%", "n=40"):
      where = f"{subsets.row_slug(row)}/seed{seed}_draw0"
      probe = probe_files.load_outcome(os.path.join(root, "probe", "supervised", where))
      train = embed.load_npz(probe.embeddings_path("train"))
      rows = subsets.draw_subsets(_config_of(probe), train["patient_id"], 0)[row]
      assert fed[f"{row} seed 0", seed] == set(train["patient_id"][rows].tolist()), (row, seed)
      assert {(f["fraction"], f["n_train"]) for f in probe.fits} == {(row, rows.size)}
    # The full encoder: two batches of 32 from every labeled training patient.
    assert fed["all", seed] <= set(train["patient_id"].tolist()) and len(fed["all", seed]) > 12
  assert len(fed[("1% seed 0", 0)]) == 1  # one patient, fewer ECGs than a batch: repeated
  # Every fit knows the seed its encoder was pretrained (the random one: initialised) with.
  for method in ("ssl_dml_euclidean", "random"):
    for seed in SEEDS:
      fits, _ = probe_files.load_fits(os.path.join(root, "probe", method, f"seed{seed}",
                                                   probe_files.FITS_FILE))
      assert {f.pretrain_seed for f in fits} == {seed}


def _config_of(outcome):
  import json

  import ml_collections

  with open(os.path.join(outcome.workdir, "config.json")) as f:
    return ml_collections.ConfigDict(json.load(f))


@pytest.mark.slow
def test_main_job_end_to_end_and_resumed(ecg_synth_tiny, tmp_path, capsys, monkeypatch):
  from ssldml_jax import reproduce
  from ssldml_jax.data import pipeline

  config = cli.load_config_file(QUICKSTART_TINY)
  config.methods = METHODS
  config.pretrain_seeds = SEEDS
  config.compare_to = "ssl_dml_euclidean"
  config.train.num_steps = 2
  # One narrow stage and the linear probe only: every jit compile stays cheap (the MLP and
  # fine-tuning paths have their own tests).
  config.model.width, config.model.stage_sizes, config.model.embedding_dim = 4, (1,), 8
  config.probe.heads = config.probe.fraction_heads = ("linear",)
  fed = {}
  real = pipeline.make_train_iterator

  def recording(data_config, *, seed, split=None, records=None, subset="", **kwargs):
    batches = real(data_config, seed=seed, split=split, records=records, subset=subset,
                   **kwargs)
    if split != data_config.train_split or kwargs.get("num_epochs") == 1:
      return batches  # the self-supervised pool, the premise's pass
    seen = fed.setdefault((subset or "all", seed), set())

    class Recorded:
      def __iter__(self):
        return self

      def __next__(self):
        batch = next(batches)
        seen.update(batch["patient_id"][batch["mask"]].tolist())
        return batch

      def __getattr__(self, name):
        return getattr(batches, name)

    return Recorded()

  monkeypatch.setattr(pipeline, "make_train_iterator", recording)
  root = str(tmp_path)
  made = reproduce.run(config, root)
  _check_tables(config, root)
  _check_predictions(config, root)
  _check_embeddings(config, root)
  _check_label_rows(root, fed)

  capsys.readouterr()
  stamp = os.path.getmtime(os.path.join(root, "probe", "random", "seed0", "probe_results.json"))
  again = reproduce.run(config, root)
  out = capsys.readouterr().out
  assert out.count("done earlier") == 2 + 2 * 4 and out.count("results in") == 2 + 2 + 2 * 4
  assert os.path.getmtime(os.path.join(root, "probe", "random", "seed0",
                                       "probe_results.json")) == stamp
  assert tables.to_markdown(again["classification"]) == tables.to_markdown(made["classification"])


def test_bad_method_names_the_key():
  from ssldml_jax import reproduce

  config = cli.load_config_file(QUICKSTART_TINY)
  config.methods = ("ssl_dml_dtw", "byol")
  with pytest.raises(cli.ConfigError, match=r"config\.methods=.*'byol'"):
    reproduce.validate(config)
