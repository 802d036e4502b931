"""ssldml_jax.dtw against a brute-force NumPy dynamic program and dtaidistance."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssldml_jax import dtw, parallel

dtaidistance = pytest.importorskip("dtaidistance")
from dtaidistance import dtw_ndim  # noqa: E402


def brute_dtw(a: np.ndarray, b: np.ndarray, window=None, gamma=None) -> float:
  """The textbook O(r c) dynamic program with dtaidistance's band; squared (or soft) cost."""
  r, c = len(a), len(b)
  w = max(r, c) if not window else window
  acc = np.full((r + 1, c + 1), np.inf)
  acc[0, 0] = 0.0
  for i, j in itertools.product(range(r), range(c)):
    if not i - max(0, r - c) - w < j < i + max(0, c - r) + w:
      continue
    prev = np.array([acc[i, j], acc[i, j + 1], acc[i + 1, j]])
    if gamma is None:
      best = prev.min()
    else:
      m = prev.min()
      best = m - gamma * np.log(np.exp(-(prev - m) / gamma).sum()) if np.isfinite(m) else np.inf
    acc[i + 1, j + 1] = np.sum((a[i] - b[j]) ** 2) + best
  return acc[r, c]


def brute_matrix(x, y, window=None, gamma=None) -> np.ndarray:
  return np.array([[brute_dtw(a, b, window, gamma) for b in y] for a in x])


def ecg_like(n: int, rate: float = 100.0, shift: float = 0.0, hr: float = 60.0) -> np.ndarray:
  """(n, 2) signals: P, QRS and T waves as Gaussians every beat, delayed by ``shift`` s."""
  t = np.arange(n) / rate - shift
  beat = np.mod(t, 60.0 / hr)
  wave = lambda mu, sd, amp: amp * np.exp(-0.5 * ((beat - mu) / sd) ** 2)  # noqa: E731
  lead = wave(0.2, 0.025, 0.15) + wave(0.4, 0.012, 1.2) - wave(0.43, 0.01, 0.3) \
      + wave(0.7, 0.05, 0.3)
  return np.stack([lead, 0.6 * lead], axis=1)


@pytest.fixture
def rng(request):
  """A generator seeded by the test's name: the data do not depend on which tests ran before."""
  return np.random.default_rng(sum(map(ord, request.node.name)))


@pytest.mark.parametrize("window", [None, 1, 3])
def test_cross_dtw_unequal_lengths_matches_brute_force_and_dtaidistance(rng, window):
  x = rng.normal(size=(3, 7, 3))
  y = rng.normal(size=(4, 11, 3))
  got = np.asarray(dtw.cross_dtw(x, y, window=window, block=2))
  want = np.sqrt(brute_matrix(x, y, window))
  peer = np.array([[dtw_ndim.distance(a, b, window=window) for b in y] for a in x])
  np.testing.assert_allclose(want, peer, rtol=1e-12)   # The reference has dtaidistance's band.
  np.testing.assert_allclose(got, want, rtol=1e-4)
  # The other way round: rows and columns swap.
  np.testing.assert_allclose(np.asarray(dtw.cross_dtw(y, x, window=window)), want.T, rtol=1e-4)


@pytest.mark.parametrize("window", [None, 2])
def test_pairwise_dtw_equals_dtaidistance_matrix(rng, window):
  # 7 series in blocks of 2: four blocks, so the cyclic half-matrix plan is exercised.
  x = rng.normal(size=(7, 9, 12))
  got = np.asarray(dtw.pairwise_dtw(x, window=window, block=2))
  peer = dtw_ndim.distance_matrix_fast(x.astype(np.double), window=window)
  peer = np.where(np.isinf(peer), peer.T, peer)
  np.fill_diagonal(peer, 0.0)
  np.testing.assert_allclose(got, peer, rtol=1e-4)
  np.testing.assert_array_equal(got, got.T)
  np.testing.assert_array_equal(np.diag(got), 0.0)
  # Same values as the full cross matrix, computed without the plan (whose diagonal holds
  # the float32 rounding of |x|^2 + |x|^2 - 2 x.x, documented as about sqrt(T x 1e-7) x RMS).
  full = np.asarray(dtw.cross_dtw(x, x, window=window))
  np.testing.assert_allclose(full[~np.eye(7, dtype=bool)], got[~np.eye(7, dtype=bool)],
                             rtol=1e-4)
  assert np.all(np.diag(full) < 1e-2 * got[~np.eye(7, dtype=bool)].min())


