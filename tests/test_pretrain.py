"""The pretrain trainer on ``ecg_synth/tiny`` with 8 fake CPU devices.

One SSL-DML run of a one-stage ResNet is shared by most tests (module fixture); its
compiled program is reused by the tests that drive steps directly, by the resumed run and by the
non-finite run, which differ from it only in keys that do not change the step.
"""

import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ssldml_jax import checkpoint, cli, methods, metrics_log, parallel, train_lib
from ssldml_jax.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The shared run mines with the Euclidean raw distance: DTW's wavefront is costly to compile, and
# it would be compiled four times (8 devices, 1 device, shard_map, the killed process); DTW
# mining gets its own run in test_loss_falls.
SSL_SPEC = "configs/ssl_dml_euclidean.py:tiny"
NUM_STEPS = 32
# Small enough to compile in seconds; dropout off so the 8 x 4 == 1 x 32 check is exact.
OVERRIDES = {
    "data.per_device_batch_size": 4,   # x 8 devices: a global batch of 32.
    "data.eval_per_device_batch_size": 4,
    "model.stage_sizes": (1,),
    "model.dropout": 0.0,
    "train.num_steps": NUM_STEPS,
    "train.log_every_steps": 1,
    "train.checkpoint_every_steps": 8,
    "train.keep_checkpoints": 3,
    "train.eval_batches": 1,
    "train.progress_bar": False,
}


def _config(spec: str, **extra):
  config = cli.load_config_file(os.path.join(REPO, spec))
  for key, value in {**OVERRIDES, **extra}.items():
    node = config
    *path, last = key.split(".")
    for part in path:
      node = node[part]
    node[last] = value
  return config


def _flags(spec: str) -> list[str]:
  out = [f"--config={os.path.join(REPO, spec)}"]
  for key, value in OVERRIDES.items():
    out.append(f"--config.{key}={value}")
  return out


def _final_state(workdir: str, config) -> dict:
  """The newest checkpoint's whole tree (train state and RNG key) as host arrays."""
  program = train_lib.build_program(config, NUM_STEPS)
  info = pipeline.dataset_info(config.data)
  template = train_lib._state_tree(
      program.init_state(jax.random.PRNGKey(0), info["num_samples"]), jax.random.PRNGKey(0))
  with checkpoint.Checkpoints(workdir, read_only=True) as ckpts:
    step, tree, _ = ckpts.restore_latest(template)
  return step, tree


def _losses(workdir: str) -> list[float]:
  return [r["loss"] for r in metrics_log.read_metrics(workdir) if "loss" in r]


def _falls(losses: list[float]) -> bool:
  return np.mean(losses[-6:]) < 0.9 * np.mean(losses[:6])


@pytest.fixture(scope="module")
def ssl_config(data_dir):
  """The shared config; tests that only drive steps need this, not the run (under xdist the
  run would otherwise be repeated on each worker that has one of them)."""
  return _config(SSL_SPEC)


@pytest.fixture(scope="module")
def ssl_run(ssl_config, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("ssl_dml"))
  final = train_lib.train_and_evaluate(ssl_config, workdir)
  return ssl_config, workdir, final


@pytest.mark.slow
def test_ssl_dml_run_logs_learns_and_exports(ssl_run):
  config, workdir, final = ssl_run
  records = metrics_log.read_metrics(workdir)
  train = [r for r in records if "loss" in r]
  assert [r["step"] for r in train] == list(range(1, NUM_STEPS + 1))
  for key in ("active_triplets", "d_pos", "d_neg", "grad_norm", "learning_rate",
              "steps_per_sec", "ecg_per_sec"):
    assert np.isfinite(train[-1][key]), key
  assert train[0]["learning_rate"] == pytest.approx(1e-3)
  assert _falls(_losses(workdir)), _losses(workdir)
  assert "eval/validation/loss" in final and np.isfinite(final["eval/validation/loss"])
  assert os.listdir(os.path.join(workdir, metrics_log.TENSORBOARD_DIR))
  assert metrics_log.read_config(workdir).method == "ssl_dml_euclidean"
  assert checkpoint.latest_readable_meta(workdir)["step"] == NUM_STEPS

  model, variables, loaded = train_lib.load_encoder(workdir)
  _, tree = _final_state(workdir, config)
  np.testing.assert_array_equal(
      variables["params"]["embedding"]["kernel"],
      tree["train_state"]["params"]["encoder"]["embedding"]["kernel"])
  emb = model.apply(variables, np.zeros((3, 500, 12), np.float32), train=False)
  assert emb.shape == (3, loaded.model.embedding_dim)


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["configs/ssl_dml_dtw.py:tiny",
                                  "configs/supervised_dml.py:tiny",
                                  "configs/supervised_dml_regression.py:tiny",
                                  "configs/supervised.py:tiny",
                                  "configs/simclr.py:tiny",
                                  "configs/clocs_cmsc.py:tiny",
                                  "configs/vicreg.py:tiny"])
