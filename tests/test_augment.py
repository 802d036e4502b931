"""The view augmentations (``ssldml_jax/augment.py``): what each keeps, and the config checks."""

import functools

import jax
import numpy as np
import pytest

from ssldml_jax import augment, cli, methods


# Compiled for compile speed: the test runs it once.
@functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
def _augmented(key, x):
  """Every augmentation of ``x`` in one compiled call (eager calls would compile op by op)."""
  return {"scaled": augment.amplitude_scale(key, x, 0.5, 2.0),
          "dropped": augment.lead_dropout(key, x, 0.5),
          "masked": augment.time_mask(key, x, 0.2),
          "wander": augment.baseline_wander(key, x, 0.3, 50.0, 0.5) - x,
          "noise": augment.gaussian_noise(key, x, 0.1) - x,
          "chain": augment.augment(key, x, {"noise_std": 0.05, "scale_min": 0.8, "scale_max": 1.25,
                                            "time_mask_fraction": 0.1, "wander_mv": 0.1,
                                            "wander_max_hz": 0.5, "lead_dropout": 0.1}, 50.0)}


def test_augmentations_keep_what_they_must():
  key = jax.random.PRNGKey(0)
  x = np.random.default_rng(0).normal(size=(6, 200, 12)).astype(np.float32)
  x[:, :, 2] = x[:, :, 1] - x[:, :, 0]  # Einthoven: III = II - I.
  out = jax.tree.map(np.asarray, _augmented(key, x))
  scaled = out["scaled"]  # A per-ECG gain keeps the limb-lead relations.
  np.testing.assert_allclose(scaled[:, :, 2], scaled[:, :, 1] - scaled[:, :, 0], atol=1e-5)
  gain = scaled[:, 0, 0] / x[:, 0, 0]
  assert np.all((gain >= 0.5 - 1e-5) & (gain <= 2.0 + 1e-5)) and np.ptp(gain) > 0
  np.testing.assert_allclose(scaled / gain[:, None, None], x, rtol=1e-5, atol=1e-6)
  dropped = out["dropped"]
  zero_leads = np.all(dropped == 0, axis=1)
  assert zero_leads.any() and not zero_leads.all()
  np.testing.assert_array_equal(dropped, np.where(zero_leads[:, None, :], 0.0, x))
  zero_t = np.all(out["masked"] == 0, axis=2)
  for row in zero_t:
    idx = np.flatnonzero(row)
    assert len(idx) <= 40 and (len(idx) == 0 or np.all(np.diff(idx) == 1))
  assert zero_t.any()
  np.testing.assert_array_equal(np.where(zero_t[:, :, None], 0.0, x), out["masked"])
  wander = out["wander"]
  assert 0 < np.abs(wander).max() <= 0.3 + 1e-5
  # Slow: a sinusoid of amplitude A below f Hz changes by at most 2 pi f A / rate per sample.
  assert np.abs(np.diff(wander, axis=1)).max() <= 2 * np.pi * 0.5 * 0.3 / 50.0 + 1e-6
  assert 0.09 < out["noise"].std() < 0.11
  assert out["chain"].shape == x.shape and np.isfinite(out["chain"]).all()
  assert not np.allclose(out["chain"], x)
  for fn, args in ((augment.gaussian_noise, (0.0,)), (augment.lead_dropout, (0.0,)),
                   (augment.time_mask, (0.0,)), (augment.amplitude_scale, (1.0, 1.0)),
                   (augment.baseline_wander, (0.0, 50.0))):
    assert fn(key, x, *args) is x  # A zero strength is off.
  a, b = augment.temporal_halves(x[:, :199])
  assert a.shape == b.shape == (6, 99, 12)
  np.testing.assert_array_equal(b, x[:, 99:198])


@pytest.mark.parametrize("key,value", [("noise_std", -0.1), ("lead_dropout", 1.0),
                                       ("time_mask_fraction", 1.5), ("scale_min", 0.0),
                                       ("wander_max_hz", 0.0)])
def test_bad_strength_names_the_key(key, value):
  config = methods.pretrain_config("simclr")
  config.augment[key] = value
  with pytest.raises(cli.ConfigError, match=rf"config\.augment\.{key}="):
    augment.validate(config)
  config = methods.pretrain_config("simclr")
  config.augment.scale_max = 0.5  # below scale_min
  with pytest.raises(cli.ConfigError, match=r"config\.augment\.scale_max=0\.5"):
    augment.validate(config)
