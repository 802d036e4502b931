"""What every method's step shares (``ssldml_jax/steps.py``): optimisers, schedules, state, and
one train step of every method family in bfloat16 against float32.

The step itself (8 devices x 4 == 1 x 32, shard_map == pmap, the non-finite guard) is exercised
through the trainer in ``test_pretrain.py``.
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from ssldml_jax import methods, parallel, steps, train_lib
import step_fixtures  # tests/step_fixtures.py
from step_fixtures import N

T = 120            # samples at the model rate
_config = step_fixtures.config


def _tiny(method="supervised_dml", **optim):
  c = methods.pretrain_config(method, "tiny")
  c.optim.update(optim)
  return c


def _numpy_adam(p, g, lr, wd, decoupled, decay):
  """One Adam step from zero moments (b1 0.9, b2 0.999, eps 1e-8), PyTorch's two forms."""
  g = g + (wd * p if decay and not decoupled else 0.0)
  m, v = 0.1 * g, 0.001 * g * g
  update = -lr * (m / 0.1) / (np.sqrt(v / 0.001) + 1e-8)
  return p + update - (lr * wd * p if decay and decoupled else 0.0)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_weight_decay_is_l2_for_adam_decoupled_for_adamw_and_spares_the_loss(name):
  lr, wd = 0.01, 0.5
  tx, _ = steps.make_optimizer(_tiny(name=name, learning_rate=lr, weight_decay=wd), 10)
  rng = np.random.default_rng(0)
  params = {"encoder": {"w": rng.normal(size=(3, 2))}, "loss": {"beta": np.array([1.2])}}
  # Adam's first step is about -lr * sign(gradient): L2 must flip a sign to be seen.
  grads = {"encoder": {"w": rng.normal(size=(3, 2))}, "loss": {"beta": np.array([-0.3])}}
  params32, grads32 = (jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), t)
                       for t in (params, grads))
  import optax
  updates, _ = tx.update(grads32, tx.init(params32), params32)
  new = jax.device_get(optax.apply_updates(params32, updates))
  decoupled = name == "adamw"
  np.testing.assert_allclose(new["encoder"]["w"], _numpy_adam(
      params["encoder"]["w"], grads["encoder"]["w"], lr, wd, decoupled, True), rtol=1e-5)
  np.testing.assert_allclose(new["loss"]["beta"], _numpy_adam(
      params["loss"]["beta"], grads["loss"]["beta"], lr, wd, decoupled, False), rtol=1e-5)


def test_schedules():
  warm = steps.make_schedule(_tiny(learning_rate=0.1, warmup_steps=4), 100)
  np.testing.assert_allclose([float(warm(s)) for s in (0, 2, 4, 50)], [0.0, 0.05, 0.1, 0.1],
                             rtol=1e-6)
  cosine = steps.make_schedule(_tiny(learning_rate=0.1, schedule="cosine", warmup_steps=0), 100)
  np.testing.assert_allclose([float(cosine(s)) for s in (0, 50, 100)],
                             [0.1, 0.05, 0.0], atol=1e-7)


@pytest.mark.parametrize("name", methods.names(pretrained_only=True))
def test_initial_state_holds_what_the_method_trains(name):
  config = _tiny(name)
  method = methods.get(name)
  if method.reads and "loss.name" in method.reads:
    config.loss.name = "margin"
  mods = steps.build_models(config, bn_axis_name=None)
  tx, _ = steps.make_optimizer(config, 10)
  state = jax.eval_shape(lambda k: steps.init_state(config, mods, tx, k, 500),
                         jax.random.PRNGKey(0))
  expected = {"encoder"} | ({"head"} if mods.head is not None else set()) | (
      {"loss"} if "loss.name" in method.reads else set())
  assert set(state.params) == expected
  assert set(state.batch_stats) == expected - {"loss"}
  # The optimiser holds a moment for every trained array, the head's and the loss's too.
  n_params = len(jax.tree.leaves(state.params))
  assert len([x for x in jax.tree.leaves(state.opt_state) if x.ndim]) >= 2 * n_params - 2
  assert (mods.head is not None) == (name not in ("ssl_dml_dtw", "ssl_dml_euclidean"))


def test_patient_keys_match_equal_ids():
  ids = np.array([["p1", "p2"], ["p1", "p3"]])
  keys = steps.patient_keys(ids)
  assert keys.dtype == np.int32 and keys.shape == (2, 2)
  assert keys[0, 0] == keys[1, 0] and len({keys[0, 1], keys[1, 1], keys[0, 0]}) == 3


# --- bfloat16 ------------------------------------------------------------------------------------

FAMILIES = {"ssl_dml": "ssl_dml_euclidean.py:tiny", "supervised_dml": "supervised_dml.py:tiny",
            "supervised": "supervised.py:tiny", "simclr": "simclr.py:tiny",
            "clocs_cmsc": "clocs_cmsc.py:tiny", "vicreg": "vicreg.py:tiny"}
