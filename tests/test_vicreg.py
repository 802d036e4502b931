"""VICReg's loss (``ssldml_jax/methods/vicreg.py``) against a NumPy transcription of the paper's
definition, with padding, and over 8 devices against one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssldml_jax import parallel
from ssldml_jax.methods import vicreg


def numpy_vicreg(z1, z2, weights=(25.0, 25.0, 1.0)):
  """The loss of Bardes et al. (2022), Algorithm 1, in float64 over the rows given."""
  z1, z2 = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
  n, d = z1.shape
  invariance = np.mean((z1 - z2) ** 2)
  variance = covariance = 0.0
  for z in (z1, z2):
    z = z - z.mean(axis=0)
    std = np.sqrt(z.var(axis=0, ddof=1) + 1e-4)
    variance += np.mean(np.maximum(0.0, 1.0 - std)) / 2
    cov = z.T @ z / (n - 1)
    covariance += (np.sum(cov ** 2) - np.sum(np.diag(cov) ** 2)) / d
  terms = {"invariance": invariance, "variance": variance, "covariance": covariance}
  return terms, weights[0] * invariance + weights[1] * variance + weights[2] * covariance


def _views(n=32, d=6, seed=0):
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(n, d)) * rng.uniform(0.2, 2.0, d)  # some features below unit std
  base[:, 1] = 0.7 * base[:, 0] + 0.1 * base[:, 1]           # and correlated ones
  z1 = base + 0.3 * rng.normal(size=(n, d))
  z2 = base + 0.3 * rng.normal(size=(n, d))
  return z1.astype(np.float32), z2.astype(np.float32)


def test_terms_equal_the_papers_definition():
  z1, z2 = _views()
  expected, total = numpy_vicreg(z1, z2)
  got = jax.device_get(vicreg.vicreg_terms(jnp.asarray(z1), jnp.asarray(z2)))
  for key, value in expected.items():
    assert float(got[key]) == pytest.approx(value, rel=1e-5), key
  assert expected["variance"] > 0.01 and expected["covariance"] > 0.01  # every term is exercised
  assert float(vicreg.vicreg_loss(z1, z2)) == pytest.approx(total, rel=1e-5)
  weighted = vicreg.vicreg_loss(z1, z2, invariance_weight=1.0, variance_weight=2.0,
                                covariance_weight=3.0)
  assert float(weighted) == pytest.approx(numpy_vicreg(z1, z2, (1.0, 2.0, 3.0))[1], rel=1e-5)


def test_padded_rows_are_left_out():
  z1, z2 = _views(n=20)
  mask = np.ones(20, bool)
  mask[[3, 11, 19]] = False
  garbage = np.where(mask[:, None], z1, 1e3)  # padding holds anything
  got = vicreg.vicreg_loss(jnp.asarray(garbage), jnp.asarray(z2), jnp.asarray(mask))
  assert float(got) == pytest.approx(numpy_vicreg(z1[mask], z2[mask])[1], rel=1e-5)


def test_eight_devices_equal_one_device_value_and_gradient():
  z1, z2 = _views(n=32)
  mask = np.ones(32, bool)
  mask[[5, 30]] = False

  def loss(a, b, m, axis_name):
    return vicreg.vicreg_loss(a, b, m, axis_name=axis_name)

  # One device: the loss of the concatenated batch and its gradient w.r.t. the views.
  value1, grads1 = jax.value_and_grad(loss, argnums=(0, 1))(z1, z2, mask, None)
  # Eight devices: each returns its value and its local gradient; the pmean of the gradient of
  # a parameter shared by all rows is what the trainer uses, so sum the local rows back up.
  split = lambda x: x.reshape((8, 4) + x.shape[1:])  # noqa: E731
  mapped = jax.pmap(jax.value_and_grad(lambda a, b, m: loss(a, b, m, parallel.AXIS),
                                       argnums=(0, 1)), axis_name=parallel.AXIS)
  values8, grads8 = mapped(split(z1), split(z2), split(mask))
  np.testing.assert_allclose(np.asarray(values8), float(value1), rtol=1e-5)
  for g1, g8 in zip(grads1, grads8):
    # Each device's gradient w.r.t. its own rows is n_devices x the one-device rows (the
    # losses' convention); pmean over devices of parameter gradients removes the factor.
    np.testing.assert_allclose(np.asarray(g8).reshape(g1.shape) / 8, g1, rtol=1e-4, atol=1e-7)


def test_collapsed_views_pay_the_variance_term():
  z = np.ones((16, 4), np.float32)
  terms = jax.device_get(vicreg.vicreg_terms(jnp.asarray(z), jnp.asarray(z)))
  assert float(terms["invariance"]) == 0.0 and float(terms["covariance"]) == 0.0
  assert float(terms["variance"]) == pytest.approx(1.0 - np.sqrt(1e-4), rel=1e-6)