def test_special_inputs(rng):
  base = rng.normal(size=(1, 8, 2))
  shifted = np.concatenate([base[:, :1], base[:, :-1]], axis=1)   # delayed one sample
  x = np.concatenate([base, base, shifted, np.full((1, 8, 2), 0.5), np.full((1, 8, 2), -1.0)])
  got = np.asarray(dtw.pairwise_dtw(x))
  want = np.sqrt(brute_matrix(x, x))
  np.fill_diagonal(want, 0.0)
  scale = np.sqrt(np.mean(base ** 2) * 8)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3 * scale)
  assert got[0, 1] < 1e-3 * scale                      # identical signals
  # A copy delayed by one sample warps onto the original; only the original's last sample is
  # left without its twin and meets the copy's last (the original's one before last).
  assert got[0, 2] == pytest.approx(np.sqrt(np.sum((base[0, 7] - base[0, 6]) ** 2)), rel=1e-4,
                                    abs=1e-3 * scale)
  # Constant signals: the diagonal path, T cells of (0.5 - (-1))^2 per channel.
  assert got[3, 4] == pytest.approx(np.sqrt(8 * 2 * 1.5 ** 2), rel=1e-5)
  # T = 1: the Euclidean distance between the two samples (the middle pair is a series with
  # itself: 0 up to the float32 rounding of |x|^2 + |x|^2 - 2 x.x).
  one = rng.normal(size=(3, 1, 4))
  np.testing.assert_allclose(np.asarray(dtw.cross_dtw(one, one[::-1])),
                             np.linalg.norm(one[:, None, 0] - one[None, ::-1, 0], axis=-1),
                             rtol=1e-4, atol=2e-3)


def test_window_one_is_euclidean_and_zero_means_no_band(rng):
  x = rng.normal(size=(4, 6, 3))
  np.testing.assert_allclose(np.asarray(dtw.pairwise_dtw(x, window=1)),
                             np.asarray(dtw.pairwise_euclidean_raw(x)), rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(dtw.pairwise_dtw(x, window=0)),
                                np.asarray(dtw.pairwise_dtw(x)))


def test_shifted_ecg_is_nearer_under_dtw_than_euclidean():
  ecg = ecg_like(300)
  shifted = ecg_like(300, shift=0.06)       # the same ECG 60 ms later
  flat = np.zeros_like(ecg)                  # no ECG at all
  x = np.stack([ecg, shifted, flat])
  d = np.asarray(dtw.pairwise_dtw(x, window=30))
  e = np.asarray(dtw.pairwise_euclidean_raw(x))
  assert e[0, 1] > e[0, 2]       # Euclidean: a flat line is nearer than the delayed ECG.
  assert d[0, 1] < 0.2 * d[0, 2]  # DTW: the delayed ECG is by far the nearest.
  assert d[0, 1] < 0.2 * e[0, 1]


def test_soft_dtw_matches_soft_min_program_and_tends_to_dtw(rng):
  x = rng.normal(size=(3, 6, 2))
  y = rng.normal(size=(2, 9, 2))
  np.testing.assert_allclose(np.asarray(dtw.cross_soft_dtw(x, y, 0.5)),
                             brute_matrix(x, y, gamma=0.5), rtol=1e-4)
  hard = np.asarray(dtw.cross_dtw(x, y)) ** 2
  soft = np.asarray(dtw.cross_soft_dtw(x, y, 1e-3))
  # softmin <= min, and at most gamma * log(3) below it per step of the path.
  assert np.all(soft <= hard * (1 + 1e-5))
  np.testing.assert_allclose(soft, hard, atol=1e-3 * np.log(3) * (6 + 9), rtol=1e-5)


def test_soft_dtw_divergence(rng):
  x = rng.normal(size=(5, 7, 2))
  s = np.asarray(dtw.pairwise_soft_dtw(x, 0.3, block=2))
  np.testing.assert_allclose(s, brute_matrix(x, x, gamma=0.3), rtol=1e-4, atol=1e-4)
  div = np.asarray(dtw.pairwise_soft_dtw(x, 0.3, divergence=True, block=2))
  np.testing.assert_allclose(div, s - 0.5 * (np.diag(s)[:, None] + np.diag(s)[None, :]),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.diag(div), 0.0)
  assert np.all(div[~np.eye(5, dtype=bool)] > 0)