def test_loss_falls(spec, data_dir, tmp_path):
  config = _config(spec, **{"train.num_steps": 24, "train.checkpoint_every_steps": 24,
                            "train.eval_batches": 0})
  train_lib.train_and_evaluate(config, str(tmp_path))
  losses = _losses(str(tmp_path))
  assert len(losses) == 24 and all(np.isfinite(losses))
  assert _falls(losses), losses
  if config.method == "ssl_dml_dtw":  # Every anchor of the global batch got a DTW-mined triplet.
    assert metrics_log.read_metrics(str(tmp_path))[-1]["valid_triplets"] == 1.0
  if methods.get(config.method).uses_labels:
    params = _final_state(str(tmp_path), config)[1]["train_state"]["params"]
    assert "head" in params  # The task head is in what the optimiser updates.


def _batches(config, n: int) -> list[dict]:
  """Training batches placed as the trainer places them (a host array would make pmap compile
  the step again for another input layout)."""
  it = pipeline.make_train_iterator(config.data, seed=1)
  try:
    return [train_lib.device_batch(next(it)) for _ in range(n)]
  finally:
    it.close()


@pytest.mark.slow
def test_8x4_equals_1x32(ssl_config):
  config = ssl_config
  program = train_lib.build_program(config, NUM_STEPS)
  state = program.init_state(jax.random.PRNGKey(3), 500)
  rng = jax.random.PRNGKey(4)
  batch = _batches(config, 1)[0]
  new8, m8 = program.train_step(parallel.replicate(state), batch, parallel.replicate(rng))
  one = jax.pmap(program.per_device_train_step, axis_name=parallel.AXIS)
  merged = jax.tree.map(lambda x: np.asarray(x).reshape((1, -1) + x.shape[2:]), batch)
  new1, m1 = one(jax.tree.map(lambda x: x[None], state), merged, rng[None])
  new8, new1 = train_lib.first_replica(new8), train_lib.first_replica(new1)
  for key in ("loss", "d_pos", "d_neg", "active_triplets"):
    np.testing.assert_allclose(m8[key][0], m1[key][0], rtol=2e-5, err_msg=key)
  # Adam's first moment is 0.1 x the gradient: compare gradients, not sign-like first updates.
  mu8, mu1 = (jax.tree.leaves(s.opt_state) for s in (new8, new1))
  scale = max(float(np.abs(m).max()) for m in mu1)
  for a, b in zip(mu8, mu1):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)
  for a, b in zip(jax.tree.leaves(new8.batch_stats), jax.tree.leaves(new1.batch_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert float(m1["loss"][0]) > 0


@pytest.mark.slow
@pytest.mark.parametrize("spec", [SSL_SPEC, "configs/ssl_dml_dtw.py:tiny"])
def test_pmap_equals_shard_map(spec):
  """Two train steps and an eval step on a padded batch, DTW mining included (its wavefront's
  loop carries are why the shard_map is built with check_vma=False)."""
  configs = [_config(spec, **{"train.parallel": mode}) for mode in ("pmap", "shard_map")]
  programs = [train_lib.build_program(c, NUM_STEPS) for c in configs]
  state = programs[0].init_state(jax.random.PRNGKey(5), 500)
  rng = parallel.replicate(jax.random.PRNGKey(6))
  batches = _batches(configs[0], 2)
  mask = np.array(batches[0]["mask"])
  mask[-1, 1:] = False  # The last device holds one real ECG.
  padded = dict(batches[0], mask=jax.device_put(mask, parallel.device_sharding()))
  results = []
  for program in programs:
    p_state = parallel.replicate(state)
    for batch in batches:
      p_state, metrics = program.train_step(p_state, batch, rng)
    evaluated = program.eval_step(p_state, padded, rng)
    results.append((train_lib.first_replica(p_state), jax.device_get((metrics, evaluated))))
  (s_pmap, m_pmap), (s_shard, m_shard) = results
  # One per-device program either way, so the same numbers, bit for bit, on every device.
  assert jax.tree.structure(m_pmap) == jax.tree.structure(m_shard)
  for a, b in zip(jax.tree.leaves(m_pmap), jax.tree.leaves(m_shard)):
    np.testing.assert_array_equal(a, b)
  assert m_pmap[1]["valid_triplets"][0] == 1.0 and np.isfinite(m_pmap[1]["loss"]).all()
  for a, b in zip(jax.tree.leaves(s_pmap), jax.tree.leaves(s_shard)):
    np.testing.assert_array_equal(a, b)


class _Interrupted(Exception):
  """Stands for a run stopped from outside (a kill, a preemption) in the restore test."""


@pytest.mark.slow
def test_shard_map_run_interrupted_and_restored_equals_pmap_run(ssl_run, tmp_path, monkeypatch,
                                                                capsys):
  config, reference_dir, reference_final = ssl_run
  sharded = _config(SSL_SPEC, **{"train.parallel": "shard_map"})
  workdir = str(tmp_path)
  real = train_lib.device_batch
  calls = []

  def interrupt_at_step_18(batch, **kwargs):
    calls.append(1)
    if len(calls) == 18:  # After the checkpoint of step 16 was started.
      raise _Interrupted()
    return real(batch, **kwargs)

  monkeypatch.setattr(train_lib, "device_batch", interrupt_at_step_18)
  with pytest.raises(_Interrupted):
    train_lib.train_and_evaluate(sharded, workdir)
  monkeypatch.setattr(train_lib, "device_batch", real)
  capsys.readouterr()
  final = train_lib.train_and_evaluate(sharded, workdir)
  assert f"resuming at step 16 of {NUM_STEPS}" in capsys.readouterr().err
  (step_a, a), (step_b, b) = _final_state(reference_dir, config), _final_state(workdir, config)
  assert step_a == step_b == NUM_STEPS
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  evaluated = {k: v for k, v in reference_final.items() if k.startswith("eval/")}
  assert evaluated and {k: final[k] for k in evaluated} == evaluated
  logged = [r["step"] for r in metrics_log.read_metrics(workdir) if "loss" in r]
  assert logged == list(range(1, NUM_STEPS + 1))


# The kill: seeded, after the first checkpoint (step 8) and early enough that the run is still
# going when the signal arrives.
KILL_AFTER = int(np.random.default_rng(2023).integers(9, NUM_STEPS - 3))


@pytest.mark.slow
def test_killed_and_resumed_equals_uninterrupted(ssl_run, tmp_path, capsys):
  config, reference_dir, _ = ssl_run
  workdir = str(tmp_path / "killed")
  log_path = tmp_path / "killed.log"  # A file, not a pipe: a full pipe would stall the run.
  with open(log_path, "w") as log:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ssldml_jax.pretrain", *_flags(SSL_SPEC),
         f"--workdir={workdir}"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
  metrics_path = os.path.join(workdir, metrics_log.METRICS_FILE)
  deadline = time.time() + 300
  reached, saved = 0, None
  while proc.poll() is None and time.time() < deadline:
    try:
      with open(metrics_path) as f:
        reached = sum(1 for line in f if '"loss"' in line)
    except FileNotFoundError:
      pass
    # A step directory appears only once orbax has written all of it (atomic rename).
    saved = checkpoint.latest_readable_meta(workdir)
    if reached >= KILL_AFTER and saved is not None:
      break
    time.sleep(0.01)
  running = proc.poll() is None
  proc.kill()  # SIGKILL, mid-run (or, on a timeout, to end it).
  proc.wait()
  assert running and reached >= KILL_AFTER and saved is not None, \
      f"not killed at step {KILL_AFTER} (rc {proc.returncode}): {log_path.read_text()[-2000:]}"
  with checkpoint.Checkpoints(workdir, read_only=True) as left:
    killed_at = left.steps()
  assert killed_at and max(killed_at) < NUM_STEPS, killed_at

  capsys.readouterr()
  train_lib.train_and_evaluate(config, workdir)  # Started again: resumes.
  assert f"resuming at step {max(killed_at)} of {NUM_STEPS}" in capsys.readouterr().err
  (step_a, a), (step_b, b) = _final_state(reference_dir, config), _final_state(workdir, config)
  assert step_a == step_b == NUM_STEPS
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y, err_msg=f"killed after step {reached}, "
                                                f"checkpoints {killed_at}")
  steps_logged = [r["step"] for r in metrics_log.read_metrics(workdir) if "loss" in r]
  assert steps_logged == list(range(1, NUM_STEPS + 1))


def test_nonfinite_step_is_skipped(ssl_config):
  config = ssl_config
  program = train_lib.build_program(config, NUM_STEPS)
  state = program.init_state(jax.random.PRNGKey(7), 500)
  rng = parallel.replicate(jax.random.PRNGKey(8))
  good = _batches(config, 1)[0]
  ecg = np.array(good["ecg"])
  ecg[3, 1, 10, 2] = np.nan  # One sample of one ECG on one device.
  bad = dict(good, ecg=jax.device_put(ecg, parallel.device_sharding()))
  p_state = parallel.replicate(state)
  before = train_lib.first_replica(p_state)
  p_state, metrics = program.train_step(p_state, bad, rng)
  after = train_lib.first_replica(p_state)
  assert float(metrics["nonfinite"][0]) == 1 and int(metrics["nonfinite_streak"][0]) == 1
  for x, y in zip(jax.tree.leaves((before.params, before.opt_state, before.batch_stats)),
                  jax.tree.leaves((after.params, after.opt_state, after.batch_stats))):
    np.testing.assert_array_equal(x, y)
  assert int(after.step) == 1 and int(after.nonfinite_total) == 1
  p_state, metrics = program.train_step(p_state, good, rng)
  after = train_lib.first_replica(p_state)
  assert int(after.nonfinite_streak) == 0 and int(after.nonfinite_total) == 1
  assert np.isfinite(float(metrics["loss"][0]))
  assert not np.array_equal(after.params["encoder"]["embedding"]["kernel"],
                            before.params["encoder"]["embedding"]["kernel"])


@pytest.mark.slow
def test_repeated_nonfinite_stops_with_last_checkpoint_intact(ssl_config, tmp_path, monkeypatch,
                                                               capsys):
  config = _config(SSL_SPEC, **{"train.max_consecutive_nonfinite": 3,
                                                     "train.eval_batches": 0})
  real = train_lib.device_batch
  calls = []

  def poisoned(batch, **kwargs):
    calls.append(1)
    if len(calls) > 7:  # Steps 8, 9, 10 see NaN.
      batch = dict(batch, ecg=np.full_like(batch["ecg"], np.nan))
    return real(batch, **kwargs)

  monkeypatch.setattr(train_lib, "device_batch", poisoned)
  with pytest.raises(train_lib.NonFiniteError,
                     match=r"stopped at step 10: 3 consecutive .*max_consecutive_nonfinite=3.*"
                           r"step 8 in .* is intact"):
    train_lib.train_and_evaluate(config, str(tmp_path))
  assert "step 8: non-finite" in capsys.readouterr().err
  step, tree = _final_state(str(tmp_path), config)
  assert step == 8
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(tree["train_state"]["params"]))