# Activations a bfloat16 step rounds between the input and the loss: the encoder's stem
# convolution and BatchNorm, the block's two convolutions, two BatchNorms and residual sum, the
# embedding (8); the probe head's hidden layer, BatchNorm and output (3); the projection head's
# two layers (2); VICReg's expander's three layers and two BatchNorms (5).
ROUNDINGS = {"ssl_dml": 8, "supervised_dml": 11, "supervised": 11, "simclr": 10, "clocs_cmsc": 10,
             "vicreg": 13}
UNIT_ROUNDOFF = 2.0 ** -8  # bfloat16 keeps 8 significant bits.


def _to_bfloat16_and_back(tree):
  return jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32), tree)


def _flat(leaves) -> np.ndarray:
  return np.concatenate([np.ravel(x) for x in leaves]).astype(np.float64)


def _relative(a, b) -> float:
  a, b = _flat(a), _flat(b)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(FAMILIES))
def test_bfloat16_train_step_is_close_to_float32(method):
  """One pmapped train step in bfloat16 against float32 from the same state and batch.

  The bound. bfloat16 rounds to 8 significant bits (unit roundoff u = 2^-8): the network input,
  every weight and each of the L activations listed in ROUNDINGS. ``e_ref``, the change of a
  quantity when the float32 step is given its input and weights rounded to bfloat16, measures
  what one rounding stage does to it at this conditioning (it grows with the loss's temperature,
  the depth, the data). Roundings of different stages are independent and unbiased, so their
  errors add in quadrature: the gradient's error is within sqrt(L + 1) e_ref. BatchNorm's new
  statistics are means over batch x time of the activations, which average the per-element
  roundings away and keep the weights' (common to every element): within 2 e_ref, unless the
  reductions themselves run in bfloat16. The loss, a float32 mean over N examples each off by
  at most about sqrt(L + 1) u, is within sqrt((L + 1) / N) u.
  """
  rng = np.random.default_rng(0)
  ecg = step_fixtures.ecgs(1, N, T)
  batch = dict(ecg=ecg, mask=np.ones(N, bool), pcwp=rng.uniform(5, 35, N).astype(np.float32),
               patient_key=(np.arange(N) // 2).astype(np.int32))  # CMSC: two ECGs a patient
  rng_key = parallel.replicate(jax.random.PRNGKey(1))
  float32 = train_lib.build_program(_config(FAMILIES[method]), 1)
  bfloat16 = train_lib.build_program(_config(FAMILIES[method], **{"model.dtype": "bfloat16"}), 1)
  state = float32.init_state(jax.random.PRNGKey(0), T)
  # The bfloat16 model keeps float32 parameters (and statistics): the same initial state.
  same = jax.tree.map(lambda a, b: a.dtype == b.dtype and np.array_equal(a, b),
                      bfloat16.init_state(jax.random.PRNGKey(0), T), state)
  assert all(jax.tree.leaves(same))

  def step(program, state, batch):
    new, metrics = program.train_step(parallel.replicate(state),
                                      step_fixtures.device_batch(**batch), rng_key)
    return train_lib.first_replica(new), jax.device_get(metrics)

  ref, ref_metrics = step(float32, state, batch)
  rounded, rounded_metrics = step(
      float32, state.replace(params=_to_bfloat16_and_back(state.params)),
      dict(batch, ecg=_to_bfloat16_and_back(ecg)))
  half, half_metrics = step(bfloat16, state, batch)

  for leaf in jax.tree.leaves((half.params, half.batch_stats, half.opt_state)):
    if np.issubdtype(np.asarray(leaf).dtype, np.floating):
      assert np.asarray(leaf).dtype == np.float32 and np.isfinite(leaf).all()
  assert all(np.isfinite(v).all() for v in half_metrics.values())
  assert half_metrics["nonfinite"][0] == 0

  n_params = len(jax.tree.leaves(state.params))
  # Adam's first moment after one step is 0.1 x the gradient, leaf by leaf.
  grads = lambda s: [x for x in jax.tree.leaves(s.opt_state) if np.ndim(x)][:n_params]  # noqa: E731
  stat_updates = lambda s: [a - b for a, b in zip(jax.tree.leaves(s.batch_stats),  # noqa: E731
                                                  jax.tree.leaves(state.batch_stats))]
  rounds = ROUNDINGS[method]
  for name, of, factor in (("gradient", grads, np.sqrt(rounds + 1)),
                           ("BatchNorm update", stat_updates, 2.0)):
    e_ref = _relative(of(rounded), of(ref))
    error = _relative(of(half), of(ref))
    assert 0 < error <= factor * e_ref, (name, error, e_ref)
  loss_error = abs(half_metrics["loss"][0] / ref_metrics["loss"][0] - 1)
  assert loss_error <= np.sqrt((rounds + 1) / N) * UNIT_ROUNDOFF, loss_error
  assert np.isfinite(rounded_metrics["loss"]).all()
