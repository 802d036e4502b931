"""The grain input pipeline over ecg_synth/tiny with 8 fake devices."""

import json

import jax
import numpy as np
import pytest

from ssldml_jax import cli, config_defaults
from ssldml_jax.data import pipeline, reader, records

DEVICES = 8
PER_DEVICE = 4
BATCH = DEVICES * PER_DEVICE


@pytest.fixture(scope="module")
def config(ecg_synth_tiny, data_dir):
  c = config_defaults.base_config().data
  c.name = "ecg_synth/tiny"
  c.data_dir = data_dir
  c.sampling_rate = 100
  c.per_device_batch_size = PER_DEVICE
  c.eval_per_device_batch_size = PER_DEVICE
  c.build_if_missing = False
  return c


@pytest.fixture(scope="module")
def stored(ecg_synth_tiny):
  """Every record of every split, decoded by TFDS's own decoder: ecg_id -> record."""
  out = {}
  for split in ecg_synth_tiny.info.splits:
    source = ecg_synth_tiny.as_data_source(split)
    for i in range(len(source)):
      rec = source[i]
      out[rec["ecg_id"].decode()] = dict(rec, split=split)
  return out


def _ids(batch):
  return list(batch["ecg_id"][batch["mask"]])


def test_train_batches_shapes_and_values(config, stored):
  assert jax.local_device_count() == DEVICES
  it = pipeline.make_train_iterator(config, seed=3, num_epochs=1)
  batches = list(it)
  assert len(batches) == it.steps_per_epoch
  assert len(batches) == len([r for r in stored.values() if r["split"] == "unlabeled"]) // BATCH
  batch = batches[0]
  assert batch["ecg"].shape == (DEVICES, PER_DEVICE, 1000, 12) and batch["ecg"].dtype == np.float32
  for key, dtype in (("pcwp", np.float32), ("age", np.float32), ("sex", np.int32),
                     ("mask", np.bool_)):
    assert batch[key].shape == (DEVICES, PER_DEVICE) and batch[key].dtype == dtype
  assert batch["ecg_id"].dtype.kind == "U" and batch["mask"].all()
  for d in range(DEVICES):
    for j in range(PER_DEVICE):
      rec = stored[batch["ecg_id"][d, j]]
      assert rec["split"] == "unlabeled" and batch["patient_id"][d, j] == rec["patient_id"].decode()
      np.testing.assert_array_equal(batch["ecg"][d, j], records.int16_uv_to_mv(rec["ecg"]))
      assert np.isnan(batch["pcwp"][d, j]) and batch["age"][d, j] == rec["age"]
      assert batch["sex"][d, j] == rec["sex"]
  assert set(pipeline.device_arrays(batch)) == {"ecg", "pcwp", "age", "sex", "mask"}


def test_epochs_reshuffle_and_seed_determines_order(config, stored):
  def order(seed):
    it = pipeline.make_train_iterator(config, seed=seed, num_epochs=2)
    return [i for b in it for i in _ids(b)]

  n = len([r for r in stored.values() if r["split"] == "unlabeled"])
  first = order(0)
  assert len(first) == (2 * n) // BATCH * BATCH  # Batches run on across the epoch boundary.
  epoch1, epoch2 = first[:n], first[n:]
  assert len(set(epoch1)) == n and len(set(epoch2)) == len(epoch2)  # Each record once an epoch.
  assert epoch1[:len(epoch2)] != epoch2  # Reshuffled.
  assert order(0) == first and order(1) != first


def test_state_restores_the_next_batch(config):
  it = pipeline.make_train_iterator(config, seed=5)  # Prefetching, endless.
  for _ in range(4):  # Crosses the epoch boundary (3 batches per epoch).
    next(it)
  state = it.get_state()
  json.loads(state)  # JSON bytes: storable in a checkpoint.
  expected = [next(it) for _ in range(2)]
  it.close()
  resumed = pipeline.make_train_iterator(config, seed=5)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    assert list(got["ecg_id"].ravel()) == list(want["ecg_id"].ravel())
    np.testing.assert_array_equal(got["ecg"], want["ecg"])
  resumed.close()