def test_bad_config_names_the_key():
  config = _config(SSL_SPEC, **{"mining.embedding_distance": "manhattan"})
  with pytest.raises(cli.ConfigError, match="config.mining.embedding_distance='manhattan'"):
    train_lib.validate_config(config)
  with pytest.raises(cli.ConfigError, match="config.loss.name='ntxent' is not allowed"):
    train_lib.validate_config(_config("configs/supervised_dml.py:tiny", **{"loss.name": "ntxent"}))
  with pytest.raises(cli.ConfigError, match="config.vicreg.expander_dim=0 must be an integer"):
    train_lib.validate_config(_config("configs/vicreg.py:tiny", **{"vicreg.expander_dim": 0}))
  with pytest.raises(cli.ConfigError, match="unknown method 'byol'; the registered methods are "
                                            "'random', .*'vicreg'"):
    train_lib.validate_config(_config(SSL_SPEC, method="byol"))
  with pytest.raises(cli.ConfigError, match="config.method='random' is not trained"):
    train_lib.validate_config(_config(SSL_SPEC, method="random"))
  with pytest.raises(cli.ConfigError, match="unknown config argument"):
    cli.load_config_file(os.path.join(REPO, "configs/simclr.py:regression"))


def test_bench_peer_is_the_same_network(monkeypatch):
  pytest.importorskip("torch")
  from ssldml_jax.bench import train_step as bench
  config = bench.make_config(width=4, stage_sizes=(1, 1), rate=20)
  mods, state, _ = bench.jax_program(config, 200)
  state = jax.device_get(state)
  batch = bench.make_batch(3, 200)
  assert bench.check_same_network(config, mods, state, batch) < 1e-5
  real = bench.load_jax_weights

  def one_weight_off(model, params, stats):
    real(model, params, stats)
    model.blocks[1].conv2.weight.data[0, 0, 0] += 0.5

  monkeypatch.setattr(bench, "load_jax_weights", one_weight_off)
  with pytest.raises(AssertionError, match="not the same network"):
    bench.check_same_network(config, mods, state, batch)
