"""What the trained heads share: early stopping, batches, targets and losses, host copies."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from ssldml_jax.eval import head_training as H
from ssldml_jax.eval import metrics as M


def _brute_force_stop(values, higher_is_better, patience):
  """(best index, index after which training stops) by a plain scan."""
  best, waited = 0, 0
  for i in range(1, len(values)):
    v, b = values[i], values[best]
    better = np.isfinite(v) and (not np.isfinite(b) or (v > b if higher_is_better else v < b))
    if better:
      best, waited = i, 0
    else:
      waited += 1
      if waited >= patience:
        return best, i
  return best, len(values) - 1


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_stopper_matches_a_scan(higher_is_better):
  rng = np.random.default_rng(0)
  for trial in range(50):
    values = np.round(rng.normal(size=12), 1)  # rounding makes ties
    if trial % 5 == 0:
      values[rng.integers(0, 12, 2)] = np.nan
    patience = int(rng.integers(1, 4))
    stopper = H.Stopper(higher_is_better, patience)
    for i, v in enumerate(values):
      stopper.update(10 * (i + 1), v)
      if stopper.done:
        break
    best, last = _brute_force_stop(values, higher_is_better, patience)
    assert stopper.best_step == 10 * (best + 1)
    assert len(stopper.history) == last + 1
    if np.isfinite(values[best]):
      assert stopper.best_value == values[best]


def test_index_stream_is_consecutive_seeded_shuffles():
  stream = H.index_stream(7, seed=3)
  block = H.take_indices(stream, (3, 7))
  assert block.shape == (3, 7) and block.dtype == np.int64
  for row in block:  # every 7 consecutive indices are one permutation
    assert sorted(row.tolist()) == list(range(7))
  assert not all(np.array_equal(block[0], r) for r in block[1:])
  again = H.take_indices(H.index_stream(7, seed=3), (21,))
  np.testing.assert_array_equal(again, block.reshape(-1))


def test_loss_targets_and_task_loss():
  rng = np.random.default_rng(1)
  y = rng.uniform(5, 35, 50)
  t, to_score = H.loss_targets("regression", y)
  assert t.dtype == np.float32
  np.testing.assert_allclose(t, (y - y.mean()) / y.std(), rtol=1e-6)
  np.testing.assert_allclose(to_score(t.astype(np.float64)), y, rtol=1e-6)
  out = rng.normal(size=50).astype(np.float32)
  assert float(H.task_loss("regression", jnp.asarray(out), jnp.asarray(t))) == pytest.approx(
      np.mean((out - t) ** 2), rel=1e-5)
  labels = y > 18
  t, to_score = H.loss_targets("binary", labels)
  np.testing.assert_array_equal(t, labels.astype(np.float32))
  prob = to_score(out.astype(np.float64))
  np.testing.assert_allclose(prob, 1 / (1 + np.exp(-out.astype(np.float64))))
  assert float(H.task_loss("binary", jnp.asarray(out), jnp.asarray(t))) == pytest.approx(
      skm.log_loss(labels, prob), rel=1e-5)
  constant, to_score = H.loss_targets("regression", np.full(4, 20.0))
  np.testing.assert_array_equal(constant, 0.0)  # scale 1, not a division by zero
  assert to_score(np.array([0.0]))[0] == 20.0


def test_check_targets_and_task():
  with pytest.raises(ValueError, match="y_train: only one class among 3 labels"):
    H.check_targets("binary", "y_train", np.array([True, True, True]), 3)
  with pytest.raises(ValueError, match="y_val: 1 non-finite"):
    H.check_targets("regression", "y_val", np.array([1.0, np.nan]), 2)
  with pytest.raises(ValueError, match="task='multi' is not allowed"):
    H.check_task("multi")


def test_host_copy_owns_its_memory_and_head_result():
  device = {"w": jnp.arange(6.0).reshape(2, 3)}
  copy = H.host_copy(device)
  assert isinstance(copy["w"], np.ndarray)
  assert not np.shares_memory(copy["w"], np.asarray(device["w"]))
  np.testing.assert_array_equal(copy["w"], np.asarray(device["w"]))
  stopper = H.Stopper(True, 2)
  stopper.update(5, 0.6)
  stopper.update(10, 0.7)
  y_val = np.array([1, 0, 0, 1, 0, 1, 1, 1], bool)
  val = np.array([0.45, 0.8, 0.23, 0.05, 0.4, 0.2, 0.09, 0.58])  # F1 and Youden's J disagree
  res = H.head_result("binary", y_val=y_val, val_scores=val, test_scores=None, stopper=stopper,
                      steps_run=10, best=({"p": 1}, {"s": 2}), final=({"p": 3}, {"s": 4}),
                      n_train=7, threshold_criterion="f1")
  assert res.threshold == M.choose_threshold(y_val, val, "f1") != M.choose_threshold(y_val, val,
                                                                                     "youden")
  assert (res.best_step, res.steps_run, res.n_train) == (10, 10, 7)
  assert res.history == ((5, 0.6), (10, 0.7))
  assert res.best_variables == {"params": {"p": 1}, "batch_stats": {"s": 2}}
  assert res.final_variables == {"params": {"p": 3}, "batch_stats": {"s": 4}}
  assert H.head_result("regression", y_val=val, val_scores=val, test_scores=val, stopper=stopper,
                       steps_run=10, best=({}, {}), final=({}, {}), n_train=7,
                       threshold_criterion="f1").threshold is None


def test_multilabel_and_multiclass_losses_and_outputs():
  rng = np.random.default_rng(2)
  out = rng.normal(size=(30, 4)).astype(np.float32)
  labels = rng.random((30, 4)) < 0.4
  t, to_score = H.loss_targets("multilabel", labels)
  prob = to_score(out)
  np.testing.assert_allclose(prob, 1 / (1 + np.exp(-out.astype(np.float64))))
  assert H.OutputMap("multilabel") == to_score  # a saved probe keeps it as plain fields
  bce = np.mean([skm.log_loss(labels[:, k], prob[:, k], labels=[0, 1]) for k in range(4)])
  assert float(H.task_loss("multilabel", jnp.asarray(out), jnp.asarray(t))) == pytest.approx(
      bce, rel=1e-5)
  classes = rng.integers(0, 4, 30)
  t, to_score = H.loss_targets("multiclass", classes)
  assert t.dtype == np.int32
  prob = to_score(out)
  np.testing.assert_allclose(prob.sum(axis=1), 1.0)
  assert float(H.task_loss("multiclass", jnp.asarray(out), jnp.asarray(t))) == pytest.approx(
      skm.log_loss(classes, prob, labels=range(4)), rel=1e-5)
  assert H.validation_criterion("multiclass", classes, prob) == pytest.approx(
      skm.roc_auc_score(classes, prob, multi_class="ovr"), abs=1e-12)
  assert H.out_dim("multiclass", 4) == 4 and H.out_dim("binary", 4) == 1
  # Every label needs both classes; every class needs an example.
  one = labels.copy()
  one[:, 2] = False
  with pytest.raises(ValueError, match="y_train: label 2 has one class only"):
    H.check_targets("multilabel", "y_train", one, 30, 4)
  with pytest.raises(ValueError, match="y_val: class\\(es\\) \\[3\\] absent"):
    H.check_targets("multiclass", "y_val", np.minimum(classes, 2), 30, 4)
  scores = 1 / (1 + np.exp(-out.astype(np.float64)))
  assert H.choose_thresholds("multilabel", labels, scores, "youden") == tuple(
      M.choose_threshold(labels[:, k], scores[:, k], "youden") for k in range(4))
  assert H.choose_thresholds("multiclass", classes, prob, "f1") is None


@pytest.mark.parametrize("head", ["mlp", "finetune"])
def test_head_settings_defaults_are_the_configs(head):
  import dataclasses

  import ml_collections

  from ssldml_jax.eval import finetune, mlp_probe, probe_config
  settings = {"mlp": mlp_probe.MLPSettings, "finetune": finetune.FinetuneSettings}[head]
  section = probe_config.add_probe_section(ml_collections.ConfigDict()).probe[head]
  # Every key of the section is a setting (the seeds go to the caller), and the defaults agree.
  assert {f.name for f in dataclasses.fields(settings)} == set(section.keys()) - {"seeds"}
  assert settings.from_config(section) == settings()
  section.patience = 99
  assert settings.from_config(section).patience == 99
