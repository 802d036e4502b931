"""Fine-tuning (ssldml_jax/eval/finetune.py) on 8 fake CPU devices.

- 8 devices x 2 ECGs fine-tune like 1 device with the 16 concatenated (dropout off): the same
  scores and weights, with every device's copy of the weights identical; and the planted signal
  is learnt, for mPCWP > 18 and for mPCWP.
- The probe's fine-tune route (``python -m ssldml_jax.probe`` with ``finetune`` among the heads)
  trains on the raw labeled ECGs and reports the head in its results, predictions and tables.
"""

import csv
import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from ssldml_jax import config_defaults, parallel
from ssldml_jax.eval import embed, finetune, metrics, probe_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES, PER_DEVICE, T = 8, 2, 64
SETTINGS = finetune.FinetuneSettings(learning_rate=1e-2, per_device_batch_size=PER_DEVICE,
                                     max_steps=40, eval_every_steps=10, patience=5, dropout=0.0)


def _one_device(monkeypatch) -> None:
  """Makes this process's code see only the first device (jax.pmap then maps over 1)."""
  first = jax.local_devices()[:1]
  monkeypatch.setattr(jax, "local_devices", lambda *a, **k: first)
  monkeypatch.setattr(jax, "local_device_count", lambda *a, **k: 1)


def _every_copy_identical(monkeypatch) -> list:
  """Wraps ``parallel.unreplicate`` (how fine-tuning takes its weights off the devices) to read
  every device's copy first; returns the list of the device counts it saw."""
  real, seen = parallel.unreplicate, []

  def read_every_copy(tree):
    for leaf in jax.tree.leaves(tree):
      copies = np.asarray(leaf)
      seen.append(len(copies))
      for d in range(1, len(copies)):
        np.testing.assert_array_equal(copies[d], copies[0], err_msg=f"device {d}")
    return real(tree)

  monkeypatch.setattr(parallel, "unreplicate", read_every_copy)
  return seen


def _encoder():
  c = config_defaults.base_config()
  c.model.width, c.model.stage_sizes, c.model.embedding_dim = 4, (1,), 8
  c.model.stem_kernel, c.model.kernel_size, c.model.dropout = 5, 3, 0.0
  return embed.random_encoder(c, seed=0)


def _planted(rng, n: int) -> dict:
  """mPCWP written into lead I as an offset of (mPCWP - 18) / 10 mV, under noise."""
  pcwp = rng.uniform(5.0, 35.0, n).astype(np.float32)
  ecg = rng.normal(0, 0.1, (n, T, 12)).astype(np.float32)
  ecg[:, :, 0] += (pcwp[:, None] - 18.0) / 10.0
  return {"ecg": ecg, "pcwp": pcwp}


# Biases whose gradient is zero because a BatchNorm follows (the head's hidden layer directly,
# the embedding through the hidden layer): Adam's normalised first step moves them by +-learning
# rate on rounding noise, so 8 devices and 1 move them differently. Nothing else sees them in
# training (BatchNorm removes a common shift).
SHIFT_INVARIANT = ("['params']['head']['hidden']['bias']",
                   "['params']['encoder']['embedding']['bias']")


def _assert_same_weights(a, b) -> None:
  flat_a, flat_b = (jax.tree_util.tree_flatten_with_path(t)[0] for t in (a, b))
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (path, x), (_, y) in zip(flat_a, flat_b):
    if jax.tree_util.keystr(path) not in SHIFT_INVARIANT:
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=SETTINGS.learning_rate * 1e-3,
                                 err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