def test_cross_dtw_rows_inside_pmap_equal_the_pairwise_matrix(rng):
  n = jax.local_device_count()
  x = rng.normal(size=(n * 2, 10, 3)).astype(np.float32)

  def rows(local):
    return dtw.cross_dtw(local, parallel.gather_global(local), window=4)

  got = jax.pmap(rows, axis_name=parallel.AXIS)(x.reshape(n, 2, 10, 3)).reshape(n * 2, n * 2)
  want = np.asarray(dtw.pairwise_dtw(x, window=4))
  off = ~np.eye(n * 2, dtype=bool)
  np.testing.assert_allclose(np.asarray(got)[off], want[off], rtol=1e-4)
  assert np.all(np.diag(np.asarray(got)) < 1e-2 * want[off].min())   # self: rounding only


def test_decimate_and_euclidean(rng):
  x = rng.normal(size=(3, 11, 2)).astype(np.float32)
  d = np.asarray(dtw.decimate(x, 4))
  assert d.shape == (3, 3, 2)
  np.testing.assert_allclose(d[:, 1], x[:, 4:8].mean(axis=1), rtol=1e-6)
  np.testing.assert_allclose(d[:, 2], x[:, 8:].mean(axis=1), rtol=1e-6)   # the short last run
  flat = d.reshape(3, -1)
  want = np.linalg.norm(flat[:, None] - flat[None], axis=-1)
  np.testing.assert_allclose(np.asarray(dtw.pairwise_euclidean_raw(x, decimate=4)), want,
                             rtol=1e-5, atol=1e-6)
  # decimate= and an explicit decimation agree; the band counts input samples (8 -> 2).
  np.testing.assert_allclose(np.asarray(dtw.pairwise_dtw(x, window=8, decimate=4)),
                             np.asarray(dtw.pairwise_dtw(d, window=2)), rtol=1e-6)


def test_memory_grows_linearly_with_length():
  """Compiled temporary memory: about T x pairs x block, never the T x T tables of all pairs."""
  def temp_bytes(t):
    x = jax.ShapeDtypeStruct((64, t, 12), jnp.float32)
    stats = jax.jit(dtw.pairwise_dtw).lower(x).compile().memory_analysis()
    return stats.temp_size_in_bytes
  small, large = temp_bytes(64), temp_bytes(128)
  assert large < 2.5 * small
  assert large < 64 * 63 / 2 * 128 ** 2 * 4 / 10


@pytest.mark.parametrize("bad, message", [
    (dict(window=-1), "window"), (dict(window=2.5), "window"), (dict(decimate=0), "decimate"),
    (dict(block=0), "block")])
def test_bad_options_name_the_option(bad, message):
  with pytest.raises(ValueError, match=message):
    dtw.pairwise_dtw(np.zeros((2, 5, 3)), **bad)


def test_bad_shapes_are_named():
  with pytest.raises(ValueError, match="channels"):
    dtw.cross_dtw(np.zeros((2, 5, 3)), np.zeros((2, 5, 2)))
  with pytest.raises(ValueError, match=r"\(batch, time, channels\)"):
    dtw.pairwise_dtw(np.zeros((5, 3)))
  with pytest.raises(ValueError, match="gamma"):
    dtw.pairwise_soft_dtw(np.zeros((2, 5, 3)), 0.0)


def test_benchmark_case_checks_agreement_with_dtaidistance():
  from ssldml_jax.bench import dtw as bench_dtw
  x = bench_dtw.make_signals(4, 12)
  row = bench_dtw.run_case(x, bench_dtw.parse_window("0.25", 12), repeats=1, block=2)
  assert row["window"] == 3 and row["cells"] == 6 * dtw.dtw_cells(12, 12, 3)
  assert row["max_rel_diff"] <= 1e-4 and row["ours_s"] > 0 and row["peer_s"] > 0


def test_benchmark_dispatch_names_a_missing_benchmark(monkeypatch, capsys):
  from ssldml_jax.bench import __main__ as bench_main

  def missing(name):
    raise ModuleNotFoundError(f"No module named {name!r}", name=name)

  monkeypatch.setattr(bench_main.importlib, "import_module", missing)
  assert bench_main.main(["input"]) == 1
  assert "benchmark 'input' is not available" in capsys.readouterr().out
  assert bench_main.main(["nonsense"]) == 2
