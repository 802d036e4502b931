"""Fine-tuning trains a copy of the encoder under pmap on 8 devices."""

import jax
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ssldml_jax import config_defaults
from ssldml_jax.eval import embed, finetune, probe_config


def test_finetune_trains_a_copy_of_the_encoder_on_8_devices():
  c = probe_config.add_entry_keys(probe_config.add_probe_section(config_defaults.base_config()))
  c.model.width, c.model.stage_sizes, c.model.embedding_dim = 4, (1,), 8
  c.model.stem_kernel, c.model.kernel_size = 5, 3
  encoder = embed.random_encoder(c, seed=0)
  frozen = jax.tree.map(np.copy, encoder.variables)
  rng = np.random.default_rng(0)

  def split(n):
    pcwp = rng.uniform(5.0, 35.0, n).astype(np.float32)
    ecg = rng.normal(0, 0.1, (n, 64, 12)).astype(np.float32)
    ecg[:, :, 0] += (pcwp[:, None] - 18.0) / 10.0   # a planted offset in lead I
    return {"ecg": ecg, "pcwp": pcwp}

  settings = finetune.FinetuneSettings(learning_rate=1e-2, per_device_batch_size=2, max_steps=6,
                                       eval_every_steps=3, patience=5)
  val = split(20)
  res = finetune.finetune(encoder, split(40), val, split(10), task="binary", seed=0,
                          settings=settings)
  assert res.val_scores.shape == (20,) and res.test_scores.shape == (10,)
  assert np.all((res.test_scores > 0) & (res.test_scores < 1))
  assert res.best_step in dict(res.history) and res.steps_run == 6
  # The criterion recorded at the kept step is the validation AUROC of the kept scores.
  assert dict(res.history)[res.best_step] == pytest.approx(
      roc_auc_score(val["pcwp"] > 18.0, res.val_scores), abs=1e-12)
  tuned = finetune.variables_of(res)
  # The encoder was trained (stem weights and BatchNorm statistics moved) ...
  assert not np.allclose(tuned["params"]["stem_conv"]["kernel"],
                         frozen["params"]["stem_conv"]["kernel"])
  assert not np.allclose(tuned["batch_stats"]["stem_bn"]["mean"],
                         frozen["batch_stats"]["stem_bn"]["mean"])
  # ... on a copy: the frozen encoder's own arrays are untouched.
  for a, b in zip(jax.tree.leaves(encoder.variables), jax.tree.leaves(frozen)):
    np.testing.assert_array_equal(a, b)
