"""What every method's step shares (``ssldml_jax/steps.py``): optimisers, schedules, state, keys.

The step itself (8 devices x 4 == 1 x 32, shard_map == pmap, the non-finite guard) is exercised
through the trainer in ``test_pretrain.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssldml_jax import methods, steps


def _config(method="supervised_dml", **optim):
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
  tx, _ = steps.make_optimizer(_config(name=name, learning_rate=lr, weight_decay=wd), 10)
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
  warm = steps.make_schedule(_config(learning_rate=0.1, warmup_steps=4), 100)
  np.testing.assert_allclose([float(warm(s)) for s in (0, 2, 4, 50)], [0.0, 0.05, 0.1, 0.1],
                             rtol=1e-6)
  cosine = steps.make_schedule(_config(learning_rate=0.1, schedule="cosine", warmup_steps=0), 100)
  np.testing.assert_allclose([float(cosine(s)) for s in (0, 50, 100)],
                             [0.1, 0.05, 0.0], atol=1e-7)


@pytest.mark.parametrize("name", methods.names(pretrained_only=True))
def test_initial_state_holds_what_the_method_trains(name):
  config = _config(name)
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
