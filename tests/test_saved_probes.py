"""Saved probe heads: written as plain files, read back, they score embeddings exactly as the
fitted heads did; the encoder is checked by the hash of its parameters."""

import json
import os

import numpy as np
import pytest

from ssldml_jax import config_defaults
from ssldml_jax.data import ecg_files
from ssldml_jax.eval import (embed, fitting, head_training, linear_probe, metrics as M,
                             mlp_probe, probe_config, saved_probes, targets)

FORMAT = ecg_files.RecordFormat(stored_rate=100, num_samples=1000, model_rate=50)
MULTI = targets.Target("ds", "ds", "multilabel", classes=("NORM", "MI"))
CLASSES = targets.Target("code", "code", "multiclass", classes=("0", "1", "2"))


def _config():
  c = probe_config.add_entry_keys(probe_config.add_probe_section(config_defaults.base_config()))
  c.model.width, c.model.stage_sizes, c.model.embedding_dim = 4, (1,), 8
  c.data.sampling_rate = FORMAT.model_rate
  c.probe.heads, c.probe.threshold_criterion = ("linear", "mlp"), "youden"
  c.probe.mlp.hidden_dim = 8
  return c


def _splits(n=(120, 60, 50), seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for size in n:
    x = rng.normal(size=(size, 8)) * np.geomspace(0.5, 4.0, 8) + 1.0
    signal = x[:, 0] - 0.5 * x[:, 1]
    out.append({"embedding": x, "pcwp": (16 + 5 * signal + rng.normal(0, 2, size)).astype(
        np.float32), "ds": np.stack([signal > 0.5, signal < -0.5], 1).astype(np.int32),
                "code": np.digitize(signal, [-0.5, 0.5])})
  return out


def _fits(c, train, val, test):
  fits = []
  for target in targets.parse_all(("binary", "regression"), 18.0) + [MULTI, CLASSES]:
    y = [targets.values(s, target) for s in (train, val)]
    res, info = fitting.fit_head("linear", target, 0, train["embedding"], y[0],
                                 val["embedding"], y[1], test["embedding"], config=c)
    for seed in (0, 1):  # the deterministic linear fit stands for both seeds
      fits.append(fitting.Fit("linear", target.name, "100%", seed, len(y[0]), res.test_scores,
                              res.val_scores, res.threshold, info, res))
  binary = targets.parse("binary", 18.0)
  y = [targets.values(s, binary) for s in (train, val)]
  for seed in (0, 1):
    res, info = fitting.fit_head("mlp", binary, seed, train["embedding"], y[0],
                                 val["embedding"], y[1], test["embedding"], config=c)
    fits.append(fitting.Fit("mlp", "binary", "100%", seed, len(y[0]), res.test_scores,
                            res.val_scores, res.threshold, info, res))
  return fits


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  c = _config()
  c.probe.mlp.max_steps, c.probe.mlp.eval_every_steps = 40, 20
  train, val, test = _splits()
  fits = _fits(c, train, val, test)
  encoder = embed.random_encoder(c, 0)
  root = str(tmp_path_factory.mktemp("probe"))
  probe_targets = targets.parse_all(("binary", "regression"), 18.0) + [MULTI, CLASSES]
  saved_probes.save(os.path.join(root, saved_probes.HEADS_DIR), config=c, fits=fits,
                    probe_targets=probe_targets, validation=val, encoder=encoder,
                    record_format=FORMAT, dataset="d")
  return root, fits, val, test, encoder


def test_saved_heads_score_as_the_fitted_ones(saved):
  root, fits, val, test, encoder = saved
  probe = saved_probes.load(root)
  assert probe.record_format == FORMAT and probe.targets[2] == MULTI
  assert sorted(os.listdir(os.path.join(root, saved_probes.HEADS_DIR))) == sorted(
      ["manifest.json", "linear-binary-100pct-seed0.npz", "linear-regression-100pct-seed0.npz",
       "linear-ds-100pct-seed0.npz", "linear-code-100pct-seed0.npz",
       "mlp-binary-100pct-seed0.npz", "mlp-binary-100pct-seed1.npz"])
  scores = probe.scores(test["embedding"])
  assert set(scores) == {("linear", "binary"), ("linear", "regression"), ("linear", "ds"),
                         ("linear", "code"), ("mlp", "binary")}
  for (head, name), got in scores.items():
    mean = np.mean([f.test_scores for f in fits if (f.head, f.target) == (head, name)], axis=0)
    np.testing.assert_allclose(got, mean, rtol=0, atol=1e-6, err_msg=f"{head} {name}")
  # The rules: thresholds chosen on the seed-mean validation scores with the configured criterion.
  by_key = {(e.head, e.target.name): e for e in probe.ensembles}
  mean_val = np.mean([f.val_scores for f in fits if (f.head, f.target) == ("mlp", "binary")], 0)
  assert by_key["mlp", "binary"].threshold == M.choose_threshold(val["pcwp"] > 18.0, mean_val,
                                                                 "youden")
  (ds,) = [f for f in fits if (f.target, f.seed) == ("ds", 0)]
  assert by_key["linear", "ds"].threshold == [
      M.choose_threshold(val["ds"][:, k] == 1, ds.val_scores[:, k], "youden") for k in range(2)]
  assert by_key["linear", "regression"].threshold is None
  manifest = probe.manifest
  (linear,) = [e for e in manifest["fits"] if e["file"] == "linear-binary-100pct-seed0.npz"]
  assert linear["seeds"] == [0, 1] and manifest["encoder"]["workdir"] is None


def test_the_encoder_is_checked_by_the_hash_of_its_parameters(saved, tmp_path):
  root, _, _, _, encoder = saved
  sha = saved_probes.params_sha256(encoder.variables)
  assert saved_probes.load(root).manifest["encoder"]["params_sha256"] == sha
  # Any change of any array changes the hash; its order in the tree does not.
  flat = saved_probes.flatten(encoder.variables)
  key = sorted(flat)[3]
  changed = dict(flat, **{key: flat[key] + np.float32(1e-7)})
  assert saved_probes.params_sha256(saved_probes.unflatten(changed)) != sha
  assert saved_probes.params_sha256(saved_probes.unflatten(dict(reversed(flat.items())))) == sha
  assert saved_probes.params_sha256(
      saved_probes.unflatten({k: v.astype(np.float64) for k, v in flat.items()})) != sha


def test_unusable_probe_files_say_why(saved, tmp_path):
  root = saved[0]
  with pytest.raises(saved_probes.ProbeFileError, match="holds no saved probe"):
    saved_probes.load(str(tmp_path))
  heads = tmp_path / saved_probes.HEADS_DIR
  heads.mkdir()
  (heads / saved_probes.MANIFEST).write_text("{not json")
  with pytest.raises(saved_probes.ProbeFileError, match="manifest.json: unreadable"):
    saved_probes.load(str(tmp_path))
  with open(os.path.join(root, saved_probes.HEADS_DIR, saved_probes.MANIFEST)) as f:
    manifest = json.load(f)
  (heads / saved_probes.MANIFEST).write_text(json.dumps(dict(manifest, format=99)))
  with pytest.raises(saved_probes.ProbeFileError, match="format 99, this version reads 1"):
    saved_probes.load(str(tmp_path))
  (heads / saved_probes.MANIFEST).write_text(json.dumps(manifest))
  (heads / "linear-binary-100pct-seed0.npz").write_bytes(b"damaged")
  probe = saved_probes.load(str(tmp_path))
  with pytest.raises(saved_probes.ProbeFileError, match="linear-binary-100pct-seed0.npz: "
                                                        "unreadable saved head"):
    probe.scores(np.zeros((2, 8)))


@pytest.mark.slow
def test_a_fine_tuned_head_scores_raw_ecgs_as_in_training(tmp_path):
  from ssldml_jax.eval import finetune

  c = _config()
  encoder = embed.random_encoder(c, 0)
  rng = np.random.default_rng(0)

  def split(n):
    ecg = rng.normal(0, 0.1, (n, 64, 12)).astype(np.float32)
    code = rng.integers(0, 3, n)
    ecg[:, :, 0] += code[:, None] * 0.2
    return {"ecg": ecg, "code": code}

  train, val, test = split(24), split(12), split(10)
  settings = finetune.FinetuneSettings(learning_rate=1e-2, per_device_batch_size=2, max_steps=2,
                                       eval_every_steps=2, patience=1)
  res = finetune.finetune(encoder, train, val, test, task=CLASSES, seed=0, settings=settings)
  assert res.test_scores.shape == (10, 3) and isinstance(res.output, head_training.OutputMap)
  fit = fitting.Fit("finetune", "code", "100%", 0, 24, res.test_scores, res.val_scores, None,
                    {}, res)
  c.probe.heads = ("finetune",)
  saved_probes.save(str(tmp_path / saved_probes.HEADS_DIR), config=c, fits=[fit],
                    probe_targets=[CLASSES], validation=val, encoder=encoder,
                    record_format=FORMAT, dataset="d")
  probe = saved_probes.load(str(tmp_path))
  assert probe.needs_ecg
  got = probe.scores(np.zeros((10, 8)), test["ecg"], per_device_batch_size=2)
  np.testing.assert_allclose(got["finetune", "code"], res.test_scores, atol=1e-6)


def test_mlp_scores_of_saved_variables_equal_training_predictions():
  train, val, test = _splits(seed=1)
  settings = mlp_probe.MLPSettings(hidden_dim=8, max_steps=20, eval_every_steps=10, patience=1)
  res = mlp_probe.train_mlp_probe(train["embedding"], train["ds"] == 1, val["embedding"],
                                  val["ds"] == 1, test["embedding"], task="multilabel",
                                  settings=settings, width=2)
  assert res.test_scores.shape == (50, 2)
  variables = saved_probes.unflatten(saved_probes.flatten(res.best_variables))
  got = mlp_probe.predict_scores(variables, res.standardizer, res.output, test["embedding"],
                                 width=2, hidden_dim=8, dropout=settings.dropout)
  np.testing.assert_allclose(got, res.test_scores, atol=1e-7)
  assert len(res.threshold) == 2 and isinstance(res.standardizer, linear_probe.Standardizer)
