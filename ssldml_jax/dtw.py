"""Raw-signal distances between ECGs for on-the-fly mining: exact, banded and soft DTW, Euclidean.

Every function takes time-major signals ``(B, T, C)`` and is jittable with static shapes, so
that a pmapped train step can call ``cross_dtw(local, gathered_global)``.

DTW here warps over **time** with the squared Euclidean distance between the ``C``-lead sample
vectors as local cost, and ``pairwise_dtw`` / ``cross_dtw`` return the square root of the
minimal accumulated cost: the value of ``dtaidistance.dtw_ndim.distance(a, b, window=w)``.

``window`` is dtaidistance's Sakoe-Chiba band: cell ``(i, j)`` (``i`` indexes the first series, of
length ``r``; ``j`` the second, of length ``c``) is allowed when
``i - max(0, r - c) - w < j < i + max(0, c - r) + w``. For equal lengths that is ``|i - j| < w``:
``w = 1`` is the Euclidean distance, the band is ``2w - 1`` cells wide. ``None`` or ``0`` means
no band (dtaidistance documents ``0`` so; its pure-Python path returns inf for it). With
``decimate=f`` the band still counts samples of the signals passed in: ``ceil(w / f)`` samples of
the decimated ones.

How it is computed (and why it is fast on CPU). The dynamic program runs over anti-diagonals
``k = i + j``: the cells of one anti-diagonal depend only on the two before it, so one step updates
a whole anti-diagonal of a whole block of pairs at once. One step is

- the local costs of the block as one batched matmul, ``cost = |x|^2 + |y|^2 - 2 x.y`` written as
  a single dot of augmented vectors ``(-2x, |x|^2, 1) . (y, 1, |y|^2)``, batched over the cells
  of the diagonal, with the partners as the minor (vector) dimension;
- one fused elementwise pass ``D_k = cost + min(D_{k-1} shifted twice, D_{k-2} shifted)``, the
  shifts being offsets 0..2 along the diagonal (the diagonal's first row moves by 0 or 1 a step).

Only three anti-diagonals per pair are alive (three rotating buffers, written in place), so
memory is ``O(block x partners x T)`` plus the inputs, never ``T x T`` per pair. Anchors are
processed in blocks of ``block`` (``lax.map``), which keeps a step's working set in cache.
Diagonals are stored in band coordinates (``m = i - first row of the band on that diagonal``), so
a band of width ``w`` costs about ``T x (2w - 1)`` cells, not ``T x T``; the steps are grouped in
phases whose static length follows the diagonal's length (a full DTW's diagonals grow from 1 to
``T`` and shrink again), so that the triangle ends are not padded to ``T``.
``pairwise_dtw`` gives anchor block ``I`` the partner blocks ``I .. I + G//2`` (cyclically), which
covers every unordered pair with about ``B^2/2 + B * block`` pair computations instead of ``B^2``.

Precision (float32). The expanded cost ``|x|^2 + |y|^2 - 2x.y`` loses absolute accuracy of order
``1e-7 x (|x|^2 + |y|^2)`` per cell (signals are centred on the partners' mean first, which
removes common offsets; matmuls run at ``Precision.HIGHEST`` so no TF32/bf16 passes on GPU/TPU),
clamped at 0. Distances between different ECGs are exact to about 1e-6 relative (tested against
dtaidistance at 1e-4); the distance of a series to an exact copy of itself is not exactly 0 but
about ``sqrt(T x 1e-7) x`` its RMS amplitude (``pairwise_dtw`` sets its own diagonal to 0). The
accumulated costs are float32 sums of at most ``r + c`` positive terms (relative error below
``(r + c) x 6e-8``, in practice far less), without cancellation.

These functions are for mining (``lax.stop_gradient`` in the train step); reverse-mode
differentiation through the loop would keep every diagonal and is not supported.

Implementations (``cross_dtw(..., impl=...)``, ``config.mining.dtw_impl``). ``'xla'`` is the
program above. ``'pallas'`` is one Pallas kernel launch per call (``ssldml_jax.dtw_pallas``: a
block of pairs per program, the recurrence carried in registers along a skewed wavefront),
which on a GPU avoids the while-loop's few kernel launches per anti-diagonal; on other backends
it runs in Pallas interpret mode (slow: for tests). ``'auto'`` takes the kernel on a GPU and
the XLA program elsewhere; on a GPU whose jax cannot compile the kernel, or where it disagrees
with the XLA program on a small probe, it falls back to XLA with one warning per process.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_HIGHEST = lax.Precision.HIGHEST
DEFAULT_BLOCK = 16      # anchors per block: (block x partners x diagonal) stays cache-sized.
_PHASE_LEVELS = 8       # diagonal lengths are rounded up to multiples of max_length / this,
_MIN_PHASE_LENGTH = 32  # but not to multiples of fewer than this many cells.
_UNROLL = 3             # steps per loop iteration: three rotating buffers, written in place.
IMPLS = ("auto", "xla", "pallas")


# --------------------------------------------------------------------------------------------
# Input checks and small helpers.


def _check_signals(x, name: str) -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim != 3:
    raise ValueError(f"{name} must be (batch, time, channels), got shape {tuple(x.shape)}")
  if x.shape[1] < 1 or x.shape[2] < 1:
    raise ValueError(f"{name} needs at least one sample and one channel, got shape "
                     f"{tuple(x.shape)}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_window(window) -> Optional[int]:
  if window is None:
    return None
  if isinstance(window, (bool, np.bool_)) or not isinstance(window, (int, np.integer)):
    raise ValueError(f"window must be a non-negative int (samples) or None, got {window!r}")
  if window < 0:
    raise ValueError(f"window must be a non-negative int (samples) or None, got {window}")
  return None if window == 0 else int(window)


def _check_factor(factor) -> int:
  if isinstance(factor, (bool, np.bool_)) or not isinstance(factor, (int, np.integer)) \
      or factor < 1:
    raise ValueError(f"decimate factor must be an int >= 1, got {factor!r}")
  return int(factor)


def _check_block(block) -> int:
  if isinstance(block, (bool, np.bool_)) or not isinstance(block, (int, np.integer)) or block < 1:
    raise ValueError(f"block must be an int >= 1, got {block!r}")
  return int(block)


def _check_impl(impl) -> str:
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}, got {impl!r}")
  return impl


def _check_gamma(gamma) -> float:
  try:
    g = float(gamma)
  except (TypeError, ValueError):
    raise ValueError(f"gamma must be a positive number, got {gamma!r}") from None
  if not g > 0 or math.isinf(g):
    raise ValueError(f"gamma must be a positive finite number, got {gamma!r}")
  return g


@functools.partial(jax.jit, static_argnames=("factor",))
def decimate(x: jax.Array, factor: int) -> jax.Array:
  """``(B, T, C)`` -> ``(B, ceil(T / factor), C)``: the mean of each run of ``factor`` samples.

  The mean is the anti-alias filter: a box filter, with its first zero at the new sampling rate
  and about -4 dB at the new Nyquist frequency. That is crude next to a sharp FIR, but mining
  only needs the QRS/T shapes that drive DTW, and it costs one pass. A last, shorter run is
  averaged over the samples it has, so no sample is dropped.
  """
  factor = _check_factor(factor)
  x = _check_signals(x, "x")
  if factor == 1:
    return x
  b, t, c = x.shape
  n = -(-t // factor)
  pad = n * factor - t
  sums = jnp.pad(x, ((0, 0), (0, pad), (0, 0))).reshape(b, n, factor, c).sum(axis=2)
  counts = np.full((n, 1), float(factor), np.float32)
  counts[-1] = factor - pad
  return sums / jnp.asarray(counts, sums.dtype)


_decimate = decimate   # the public functions' ``decimate`` argument shadows the name.


def decimated_window(window: Optional[int], factor: int) -> Optional[int]:
  """A Sakoe-Chiba band of ``window`` samples, in samples after decimation by ``factor``
  (rounded up, so that decimating never narrows the band)."""
  return None if window is None else -(-window // factor)


# --------------------------------------------------------------------------------------------
# The anti-diagonal schedule (NumPy, at trace time).


def band_rows(r: int, c: int, window: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
  """First allowed row ``i`` and number of allowed cells (maybe 0) on each anti-diagonal ``i + j``.

  Uses dtaidistance's band: ``i - max(0, r-c) - w < j < i + max(0, c-r) + w``.
  """
  w = max(r, c) if window is None else window
  lo = -(w + max(0, c - r))   # i - j > lo
  hi = w + max(0, r - c)      # i - j < hi
  k = np.arange(r + c - 1)
  first = np.maximum.reduce([np.zeros_like(k), k - (c - 1), (k + lo) // 2 + 1])
  last = np.minimum.reduce([np.full_like(k, r - 1), k, -(-(k + hi) // 2) - 1])
  # With w = 1 and equal lengths every other anti-diagonal is empty: the path only moves
  # diagonally. An empty diagonal is an all-inf step.
  count = np.maximum(last - first + 1, 0)
  return first, count


def dtw_cells(r: int, c: int, window: Optional[int] = None) -> int:
  """Cells of the ``r x c`` DTW table inside the band (``r * c`` without one): the GCUPS unit."""
  window = _check_window(window)
  return int(band_rows(r, c, window)[1].sum())


@dataclasses.dataclass(frozen=True)
class _Schedule:
  """Per-step scalars and the phases of static diagonal length."""
  table: np.ndarray                  # (steps + 1, 5) int32: first row, y row, d1, d2, count.
  phases: tuple[tuple[int, int, int], ...]   # (first step, end step, diagonal length).
  length: int                        # the longest phase's diagonal length.
  answer_buffer: int                 # which buffer holds the last diagonal after the loop.
  answer_row: int                    # the end cell's position on it.


def _phases(count: np.ndarray, total: int) -> tuple[tuple[int, int, int], ...]:
  """Steps 1 .. total-1 cut into a few runs of static diagonal length (each one compiled loop).

  A step needs the length of its own diagonal and of the two before it (which it reads). The
  need is replaced by its unimodal envelope (a full DTW's diagonals grow then shrink; a band's
  alternate by one), rounded up to ``_PHASE_LEVELS`` levels, and runs shorter than a fraction
  of all steps are merged into a neighbour: padding waste stays near ``1 / (2 levels)`` and the
  number of compiled loops small.
  """
  need = np.maximum.reduce([count, np.roll(count, 1), np.roll(count, 2)])
  need[:2] = np.maximum.accumulate(count[:2])
  envelope = np.minimum(np.maximum.accumulate(need), np.maximum.accumulate(need[::-1])[::-1])
  longest = max(1, int(need.max()))
  # Short series get fewer levels: their padding costs less than compiling more loops.
  levels = min(_PHASE_LEVELS, max(1, longest // _MIN_PHASE_LENGTH))
  quantum = -(-longest // levels)
  level = np.clip(-(-envelope // quantum) * quantum, 1, longest)
  # Loop boundaries fall on multiples of _UNROLL steps: move each cut into the lower level's
  # side, so that only the few steps in between are padded to the higher level.
  cuts = {1, total}
  for k in range(2, total):
    if level[k] > level[k - 1]:
      cuts.add(1 + _UNROLL * ((k - 1) // _UNROLL))
    elif level[k] < level[k - 1]:
      cuts.add(1 + _UNROLL * -(-(k - 1) // _UNROLL))
  cuts = sorted(cuts)
  phases = [[a, b, int(level[a:b].max())] for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
  shortest = _UNROLL * max(1, round((total - 1) / (_UNROLL * 4 * levels)))
  merged: list[list[int]] = []
  for ph in phases:
    if merged and (merged[-1][1] - merged[-1][0] < shortest or ph[1] - ph[0] < shortest):
      merged[-1] = [merged[-1][0], ph[1], max(merged[-1][2], ph[2])]
    else:
      merged.append(ph)
  return tuple(tuple(ph) for ph in merged)


@functools.lru_cache(maxsize=64)
def _schedule(r: int, c: int, window: Optional[int]) -> _Schedule:
  first, count = band_rows(r, c, window)
  num = r + c - 1
  prev1 = np.concatenate([[0], first])[:num]
  prev2 = np.concatenate([[0, 0], first])[:num]
  # Steps 1 .. num-1 run in the loop, padded to a multiple of _UNROLL with empty steps (count 0)
  # at the end; at most _UNROLL - 1 of them, so the last real diagonal is still in a buffer.
  steps = _UNROLL * -(-(num - 1) // _UNROLL)
  total = 1 + steps
  table = np.zeros((total, 5), np.int64)
  table[:num, 0] = first
  table[:num, 1] = c - 1 - np.arange(num) + first   # row of the time-reversed partner.
  table[:num, 2] = first - prev1                     # d1 in {0, 1}
  table[:num, 3] = first - prev2                     # d2 in {0, 1, 2}
  table[:num, 4] = count
  table[num:, 0] = first[-1]
  phases = _phases(table[:, 4], total)
  return _Schedule(table=table.astype(np.int32), phases=phases,
                   length=max([int(count.max())] + [p[2] for p in phases]),
                   answer_buffer=total - num, answer_row=int(r - 1 - first[-1]))


# --------------------------------------------------------------------------------------------
# The wavefront.


def _augment(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Centred, augmented vectors whose dot product is the squared Euclidean local cost."""
  mu = jnp.mean(y, axis=(0, 1))
  x, y = x - mu, y - mu
  nx = jnp.sum(x * x, -1, keepdims=True)
  ny = jnp.sum(y * y, -1, keepdims=True)
  return (jnp.concatenate([-2.0 * x, nx, jnp.ones_like(nx)], -1),
          jnp.concatenate([y, jnp.ones_like(ny), ny], -1))


