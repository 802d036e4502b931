"""The MLP head: the kept parameters are a copy taken at the best validation step."""

import jax
import numpy as np
import pytest

from ssldml_jax.eval import metrics as M, mlp_probe


def _planted(rng, n):
  """Embeddings whose first three dimensions carry the mPCWP (mmHg), unequal scales."""
  scale = np.geomspace(0.2, 5.0, 8)
  x = rng.normal(size=(n, 8)) * scale + 1.0
  signal = ((x - 1.0) / scale) @ np.array([1.0, -0.7, 0.5, 0, 0, 0, 0, 0])
  pcwp = np.clip(16.0 + 6.0 * signal + rng.normal(0, 1.5, n), 1.0, 60.0)
  return x.astype(np.float32), pcwp.astype(np.float32)


def test_best_mlp_params_are_a_copy_not_the_live_state():
  rng = np.random.default_rng(0)
  x_tr, y_tr = _planted(rng, 40)
  x_va, y_va = _planted(rng, 200)
  # Few rows and a large learning rate: validation peaks early, then training overfits.
  settings = mlp_probe.MLPSettings(hidden_dim=64, dropout=0.0, learning_rate=3e-2,
                                   weight_decay=0.0, batch_size=16, max_steps=2000,
                                   eval_every_steps=20, patience=4)
  res = mlp_probe.train_mlp_probe(x_tr, y_tr, x_va, y_va, task="regression", seed=0,
                                  settings=settings)
  assert res.best_step < res.steps_run
  history = dict(res.history)
  # The kept scores are those of the best step, not of the state training ended with.
  assert M.rmse(y_va, res.val_scores) == pytest.approx(history[res.best_step], rel=1e-5)
  assert M.rmse(y_va, res.val_scores) < history[res.steps_run]
  best, final = jax.tree.leaves(res.best_variables), jax.tree.leaves(res.final_variables)
  for b, f in zip(best, final):
    assert not np.shares_memory(b, f)
  assert any(not np.array_equal(b, f) for b, f in zip(best, final))


def test_bad_embeddings_name_the_argument():
  rng = np.random.default_rng(1)
  x, y = _planted(rng, 30)
  bad = x.copy()
  bad[4, 1] = np.inf
  with pytest.raises(ValueError, match="x_val: 1 embedding.* first at row 4"):
    mlp_probe.train_mlp_probe(x, y, bad, y, task="regression")
  with pytest.raises(ValueError, match=r"x_val: expected embeddings of shape \(n, 8\)"):
    mlp_probe.train_mlp_probe(x, y, x[:, :5], y, task="regression")
