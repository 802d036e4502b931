"""Smoke tests of the benchmarks' correctness checks (no timing is asserted anywhere)."""

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("pytorch_metric_learning")

from ssldml_jax.bench import mining, reference_loops  # noqa: E402


@pytest.mark.parametrize("miner", mining.MINERS)
def test_miner_and_loss_equal_pml_and_the_loop(miner):
  # Raises if the loss or the gradient of any of the three differs; the losses are also returned.
  found = mining.check_agreement(miner, 12, 16, seed=3)
  assert set(found) == {"ssldml_jax", "pytorch-metric-learning", "python loop"}
  assert 0.0 < found["ssldml_jax"] < 2.0 + mining.MARGIN


def test_agreement_check_catches_a_different_loss(monkeypatch):
  real = reference_loops.distance_triplet_loop
  monkeypatch.setattr(reference_loops, "distance_triplet_loop",
                      lambda *a, **k: (real(*a, **k)[0] + 1e-3, real(*a, **k)[1]))
  with pytest.raises(AssertionError, match="python loop loss"):
    mining.check_agreement("distance", 12, 16, seed=3)


def test_loop_negatives_are_random_among_the_others(monkeypatch):
  inputs = mining.make_inputs(6, 4, seed=0)
  raw = inputs["raw"]
  nearest = [int(np.argsort(row)[1]) for row in raw]
  picked = []
  # Record the triplets the loop would score.
  monkeypatch.setattr(reference_loops, "_score",
                      lambda emb, triplets, margin: picked.extend(triplets) or (0.0, emb))
  for seed in range(40):
    reference_loops.distance_triplet_loop(inputs["emb"], raw, rng=np.random.default_rng(seed))
  assert all(p == nearest[a] and n not in (a, p) for a, p, n in picked)
  assert len({(a, n) for a, _, n in picked}) == 6 * 4  # Every allowed negative turns up.


def test_baseline_miners_are_checked_before_timing(tmp_path):
  import inspect
  from ssldml_jax import miners
  same = tmp_path / "same_miners.py"
  same.write_text(inspect.getsource(miners))
  mining.check_baseline(mining.load_miners(str(same)), 8, 4)
  # A version whose farthest negative is another candidate must be refused before any timing.
  shifted = tmp_path / "shifted_miners.py"
  shifted.write_text(inspect.getsource(miners).replace(
      "neg = jnp.take_along_axis(cols, pick[:, None], axis=1)[:, 0]",
      "neg = jnp.take_along_axis(cols, pick[:, None], axis=1)[:, 0] - 1"))
  with pytest.raises(AssertionError, match="baseline miners pick other negatives"):
    mining.time_baseline(mining.load_miners(str(shifted)), 8, 4, rounds=1, calls=1)
  with pytest.raises(ValueError, match="no such file"):
    mining.load_miners(str(tmp_path / "missing.py"))


def test_hdf5_peer_reads_back_the_pipeline_ecgs(ecg_synth_tiny, data_dir, tmp_path):
  from ssldml_jax.bench import input as bench_input
  config = bench_input.data_config("ecg_synth/tiny", data_dir, batch=4, rate=None)
  ecgs = list(bench_input.first_ecgs(config, 5))
  paths = bench_input.write_hdf5_files(iter(ecgs), str(tmp_path))
  assert len(paths) == 5
  for path, ecg in zip(paths, ecgs):
    np.testing.assert_array_equal(bench_input.read_hdf5_ecg(path, len(ecg)), ecg)
    doubled = bench_input.read_hdf5_ecg(path, 2 * len(ecg))
    assert doubled.shape == (2 * len(ecg), 12)
    np.testing.assert_array_equal(doubled[[0, -1]], ecg[[0, -1]])
  assert bench_input.pipeline_rate(config, 8, warmup_batches=1) > 0  # The timed loop runs.
