"""Signal conditioning in ssldml_jax/data/records.py against analytic sinusoids.

The band-pass is checked against the specification of a zero-phase Butterworth filter, the
resampler against the continuous signal evaluated at the new sampling times: never against the
scipy calls the code makes.
"""

import numpy as np
import pytest

from ssldml_jax.data import records

RATE, LOW, HIGH = 250.0, 0.5, 40.0


def _butterworth_bandpass_power(f, rate, low, high, order=2):
  """|H(f)|^2 of the digital order-``order`` Butterworth band-pass (bilinear transform).

  Band-pass of the analog prototype: |H|^2 = 1 / (1 + ((w^2 - w_low w_high) / (w (w_high -
  w_low)))^(2 order)), at the pre-warped frequencies w = tan(pi f / rate): -3 dB at both cutoffs,
  1 at their geometric mean.
  """
  w, w_low, w_high = (np.tan(np.pi * np.asarray(v, float) / rate) for v in (f, low, high))
  ratio = (w ** 2 - w_low * w_high) / (w * (w_high - w_low))
  return 1.0 / (1.0 + ratio ** (2 * order))


def _gain_and_phase(y, t, f, phase):
  """Least-squares amplitude of ``sin(2 pi f t + phase)`` in ``y`` and of its quadrature."""
  basis = np.stack([np.sin(2 * np.pi * f * t + phase), np.cos(2 * np.pi * f * t + phase)], 1)
  (gain, quadrature), *_ = np.linalg.lstsq(basis, y, rcond=None)
  return gain, quadrature


@pytest.mark.parametrize("f", [0.05, 0.2, LOW, 1.0, np.sqrt(LOW * HIGH), 20.0, HIGH, 60.0, 100.0])
def test_bandpass_follows_the_zero_phase_butterworth_specification(f):
  """Order 2 run forward and backward: the gain is |H|^2 (-6 dB at the cutoffs), no phase shift."""
  t = np.arange(int(120 * RATE)) / RATE       # 120 s: whole periods of 0.05 Hz
  x = np.sin(2 * np.pi * f * t + 0.4)
  y = records.bandpass(np.stack([x, -2 * x], axis=1), RATE, LOW, HIGH)
  middle = slice(len(t) // 4, 3 * len(t) // 4)  # away from the edges' transients
  want = _butterworth_bandpass_power(f, RATE, LOW, HIGH)
  for lead, scale in ((0, 1.0), (1, -2.0)):
    gain, quadrature = _gain_and_phase(y[middle, lead] / scale, t[middle], f, 0.4)
    assert gain == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert abs(quadrature) < 1e-6 * max(want, 1e-3)
  if f in (LOW, HIGH):
    assert want == pytest.approx(0.5)


def test_bandpass_runs_along_the_given_axis():
  rng = np.random.default_rng(0)
  batch = rng.normal(size=(3, 500, 12))
  along = records.bandpass(batch, RATE, LOW, HIGH, axis=1)
  for i in range(3):
    np.testing.assert_allclose(along[i], records.bandpass(batch[i], RATE, LOW, HIGH), atol=1e-12)
  with pytest.raises(ValueError, match=r"band-pass \(0.5, 130.0\) Hz must lie inside"):
    records.bandpass(batch, RATE, LOW, 130.0, axis=1)


def _signal(t):
  """Two sinusoids and a baseline offset, in mV."""
  return np.sin(2 * np.pi * 7 * t) + 0.5 * np.sin(2 * np.pi * 31 * t + 0.3) + 0.3


@pytest.mark.parametrize("rate_in,rate_out", [(500, 250), (250, 100), (100, 250), (360, 250),
                                              (250, 500)])
def test_resample_matches_the_continuous_signal(rate_in, rate_out):
  t = np.arange(10 * rate_in) / rate_in
  y = records.resample(np.stack([_signal(t), -_signal(t)], axis=1), rate_in, rate_out)
  assert y.shape == (10 * rate_out, 2)
  t_out = np.arange(10 * rate_out) / rate_out
  inside = slice(rate_out // 2, -(rate_out // 2))  # 0.5 s from the ends: the FIR's reach
  np.testing.assert_allclose(y[inside, 0], _signal(t_out[inside]), atol=2e-3)
  np.testing.assert_allclose(y[inside, 1], -_signal(t_out[inside]), atol=2e-3)
  # A baseline (offset and drift) comes out straight up to the first and last sample.
  line = lambda t: 0.4 + 0.05 * t  # noqa: E731
  np.testing.assert_allclose(records.resample(line(t), rate_in, rate_out), line(t_out), atol=1e-3)


def test_resample_removes_what_the_new_rate_cannot_hold():
  t = np.arange(5000) / 500.0
  kept = np.sin(2 * np.pi * 7 * t)
  # 200 Hz is above 250 Hz's Nyquist frequency: unfiltered, it would alias to 50 Hz.
  y = records.resample(kept + np.sin(2 * np.pi * 200 * t), 500, 250)
  t_out = np.arange(2500) / 250.0
  np.testing.assert_allclose(y[125:-125], np.sin(2 * np.pi * 7 * t_out[125:-125]), atol=3e-3)


def test_resample_along_the_time_axis_of_a_batch():
  rng = np.random.default_rng(1)
  batch = rng.normal(size=(2, 1000, 12))
  got = records.resample(batch, 100, 50, axis=1)
  assert got.shape == (2, 500, 12)
  np.testing.assert_allclose(got[1], records.resample(batch[1], 100, 50), atol=1e-12)
  assert records.resample(batch, 100, 100) is batch