@pytest.mark.parametrize("task", ["binary", "regression"])
def test_8_devices_finetune_like_one_with_the_concatenated_batch(task, monkeypatch):
  assert jax.local_device_count() == DEVICES
  rng = np.random.default_rng(0)
  train, val, test = _planted(rng, 96), _planted(rng, 40), _planted(rng, 60)
  encoder = _encoder()
  frozen = jax.tree.map(np.copy, encoder.variables)
  seen = _every_copy_identical(monkeypatch)
  # One step: the gradient (averaged over devices) and the BatchNorm statistics (over the
  # global batch) against one device with the 16 ECGs, before Adam's steps can amplify
  # rounding differences.
  first = dataclasses.replace(SETTINGS, max_steps=1, eval_every_steps=1)
  eight = finetune.finetune(encoder, train, val, test, task=task, seed=0, settings=first)
  with monkeypatch.context() as m:
    _one_device(m)
    one = finetune.finetune(encoder, train, val, test, task=task, seed=0,
                            settings=dataclasses.replace(first, per_device_batch_size=16))
  assert set(seen) == {DEVICES, 1}
  _assert_same_weights(eight.final_variables, one.final_variables)

  # Trained on: the planted signal is learnt, every device holding the same weights throughout.
  res = finetune.finetune(encoder, train, val, test, task=task, seed=0, settings=SETTINGS)
  assert res.steps_run == SETTINGS.max_steps and res.best_step in dict(res.history)
  if task == "binary":
    assert np.all((res.test_scores > 0) & (res.test_scores < 1))
    assert metrics.auroc(test["pcwp"] > 18.0, res.test_scores) > 0.95
    assert 0 < res.threshold < 1
  else:
    assert metrics.pearson_r(test["pcwp"], res.test_scores) > 0.9
    assert metrics.rmse(test["pcwp"], res.test_scores) < 0.5 * np.std(test["pcwp"])
  # The encoder was trained too (weights and BatchNorm statistics), on a copy.
  tuned = finetune.variables_of(res)
  assert not np.allclose(tuned["params"]["stem_conv"]["kernel"],
                         frozen["params"]["stem_conv"]["kernel"])
  assert not np.allclose(tuned["batch_stats"]["stem_bn"]["mean"],
                         frozen["batch_stats"]["stem_bn"]["mean"])
  for a, b in zip(jax.tree.leaves(encoder.variables), jax.tree.leaves(frozen)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_probe_fine_tune_route(ecg_synth_tiny, data_dir, tmp_path):
  workdir = tmp_path / "probe"
  done = subprocess.run(
      [sys.executable, "-m", "ssldml_jax.probe",
       f"--config={os.path.join(REPO, 'configs', 'probe.py')}:tiny", f"--workdir={workdir}",
       "--config.probe.heads=linear,finetune", "--config.probe.fraction_heads=linear",
       "--config.model.width=4", "--config.model.stage_sizes=(1,)"],
      cwd=REPO, env=dict(os.environ, SSLDML_DATA_DIR=data_dir), capture_output=True, text=True,
      timeout=400)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  config = probe_config.add_probe_section(config_defaults.base_config())
  steps = 4  # configs/probe.py:tiny
  assert config.probe.finetune.max_steps != steps
  sizes = {s: ecg_synth_tiny.info.splits[s].num_examples for s in ("train", "validation", "test")}

  with open(workdir / "probe_results.json") as f:
    results = json.load(f)
  fits = [f for f in results["fits"] if f["head"] == "finetune"]
  assert sorted(f["target"] for f in fits) == ["binary", "regression"]
  for fit in fits:  # Every labeled training ECG, read raw, for the configured steps.
    assert (fit["fraction"], fit["n_train"], fit["steps"]) == ("100%", sizes["train"], steps)
  rows = [r for r in results["rows"] if r["head"] == "finetune" and r["group"] == "all"]
  assert {r["metric"] for r in rows} >= {"auroc", "rmse"}
  assert {r["n"] for r in rows} == {sizes["test"]}

  with open(workdir / "predictions.csv") as f:
    predictions = list(csv.DictReader(f))
  assert [sum(r["split"] == s for r in predictions) for s in ("validation", "test")] == [
      sizes["validation"], sizes["test"]]
  for r in predictions:
    assert 0 < float(r["y_score_binary_finetune"]) < 1
    assert np.isfinite(float(r["y_score_regression_finetune"]))
  with open(workdir / "tables" / "classification_finetune.md") as f:
    assert "| random |" in f.read()
