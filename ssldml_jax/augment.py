"""ECG augmentations for the contrastive baselines: pure jnp functions for use inside a jitted step.

Every function maps ``(key, x)`` with ``x`` a batch ``(B, T, 12)`` in millivolts to an array of
the same shape, drawing independent randomness per example. Strengths are Python numbers (static),
and a strength of 0 returns ``x`` untouched, so a config turns an augmentation off with a zero.
Scaling is per example, not per lead, so Einthoven's and Goldberger's relations between the limb
leads survive it; the additive noises are per lead, as real electrode noise is.
"""

from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections

from ssldml_jax import cli

# Strength keys of config.augment and their upper bounds (None: unbounded).
_STRENGTHS = {"noise_std": None, "time_mask_fraction": 1.0, "wander_mv": None,
              "lead_dropout": 0.999}


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks ``config.augment``; raises ``cli.ConfigError`` naming the first bad key."""
  for key, high in _STRENGTHS.items():
    cli.check_range(config, f"augment.{key}", low=0.0, high=high)
  low = cli.check_range(config, "augment.scale_min", low=1e-3)
  cli.check_range(config, "augment.scale_max", low=low)
  cli.check_range(config, "augment.wander_max_hz", low=0.05)


def gaussian_noise(key: jax.Array, x: jax.Array, std: float) -> jax.Array:
  """White noise of ``std`` mV (muscle and amplifier noise)."""
  if std == 0:
    return x
  return x + std * jax.random.normal(key, x.shape, x.dtype)


def amplitude_scale(key: jax.Array, x: jax.Array, low: float, high: float) -> jax.Array:
  """Multiplies each ECG by one gain, log-uniform in ``[low, high]`` (electrode contact, gain)."""
  if low == high == 1:
    return x
  log_gain = jax.random.uniform(key, (x.shape[0], 1, 1), x.dtype, math.log(low), math.log(high))
  return x * jnp.exp(log_gain)


def time_mask(key: jax.Array, x: jax.Array, max_fraction: float) -> jax.Array:
  """Zeroes one contiguous window of up to ``max_fraction`` of the samples, at a random place."""
  if max_fraction == 0:
    return x
  batch, length = x.shape[0], x.shape[1]
  k_len, k_start = jax.random.split(key)
  width = jax.random.randint(k_len, (batch, 1), 0, int(max_fraction * length) + 1)
  start = jax.random.randint(k_start, (batch, 1), 0, length)
  t = jnp.arange(length)[None, :]
  masked = (t >= start) & (t < start + width)
  return jnp.where(masked[:, :, None], jnp.zeros((), x.dtype), x)


def baseline_wander(key: jax.Array, x: jax.Array, amplitude: float, sampling_rate: float,
                    max_hz: float = 0.5) -> jax.Array:
  """Adds a slow sinusoid per lead (breathing, movement): up to ``amplitude`` mV, < ``max_hz``."""
  if amplitude == 0:
    return x
  batch, length, leads = x.shape
  k_amp, k_freq, k_phase = jax.random.split(key, 3)
  amp = jax.random.uniform(k_amp, (batch, 1, leads), x.dtype, 0.0, amplitude)
  freq = jax.random.uniform(k_freq, (batch, 1, 1), x.dtype, 0.05, max_hz)  # One breathing rate.
  phase = jax.random.uniform(k_phase, (batch, 1, leads), x.dtype, 0.0, 2 * math.pi)
  t = (jnp.arange(length, dtype=x.dtype) / sampling_rate)[None, :, None]
  return x + amp * jnp.sin(2 * math.pi * freq * t + phase)


def lead_dropout(key: jax.Array, x: jax.Array, rate: float) -> jax.Array:
  """Zeroes each lead of each ECG with probability ``rate`` (a lead off)."""
  if rate == 0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, (x.shape[0], 1, x.shape[2]))
  return jnp.where(keep, x, jnp.zeros((), x.dtype))


def augment(key: jax.Array, x: jax.Array, cfg: Mapping, sampling_rate: float) -> jax.Array:
  """The chain used by SimCLR and CLOCS: wander, scaling, noise, time mask, lead dropout.

  ``cfg`` is ``config.augment`` (``noise_std``, ``scale_min``, ``scale_max``,
  ``time_mask_fraction``, ``wander_mv``, ``wander_max_hz``, ``lead_dropout``).
  """
  keys = jax.random.split(key, 5)
  x = baseline_wander(keys[0], x, cfg["wander_mv"], sampling_rate, cfg["wander_max_hz"])
  x = amplitude_scale(keys[1], x, cfg["scale_min"], cfg["scale_max"])
  x = gaussian_noise(keys[2], x, cfg["noise_std"])
  x = time_mask(keys[3], x, cfg["time_mask_fraction"])
  return lead_dropout(keys[4], x, cfg["lead_dropout"])


def temporal_halves(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """CMSC's two views: the first and second non-overlapping halves of each ECG (an odd last
  sample is dropped so both views have the same length)."""
  half = x.shape[1] // 2
  return x[:, :half], x[:, half:2 * half]
