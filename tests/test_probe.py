"""Probe trainer: planted signals are recovered through probe_lib, seed averaging agrees with
brute force, the best MLP parameters are a copy (fine-tuning: tests/test_finetune.py).

(That embeddings cover every ECG exactly once on 8 devices is checked on the end-to-end run in
test_reproduce.py, which embeds the tiny cohort anyway.)"""

import numpy as np
import pytest

from ssldml_jax import config_defaults
from ssldml_jax.eval import bootstrap, metrics as M, mlp_probe, probe_config, probe_lib


def _split(rng, n, w, patients):
  x = rng.normal(size=(n, 8)) * np.geomspace(0.2, 5.0, 8) + 1.0
  signal = ((x - 1.0) / np.geomspace(0.2, 5.0, 8)) @ w
  pcwp = np.clip(16.0 + 6.0 * signal + rng.normal(0, 1.5, n), 1.0, 60.0)
  pid = np.array([f"p{i % patients:04d}" for i in range(n)])
  return {"embedding": x.astype(np.float32), "pcwp": pcwp.astype(np.float32), "patient_id": pid,
          "ecg_id": np.array([f"e{i}" for i in range(n)]), "age": np.full(n, 60.0, np.float32),
          "sex": (np.arange(n) % patients % 2).astype(np.int32)}


@pytest.fixture
def planted():
  rng = np.random.default_rng(0)
  w = np.array([1.0, -0.7, 0.5, 0, 0, 0, 0, 0])
  return {"train": _split(rng, 600, w, 200), "validation": _split(rng, 200, w, 70),
          "test": _split(rng, 300, w, 100)}


@pytest.fixture
def config():
  c = probe_config.add_probe_section(config_defaults.base_config())
  p = c.probe
  p.heads = ("linear", "mlp")
  p.fraction_heads = ("linear",)
  p.fractions = (0.1, 1.0)
  p.limited_n = 100
  p.seeds = (0, 1)
  p.n_bootstrap = 100
  p.n_permutations = 50
  p.mlp.hidden_dim = 32
  p.mlp.max_steps = 600
  p.mlp.eval_every_steps = 50
  p.mlp.patience = 3
  probe_config.validate(c)
  return c


def test_probes_recover_planted_signal_through_probe_lib(planted, config):
  # One test for the whole probe table (under pytest -n 2 a shared fixture would run twice).
  fits = probe_lib.fit_all(config, planted, log=lambda m: None)
  rows, tests = probe_lib.evaluate(config, fits, planted["test"], "planted")
  cell = {(h, r.target, r.metric, r.fraction, r.group): r for h, r in rows}
  for head in ("linear", "mlp"):
    assert cell[head, "binary", "auroc", "100%", "all"].point > 0.9
    assert cell[head, "regression", "pearson_r", "100%", "all"].point > 0.9
    assert cell[head, "regression", "rmse", "100%", "all"].point < 3.0  # SD of mPCWP is ~8
  auroc = cell["linear", "binary", "auroc", "100%", "all"]
  assert auroc.low <= auroc.point <= auroc.high and auroc.n == 300
  # Fractions and the limited setting only for fraction_heads; n_train as asked.
  assert {(f.head, f.fraction) for f in fits} == {
      ("linear", "10%"), ("linear", "100%"), ("linear", "n=100"), ("mlp", "100%")}
  assert {f.n_train for f in fits if f.fraction == "n=100"} == {100}
  assert {f.n_train for f in fits if f.fraction == "10%"} == {60}  # 20 of 200 patients x 3 ECGs
  # Subgroups (sex from the patient index) for the primary head, and their permutation tests.
  assert cell["linear", "binary", "auroc", "100%", "female"].n == 150
  assert {(t, r.group_a, r.group_b) for _, t, r in tests} >= {("binary", "female", "male")}
  _check_seed_mean_bootstrap_matches_brute_force(fits, rows, planted)


def _check_seed_mean_bootstrap_matches_brute_force(fits, rows, planted):
  """The seed-mean cell equals the mean of per-seed metrics on the same patient resamples."""
  y = planted["test"]["pcwp"] > 18.0
  chosen = [f for f in fits if (f.head, f.target, f.fraction) == ("linear", "binary", "10%")]
  assert len(chosen) == 2 and not np.allclose(chosen[0].test_scores, chosen[1].test_scores)
  pid = planted["test"]["patient_id"]
  per_seed = [bootstrap.resample_values(M.classification_metrics(f.threshold, ("auroc", "f1")),
                                        y, f.test_scores, pid, n_resamples=100, seed=0)
              for f in chosen]
  for metric in ("auroc", "f1"):
    row = next(r for h, r in rows if (h, r.target, r.fraction, r.metric, r.group) ==
               ("linear", "binary", "10%", metric, "all"))
    fns = [M.classification_metrics(f.threshold)[metric] for f in chosen]
    point = np.mean([fn(y, f.test_scores, None)[0] for fn, f in zip(fns, chosen)])
    values = np.mean([v[metric] for v in per_seed], axis=0)
    low, high = np.quantile(values[np.isfinite(values)], [0.025, 0.975])
    assert row.point == pytest.approx(point)
    assert (row.low, row.high) == pytest.approx((low, high))


def test_best_mlp_params_are_a_copy_not_the_live_state(planted):
  tr, va = planted["train"], planted["validation"]
  # Few rows and a large learning rate: validation peaks early, then training overfits.
  settings = mlp_probe.MLPSettings(hidden_dim=64, dropout=0.0, learning_rate=3e-2,
                                   weight_decay=0.0, batch_size=16, max_steps=2000,
                                   eval_every_steps=20, patience=4)
  res = mlp_probe.train_mlp_probe(tr["embedding"][:40], tr["pcwp"][:40], va["embedding"],
                                  va["pcwp"], task="regression", seed=0, settings=settings)
  assert res.best_step < res.steps_run
  history = dict(res.history)
  # The kept scores are those of the best step, not of the state training ended with.
  assert M.rmse(va["pcwp"], res.val_scores) == pytest.approx(history[res.best_step], rel=1e-5)
  assert M.rmse(va["pcwp"], res.val_scores) < history[res.steps_run]
  for best, final in zip(*(jax_leaves(v) for v in (res.best_variables, res.final_variables))):
    assert not np.shares_memory(best, final)
  assert any(not np.array_equal(b, f) for b, f in zip(jax_leaves(res.best_variables),
                                                      jax_leaves(res.final_variables)))


def jax_leaves(tree):
  import jax
  return jax.tree.leaves(tree)

