"""Embeddings of a whole split: every ECG once, in record order, equal to a direct forward pass;
the .npz cache is reused only for the same weights and data."""

import numpy as np
import pytest

from ssldml_jax import config_defaults
from ssldml_jax.data import reader, records
from ssldml_jax.eval import embed, probe_config


@pytest.fixture(scope="module")
def setup(ecg_synth_tiny, data_dir):
  c = probe_config.add_entry_keys(probe_config.add_probe_section(config_defaults.base_config()))
  c.data.name, c.data.data_dir, c.data.sampling_rate = "ecg_synth/tiny", data_dir, 50
  c.data.eval_per_device_batch_size = 4  # 8 devices x 4: the 39 validation ECGs need padding
  c.model.width, c.model.stage_sizes, c.model.embedding_dim = 4, (1,), 8
  c.model.stem_kernel, c.model.kernel_size = 5, 3
  encoder = embed.random_encoder(c, seed=0)
  return encoder, embed.data_config_for(c, encoder)


def test_every_ecg_once_and_equal_to_a_direct_forward_pass(setup, ecg_synth_tiny):
  encoder, data_config = setup
  out = embed.embed_split(encoder, data_config, "validation")
  labels = reader.read_labels(ecg_synth_tiny, "validation")
  assert len(labels["ecg_id"]) % 32 != 0
  assert out["ecg_id"].tolist() == labels["ecg_id"].tolist()
  for key in ("patient_id", "pcwp", "age", "sex"):
    np.testing.assert_array_equal(out[key], labels[key])
  source = ecg_synth_tiny.as_data_source("validation")
  ecg = np.stack([records.resample(records.int16_uv_to_mv(source[i]["ecg"]), 100, 50)
                  for i in range(len(source))]).astype(np.float32)
  direct = np.asarray(encoder.module.apply(encoder.variables, ecg, train=False))
  assert out["embedding"].dtype == np.float32 and out["embedding"].shape == (len(source), 8)
  np.testing.assert_allclose(out["embedding"], direct, rtol=1e-4, atol=1e-5)


def test_cache_is_reused_only_for_the_same_weights_and_data(setup, tmp_path, monkeypatch,
                                                            capsys):
  encoder, data_config = setup
  calls = []

  def fake_embed(enc, data, split, **kwargs):
    calls.append(enc.source)
    n = 3
    return {"embedding": np.full((n, 2), len(calls), np.float32),
            "ecg_id": np.array(["a", "b", "c"]), "patient_id": np.array(["p", "p", "q"]),
            "pcwp": np.array([10, np.nan, 20], np.float32), "age": np.zeros(n, np.float32),
            "sex": np.zeros(n, np.int32)}

  monkeypatch.setattr(embed, "embed_split", fake_embed)
  first = embed.cached_split(encoder, data_config, "test", str(tmp_path))
  again = embed.cached_split(encoder, data_config, "test", str(tmp_path))
  assert len(calls) == 1
  for key in embed.FIELDS:
    np.testing.assert_array_equal(again[key], first[key])
  saved = embed.load_npz(str(tmp_path / "test.npz"))
  assert (saved["source"], saved["dataset"], saved["split"]) == (encoder.source,
                                                                  data_config.name, "test")
  other = embed.Encoder(**{**encoder.__dict__, "source": "other weights"})
  assert embed.cached_split(other, data_config, "test", str(tmp_path))["embedding"][0, 0] == 2
  assert "made by other weights or data; recomputing" in capsys.readouterr().out
  (tmp_path / "test.npz").write_bytes(b"not an npz")
  embed.cached_split(other, data_config, "test", str(tmp_path))
  assert len(calls) == 3 and "is unreadable" in capsys.readouterr().out
  np.savez(str(tmp_path / "bad.npz"), embedding=np.zeros((1, 2)))
  with pytest.raises(ValueError, match="not an embeddings file .*missing ecg_id"):
    embed.load_npz(str(tmp_path / "bad.npz"))