def _softmin3(a: jax.Array, b: jax.Array, c: jax.Array, gamma: float) -> jax.Array:
  m = jnp.minimum(jnp.minimum(a, b), c)
  finite = jnp.isfinite(m)
  ms = jnp.where(finite, m, 0.0)
  s = jnp.exp((ms - a) / gamma) + jnp.exp((ms - b) / gamma) + jnp.exp((ms - c) / gamma)
  return jnp.where(finite, ms - gamma * jnp.log(s), jnp.inf)


def _wavefront(xa: jax.Array, yb: jax.Array, sched: _Schedule, c: int,
               gamma: Optional[float]) -> jax.Array:
  """Accumulated cost of every (anchor, partner) pair of one block.

  xa: ``(r + L, A, C')`` augmented anchors, time-major, zero-padded by ``L = sched.length``.
  yb: ``(c + L, C', P)`` augmented partners, time-reversed, zero-padded; partners minor.
  Returns ``(A, P)``: the minimal (or soft-minimal) accumulated squared cost.
  """
  a, p = xa.shape[1], yb.shape[2]
  dtype = xa.dtype
  table = jnp.asarray(sched.table)
  inf = jnp.asarray(jnp.inf, dtype)

  def local_cost(xs, ys):
    return jnp.maximum(jnp.einsum("mac,mcp->map", xs, ys, precision=_HIGHEST), 0.0)

  def step(scalars, p1, p2, dst, length):
    first, yrow, d1, d2, count = (scalars[i] for i in range(5))
    xs = lax.dynamic_slice_in_dim(xa, first, length, 0)
    ys = lax.dynamic_slice_in_dim(yb, yrow, length, 0)
    # Buffers hold diagonal position m at row m + 1; rows 0 and length + 1 stay +inf.
    up = lax.dynamic_slice_in_dim(p1, d1, length, 0)         # (i - 1, j)
    left = lax.dynamic_slice_in_dim(p1, d1 + 1, length, 0)   # (i, j - 1)
    diag = lax.dynamic_slice_in_dim(p2, d2, length, 0)       # (i - 1, j - 1)
    if gamma is None:
      best = jnp.minimum(jnp.minimum(up, left), diag)
    else:
      best = _softmin3(up, left, diag, gamma)
    live = lax.broadcasted_iota(jnp.int32, (length, 1, 1), 0) < count
    new = jnp.where(live, local_cost(xs, ys), inf) + best
    return lax.dynamic_update_slice_in_dim(dst, new, 1, 0)

  def resize(buf, length):
    """Keeps diagonal positions -1 .. length - 1 and a +inf row after them."""
    have = buf.shape[0] - 2
    if length == have:
      return buf
    if length > have:
      return jnp.pad(buf, ((0, length - have), (0, 0), (0, 0)), constant_values=jnp.inf)
    return jnp.concatenate([buf[:length + 1], jnp.full((1, a, p), inf)], 0)

  # Diagonal 0 is the cell (0, 0), whose predecessor is the empty prefix (cost 0).
  length0 = sched.phases[0][2] if sched.phases else 1
  empty = jnp.full((length0 + 2, a, p), inf)
  d0 = empty.at[1].set(local_cost(xa[:1], yb[c - 1:c])[0])
  bufs = (d0, empty, empty)     # D_{k-1}, D_{k-2}, D_{k-3}
  for start, end, length in sched.phases:
    bufs = tuple(resize(b, length) for b in bufs)

    def body(it, bufs, start=start, length=length):
      rows = lax.dynamic_slice_in_dim(table, start + _UNROLL * it, _UNROLL, 0)
      b = list(bufs)
      for u in range(_UNROLL):
        # The new diagonal overwrites D_{k-3}, which nothing reads any more.
        b = [step(rows[u], b[0], b[1], b[2], length)] + b[:2]
      return tuple(b)

    bufs = lax.fori_loop(0, (end - start) // _UNROLL, body, bufs)
  return bufs[sched.answer_buffer][1 + sched.answer_row].astype(dtype)


def _prepare(x: jax.Array, y: jax.Array, window: Optional[int]):
  """Augmented, padded, time-major anchors and time-reversed partners, and the schedule."""
  sched = _schedule(x.shape[1], y.shape[1], window)
  xa, yb = _augment(x, y)
  pad = sched.length
  xa = jnp.pad(xa.transpose(1, 0, 2), ((0, pad), (0, 0), (0, 0)))              # (r+L, B, C')
  yb = jnp.pad(yb[:, ::-1].transpose(1, 2, 0), ((0, pad), (0, 0), (0, 0)))     # (c+L, C', M)
  return xa, yb, sched


def _blocks(xa: jax.Array, block: int) -> tuple[jax.Array, int]:
  """``(T, B, C')`` -> ``(nb, T, block, C')`` with zero anchors padding the last block."""
  t, b, cp = xa.shape
  nb = -(-b // block)
  xa = jnp.pad(xa, ((0, 0), (0, nb * block - b), (0, 0)))
  return xa.reshape(t, nb, block, cp).transpose(1, 0, 2, 3), nb


def _cross_accumulated(x, y, window, gamma, block) -> jax.Array:
  b = x.shape[0]
  xa, yb, sched = _prepare(x, y, window)
  c = y.shape[1]
  block = min(block, b)
  if block == b:
    return _wavefront(xa, yb, sched, c, gamma)
  xs, nb = _blocks(xa, block)
  out = lax.map(lambda xb: _wavefront(xb, yb, sched, c, gamma), xs)
  return out.reshape(nb * block, -1)[:b]


@functools.lru_cache(maxsize=32)
def _pairwise_plan(b: int, block: int):
  """Cyclic block plan: block I meets blocks I .. I + h (mod G); where to read each pair."""
  g = -(-b // block)
  h = g // 2
  a_idx, b_idx = np.meshgrid(np.arange(b), np.arange(b), indexing="ij")
  lo, hi = np.minimum(a_idx, b_idx), np.maximum(a_idx, b_idx)
  blo, bhi = lo // block, hi // block
  t = (bhi - blo) % g
  # Pairs h blocks apart are computed twice when G is even; read the copy of the lower block.
  use_lo = t <= h if g % 2 else (t < h) | ((t == h) & (blo < bhi))
  src_block = np.where(use_lo, blo, bhi)
  src_row = np.where(use_lo, lo, hi) % block
  src_col = np.where(use_lo, t * block + hi % block, ((blo - bhi) % g) * block + lo % block)
  assert (src_col < (h + 1) * block).all()
  return g, h, src_block, src_row, src_col


def _pairwise_accumulated(x, window, gamma, block) -> jax.Array:
  b = x.shape[0]
  g = -(-b // block)
  if g <= 2:   # Cyclic blocks save nothing below three blocks.
    acc = _cross_accumulated(x, x, window, gamma, block)
    upper = np.arange(b)[:, None] <= np.arange(b)[None, :]
    return jnp.where(upper, acc, acc.T)   # (a, b) and (b, a) differ in rounding.
  g, h, src_block, src_row, src_col = _pairwise_plan(b, block)
  xa, yb, sched = _prepare(x, x, window)
  c = x.shape[1]
  xs, _ = _blocks(xa, block)                                       # (G, r+L, block, C')
  ybp = jnp.pad(yb, ((0, 0), (0, 0), (0, g * block - b)))          # (c+L, C', G*block)
  ybp = jnp.concatenate([ybp, ybp[:, :, :h * block]], axis=2)       # cyclic partner blocks

  def one(args):
    i, xb = args
    partners = lax.dynamic_slice_in_dim(ybp, i * block, (h + 1) * block, 2)
    return _wavefront(xb, partners, sched, c, gamma)

  out = lax.map(one, (jnp.arange(g), xs))                          # (G, block, (h+1)*block)
  return out[src_block, src_row, src_col]


# --------------------------------------------------------------------------------------------
# The Pallas kernel: when to use it.


def _backend() -> str:
  """The platform of the default backend ('cpu', 'gpu', 'tpu'); a seam for tests."""
  return jax.default_backend()


_fallback_warned = False


@functools.lru_cache(maxsize=None)
def _kernel_works(channels: int, window: Optional[int], lanes: int, anchors: int) -> bool:
  """Whether the kernel compiles, runs and agrees with the XLA program on this backend.

  Checked once per tiling on a small random problem of two stripes with ``channels``-channel
  signals and the same window; any failure (no Pallas GPU lowering in this jax, a compiler
  error, a wrong value) means False, with one warning per process that names it.
  """
  global _fallback_warned
  rng = np.random.default_rng(0)
  length = 2 * lanes + 3
  x = rng.normal(size=(anchors + 1, length, channels)).astype(np.float32)
  y = rng.normal(size=(2, length, channels)).astype(np.float32)

  def both(x, y):
    return (_kernel_accumulated(x, y, window, lanes=lanes, anchors=anchors),
            _cross_accumulated(x, y, window, None, DEFAULT_BLOCK))

  try:
    # Compiled ahead of time and called on NumPy arrays: this runs now, also while an
    # enclosing function is being traced.
    compiled = jax.jit(both).lower(x, y).compile()
    got, want = (np.asarray(v) for v in compiled(x, y))
    err = float(np.max(np.abs(got - want) / want))
    if not err <= 1e-4:
      raise ArithmeticError(f"it differs from the XLA program by {err:.1e} (relative) on a "
                            "probe")
    return True
  except Exception as e:  # pylint: disable=broad-except  # Any failure means: use XLA.
    if not _fallback_warned:
      from ssldml_jax import cli  # pylint: disable=import-outside-toplevel
      _fallback_warned = True
      warnings.warn(f"DTW: the Pallas kernel is not usable on this {_backend()} backend "
                    f"({cli.error_line(e, 300)}); using the XLA program (dtw impl 'auto')",
                    RuntimeWarning, stacklevel=2)
    return False


def _use_kernel(impl: str, x: jax.Array, y: jax.Array, window: Optional[int]) -> bool:
  """Whether ``cross_dtw`` runs the Pallas kernel (see the module docstring)."""
  if impl == "xla":
    return False
  if impl == "pallas":
    return True
  if _backend() != "gpu" or x.dtype != jnp.float32 or y.dtype != jnp.float32:
    return False
  from ssldml_jax import dtw_pallas  # pylint: disable=import-outside-toplevel
  lanes, anchors = dtw_pallas.default_tiling(x.shape[1], y.shape[1], window)
  return _kernel_works(x.shape[2] + 2, window, lanes, anchors)


def _kernel_accumulated(x: jax.Array, y: jax.Array, window: Optional[int], **tiling) -> jax.Array:
  """The Pallas kernel's accumulated costs (interpreted off GPU); ``tiling``: its ``lanes`` and
  ``anchors``, else the default tiling."""
  from ssldml_jax import dtw_pallas  # pylint: disable=import-outside-toplevel
  xa, ya = _augment(x, y)
  return dtw_pallas.cross_accumulated(xa, ya, window=window, interpret=_backend() != "gpu",
                                      **tiling)


# --------------------------------------------------------------------------------------------
# Public functions. They are jitted with their options static (compiled once per shape and
# options when called eagerly; inlined when called inside another jit or pmap).


@functools.partial(jax.jit, static_argnames=("window", "decimate", "block", "impl"))
def cross_dtw(x: jax.Array, y: jax.Array, *, window: Optional[int] = None, decimate: int = 1,
              block: int = DEFAULT_BLOCK, impl: str = "auto") -> jax.Array:
  """DTW distances ``(B, M)`` between ``x (B, T, C)`` and ``y (M, U, C)`` (lengths may differ).

  ``[b, m]`` equals ``dtaidistance.dtw_ndim.distance(x[b], y[m], window=window)`` (see the module
  docstring for ``window`` and ``decimate``). ``block`` anchors (rows of ``x``) are processed
  together by the XLA program; it changes speed and memory, not results. ``impl`` is
  ``'auto'``, ``'xla'`` or ``'pallas'`` (module docstring); the values agree to float32 rounding.
  """
  x, y = _check_signals(x, "x"), _check_signals(y, "y")
  if x.shape[2] != y.shape[2]:
    raise ValueError(f"x and y must have the same number of channels, got x {tuple(x.shape)} "
                     f"and y {tuple(y.shape)}")
  factor = _check_factor(decimate)
  window = decimated_window(_check_window(window), factor)
  block, impl = _check_block(block), _check_impl(impl)
  x, y = _decimate(x, factor), _decimate(y, factor)
  if _use_kernel(impl, x, y, window):
    acc = _kernel_accumulated(x, y, window)
  else:
    acc = _cross_accumulated(x, y, window, None, block)
  return jnp.sqrt(jnp.maximum(acc, 0.0))


@functools.partial(jax.jit, static_argnames=("window", "decimate", "block"))
def pairwise_dtw(x: jax.Array, *, window: Optional[int] = None, decimate: int = 1,
                 block: int = DEFAULT_BLOCK) -> jax.Array:
  """DTW distances ``(B, B)`` between the rows of ``x (B, T, C)``: symmetric, zero diagonal.

  Each unordered pair is computed once (cyclic anchor blocks), so this costs about half of
  ``cross_dtw(x, x)``.
  """
  x = _check_signals(x, "x")
  factor = _check_factor(decimate)
  window = decimated_window(_check_window(window), factor)
  x = _decimate(x, factor)
  acc = _pairwise_accumulated(x, window, None, _check_block(block))
  eye = jnp.eye(x.shape[0], dtype=bool)
  return jnp.where(eye, 0.0, jnp.sqrt(jnp.maximum(acc, 0.0)))


@functools.partial(jax.jit, static_argnames=("gamma", "window", "decimate", "block"))
def cross_soft_dtw(x: jax.Array, y: jax.Array, gamma: float, *, window: Optional[int] = None,
                   decimate: int = 1, block: int = DEFAULT_BLOCK) -> jax.Array:
  """Soft-DTW values ``(B, M)`` (Cuturi and Blondel, 2017): no square root, not a divergence.

  The recursion is DTW's with ``min`` replaced by ``softmin_gamma(a) = -gamma log sum exp(-a /
  gamma)`` on the squared Euclidean local cost; the value can be negative and tends to the
  squared DTW distance (``cross_dtw ** 2``) as ``gamma -> 0``.
  """
  x, y = _check_signals(x, "x"), _check_signals(y, "y")
  if x.shape[2] != y.shape[2]:
    raise ValueError(f"x and y must have the same number of channels, got x {tuple(x.shape)} "
                     f"and y {tuple(y.shape)}")
  gamma = _check_gamma(gamma)
  factor = _check_factor(decimate)
  window = decimated_window(_check_window(window), factor)
  x, y = _decimate(x, factor), _decimate(y, factor)
  return _cross_accumulated(x, y, window, gamma, _check_block(block))


@functools.partial(jax.jit,
                   static_argnames=("gamma", "window", "divergence", "decimate", "block"))
def pairwise_soft_dtw(x: jax.Array, gamma: float, *, window: Optional[int] = None,
                      divergence: bool = False, decimate: int = 1,
                      block: int = DEFAULT_BLOCK) -> jax.Array:
  """Soft-DTW ``(B, B)`` between the rows of ``x``: the plain value (see ``cross_soft_dtw``).

  With ``divergence=True`` returns the soft-DTW divergence of Blondel, Mensch and Vert (2021),
  ``S(a, b) - (S(a, a) + S(b, b)) / 2``: symmetric, zero on the diagonal, non-negative, and a
  better mining distance than the plain value (whose diagonal is negative and not minimal).
  """
  x = _check_signals(x, "x")
  gamma = _check_gamma(gamma)
  factor = _check_factor(decimate)
  window = decimated_window(_check_window(window), factor)
  x = _decimate(x, factor)
  s = _pairwise_accumulated(x, window, gamma, _check_block(block))
  if not divergence:
    return s
  self_terms = jnp.diagonal(s)
  d = s - 0.5 * (self_terms[:, None] + self_terms[None, :])
  return jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, d)


@functools.partial(jax.jit, static_argnames=("decimate",))
def cross_euclidean_raw(x: jax.Array, y: jax.Array, *, decimate: int = 1) -> jax.Array:
  """Euclidean distances ``(B, M)`` between the flattened signals of ``x`` and ``y``.

  Computed from a Gram matrix of signals centred on ``y``'s mean (one matmul at HIGHEST
  precision), clamped at 0 before the square root.
  """
  x, y = _check_signals(x, "x"), _check_signals(y, "y")
  if x.shape[1:] != y.shape[1:]:
    raise ValueError(f"x and y must have the same (time, channels), got x {tuple(x.shape)} "
                     f"and y {tuple(y.shape)}")
  factor = _check_factor(decimate)
  x, y = _decimate(x, factor), _decimate(y, factor)
  mu = jnp.mean(y, axis=0)
  xf = (x - mu).reshape(x.shape[0], -1)
  yf = (y - mu).reshape(y.shape[0], -1)
  sq = (jnp.sum(xf * xf, -1)[:, None] + jnp.sum(yf * yf, -1)[None, :]
        - 2.0 * jnp.dot(xf, yf.T, precision=_HIGHEST))
  return jnp.sqrt(jnp.maximum(sq, 0.0))


@functools.partial(jax.jit, static_argnames=("decimate",))
def pairwise_euclidean_raw(x: jax.Array, *, decimate: int = 1) -> jax.Array:
  """Euclidean distances ``(B, B)`` between flattened signals: symmetric, zero diagonal."""
  d = cross_euclidean_raw(x, x, decimate=decimate)
  d = 0.5 * (d + d.T)
  return jnp.where(jnp.eye(d.shape[0], dtype=bool), 0.0, d)
