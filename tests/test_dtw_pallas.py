"""The Pallas DTW kernel (ssldml_jax.dtw_pallas), in Pallas interpret mode on CPU, against the
XLA program and dtaidistance; and the dispatch of ``dtw.cross_dtw(..., impl=...)``.

Sizes are small because the interpreter runs every program of the grid one after the other, and
each distinct shape compiles anew (2-4 s). They still reach every part of the kernel: with the
default 32 lanes, 37 and 41 rows make two stripes, the second one partly padding rows (which
carry the last real row down) and, with a band, starting at a column > 0 (its corner is read
from the row buffer); 7 anchors in blocks of 4 pad the last block; B = 64 uses 9 rows (one
stripe, mostly padding); rows > columns and rows < columns both occur, and windows 2-5 put band
edges inside the table. Mining's 12 leads appear in two cases, 3 channels elsewhere (the kernel
unrolls over channels; the interpreter's compile time grows with them).
"""

import functools
import warnings

import jax
import numpy as np
import pytest

from ssldml_jax import dtw, dtw_pallas, methods, parallel, train_lib
from ssldml_jax.cli import ConfigError

dtaidistance = pytest.importorskip("dtaidistance")
from dtaidistance import dtw_ndim  # noqa: E402

RTOL = 1e-5


@pytest.fixture
def rng(request):
  return np.random.default_rng(sum(map(ord, request.node.name)))


@pytest.mark.parametrize("b, m, r, c, channels, window", [
    (1, 5, 37, 29, 12, None), (1, 5, 29, 37, 12, 4),
    (7, 7, 41, 41, 3, None), (7, 7, 41, 41, 3, 5),
    (64, 6, 9, 7, 3, None), (64, 6, 7, 9, 3, 2),
])
def test_kernel_equals_xla_and_dtaidistance(rng, b, m, r, c, channels, window):
  # 12 leads as in mining; 3 elsewhere, to keep the unrolled interpreted kernel small.
  x = rng.normal(size=(b, r, channels)).astype(np.float32)
  y = rng.normal(size=(m, c, channels)).astype(np.float32)
  got = np.asarray(dtw.cross_dtw(x, y, window=window, impl="pallas"))
  xla = np.asarray(dtw.cross_dtw(x, y, window=window, impl="xla"))
  peer = np.array([[dtw_ndim.distance(a.astype(np.double), z.astype(np.double), window=window)
                    for z in y] for a in x])
  np.testing.assert_allclose(got, xla, rtol=RTOL)
  np.testing.assert_allclose(got, peer, rtol=RTOL)


@pytest.mark.parametrize("lanes, anchors", [(32, 1), (64, 2), (32, 8)])
def test_tiling_changes_nothing(rng, lanes, anchors):
  # 70 rows: three stripes of 32 lanes or two of 64; 3 anchors: one block of 2 padded.
  x = rng.normal(size=(3, 70, 4)).astype(np.float32)
  y = rng.normal(size=(2, 45, 4)).astype(np.float32)
  xa, ya = dtw._augment(x, y)   # pylint: disable=protected-access
  want = np.asarray(dtw.cross_dtw(x, y, window=6, impl="xla")) ** 2
  got = np.asarray(dtw_pallas.cross_accumulated(xa, ya, window=6, lanes=lanes, anchors=anchors,
                                                interpret=True))
  np.testing.assert_allclose(got, want, rtol=RTOL)


def test_kernel_rows_inside_pmap_equal_xla(rng):
  n = jax.local_device_count()
  x = rng.normal(size=(n, 2, 11, 3)).astype(np.float32)

  def rows(local, impl):
    return dtw.cross_dtw(local, parallel.gather_global(local), window=3, impl=impl)

  got = jax.pmap(lambda v: rows(v, "pallas"), axis_name=parallel.AXIS)(x)
  want = jax.pmap(lambda v: rows(v, "xla"), axis_name=parallel.AXIS)(x)
  off = ~np.eye(2 * n, dtype=bool)
  np.testing.assert_allclose(np.asarray(got).reshape(2 * n, 2 * n)[off],
                             np.asarray(want).reshape(2 * n, 2 * n)[off], rtol=RTOL)


def test_kernel_lowers_to_a_valid_triton_module_for_gpu(monkeypatch, capfd):
  # Lowered (not compiled) for CUDA on this CPU machine: every operation of the kernel has a
  # Pallas Triton lowering rule, and the Triton module it makes verifies. MLIR prints a module
  # that fails verification in its generic form ("builtin.module"() ...), which the GPU
  # compiler then rejects (an integer select lowered with a boolean branch did, on jax 0.11).
  # Compiling it needs a GPU (launch/accel_check.sh there).
  monkeypatch.setattr(dtw_pallas.pl, "pallas_call",
                      functools.partial(dtw_pallas.pl.pallas_call, debug=True))
  xa = jax.ShapeDtypeStruct((5, 40, 14), np.float32)
  ya = jax.ShapeDtypeStruct((6, 33, 14), np.float32)
  for window in (None, 7):
    fn = jax.jit(lambda a, b, w=window: dtw_pallas.cross_accumulated(a, b, window=w))
    text = fn.trace(xa, ya).lower(lowering_platforms=("cuda",)).as_text()
    assert "triton" in text
    printed = capfd.readouterr().out
    assert "module @ssldml_dtw {" in printed and '"builtin.module"' not in printed, window


def test_auto_takes_xla_off_gpu_and_falls_back_with_one_warning(rng, monkeypatch):
  x = rng.normal(size=(3, 12, 2)).astype(np.float32)
  want = np.asarray(dtw.cross_dtw(x, x[::-1], impl="xla"))
  with warnings.catch_warnings():
    warnings.simplefilter("error")   # On CPU, 'auto' is the XLA program, silently.
    np.testing.assert_array_equal(np.asarray(dtw.cross_dtw(x, x[::-1])), want)
  # A "GPU" on which the kernel cannot run (it is not interpreted there: no lowering on CPU).
  monkeypatch.setattr(dtw, "_backend", lambda: "gpu")
  monkeypatch.setattr(dtw, "_fallback_warned", False)
  dtw._kernel_works.cache_clear()   # pylint: disable=protected-access
  with pytest.warns(RuntimeWarning, match="Pallas kernel is not usable.*using the XLA") as got:
    a = dtw.cross_dtw(x, x[::-1], impl="auto")
    b = dtw.cross_dtw(x[:, :10], x[::-1, :10], window=2, impl="auto")   # other shapes and tiling
  assert len([w for w in got if issubclass(w.category, RuntimeWarning)]) == 1
  np.testing.assert_array_equal(np.asarray(a), want)
  np.testing.assert_allclose(np.asarray(b), np.asarray(
      dtw.cross_dtw(x[:, :10], x[::-1, :10], window=2, impl="xla")), rtol=1e-6)
  dtw._kernel_works.cache_clear()   # pylint: disable=protected-access


def test_bad_impl_is_one_line():
  with pytest.raises(ValueError, match="impl must be one of 'auto', 'xla', 'pallas', got 'cuda'"):
    dtw.cross_dtw(np.ones((2, 5, 1)), np.ones((2, 5, 1)), impl="cuda")
  config = methods.pretrain_config("ssl_dml_dtw")
  config.mining.dtw_impl = "triton"
  with pytest.raises(ConfigError, match="config.mining.dtw_impl='triton' is not allowed"):
    train_lib.validate_config(config)