def test_processes_read_disjoint_shards(config):
  seen = []
  for index in range(2):
    it = pipeline.make_train_iterator(config, seed=0, num_epochs=1, num_devices=2,
                                      process_index=index, process_count=2)
    seen.append([i for b in it for i in _ids(b)])
    assert len(seen[-1]) == len(set(seen[-1])) == (115 // 2) // (2 * PER_DEVICE) * 2 * PER_DEVICE
  assert not set(seen[0]) & set(seen[1])


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_covers_every_example_once(config, stored, process_count):
  expected = sorted(k for k, r in stored.items() if r["split"] == "validation")  # 39 examples.
  got, lengths = [], []
  for index in range(process_count):
    batches = pipeline.make_eval_iterator(config, "validation", process_index=index,
                                          process_count=process_count)
    lengths.append(len(batches))
    listed = list(batches)
    assert len(listed) == len(batches)
    for batch in listed:
      assert batch["ecg"].shape == (DEVICES, PER_DEVICE, 1000, 12)
      assert (batch["ecg_id"][~batch["mask"]] == "").all()
      assert (batch["ecg"][~batch["mask"]] == 0).all()
      got += _ids(batch)
  assert sorted(got) == expected
  assert len(set(lengths)) == 1  # Every process yields as many batches.


def test_eval_is_repeatable(config):
  batches = pipeline.make_eval_iterator(config, "test")
  first = [list(b["ecg_id"].ravel()) for b in batches]
  assert first == [list(b["ecg_id"].ravel()) for b in batches]


def test_read_split_holds_every_ecg_once_in_record_order(config, ecg_synth_tiny):
  got = pipeline.read_split(config, "validation")  # 39 ECGs: the second batch of 32 is padded
  labels = reader.read_labels(ecg_synth_tiny, "validation")
  assert got["ecg_id"].tolist() == labels["ecg_id"].tolist()
  for key in ("patient_id", "pcwp", "age", "sex"):
    np.testing.assert_array_equal(got[key], labels[key])
  source = ecg_synth_tiny.as_data_source("validation")
  want = np.stack([records.int16_uv_to_mv(source[i]["ecg"]) for i in range(len(source))])
  assert got["ecg"].dtype == np.float32
  np.testing.assert_array_equal(got["ecg"], want)


def test_resample_and_bandpass(config, stored):
  c = config.copy_and_resolve_references()
  c.sampling_rate = 50
  c.bandpass = (0.5, 20.0)
  info = pipeline.dataset_info(c)
  assert (info["num_samples"], info["sampling_rate"]) == (500, 50)
  assert info["stored_sampling_rate"] == 100
  batch = next(iter(pipeline.make_eval_iterator(c, "test")))
  assert batch["ecg"].shape == (DEVICES, PER_DEVICE, 500, 12)
  ecg_id = batch["ecg_id"][1, 2]
  want = records.bandpass(records.resample(records.int16_uv_to_mv(stored[ecg_id]["ecg"]), 100, 50),
                          50, 0.5, 20.0)
  np.testing.assert_allclose(batch["ecg"][1, 2], want, atol=1e-5)


def test_labeled_training_keeps_known_pcwp_only(config, stored):
  it = pipeline.make_train_iterator(config, seed=0, split="train", require_pcwp=True)
  assert it.num_examples == len([r for r in stored.values()
                                 if r["split"] == "train" and np.isfinite(r["pcwp"])])
  assert np.isfinite(next(it)["pcwp"]).all()
  with pytest.raises(cli.ConfigError, match="with a known pcwp"):
    pipeline.make_train_iterator(config, seed=0, split="unlabeled", require_pcwp=True)
  mixed = [{"pcwp": np.float32(v)} for v in (np.nan, 12.0, np.inf, 30.5, np.nan)]
  np.testing.assert_array_equal(pipeline._known_pcwp(mixed), [1, 3])


def test_a_record_subset_smaller_than_a_batch_repeats_only_its_records(config, ecg_synth_tiny):
  """A label row of 5 ECGs under a global batch of 32: every batch holds those 5 only, each
  about equally often (the row tiled 7 times: 35 records, a batch 32 of them)."""
  labels = reader.read_labels(ecg_synth_tiny, "train")
  chosen = np.array([3, 10, 11, 40, 70])
  it = pipeline.make_train_iterator(config, seed=1, split="train", require_pcwp=True,
                                    records=chosen, subset="1% seed 0")
  try:
    assert it.num_examples == 35
    for _ in range(3):
      ids = _ids(next(it))
      assert set(ids) == set(labels["ecg_id"][chosen].tolist())
      assert np.unique(ids, return_counts=True)[1].min() >= 4
    assert json.loads(it.get_state())["stream"]["subset"] == "1% seed 0"
  finally:
    it.close()
  with pytest.raises(ValueError, match=r"records: 1 indices, which must .* \[0, 85\)"):
    pipeline.make_train_iterator(config, seed=1, split="train", records=np.array([85]))


def test_dataset_info(config, ecg_synth_tiny):
  info = pipeline.dataset_info(config)
  assert info["splits"] == {s: ecg_synth_tiny.info.splits[s].num_examples
                            for s in ("unlabeled", "train", "validation", "test")}
  assert (info["num_samples"], info["sampling_rate"]) == (1000, 100)
  assert pipeline.steps_per_epoch(info["splits"]["unlabeled"], config) == 115 // BATCH


@pytest.mark.parametrize("key,value,message", [
    ("bandpass", (0.5, 60.0), r"config.data.bandpass=.*\(Nyquist at 100 Hz\)"),
    ("per_device_batch_size", 0, "config.data.per_device_batch_size=0"),
    ("per_device_batch_size", 64, "512 exceeds the 115 training examples"),
    ("pretrain_split", "nope", "config.data.pretrain_split='nope' is not a split"),
    ("name", "ecg_synth/huge", "config.data.name='ecg_synth/huge': unknown config"),
])
def test_config_errors_name_the_key(config, key, value, message):
  c = config.copy_and_resolve_references()
  c[key] = value
  with pytest.raises(cli.ConfigError, match=message):
    pipeline.make_train_iterator(c, seed=0)
