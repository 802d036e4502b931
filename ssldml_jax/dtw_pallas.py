"""The DTW dynamic program as one Pallas kernel launch (GPU; Pallas interpret mode elsewhere).

``cross_accumulated(xa, ya, window=...)`` returns the minimal accumulated cost of every (anchor,
partner) pair, for the augmented signals of ``ssldml_jax.dtw`` (whose ``cross_dtw(...,
impl='pallas')`` calls it): the local cost of cells ``(i, j)`` is ``max(xa[b, i] . ya[m, j], 0)``,
the squared Euclidean distance between the sample vectors, and ``window`` is dtaidistance's
Sakoe-Chiba band (see the ``dtw`` module docstring). Values equal the XLA path's up to float32
rounding of the dot products.

How it runs. One program per (block of ``anchors`` anchors, one partner); a program's ``lanes``
threads each own one row ``i`` of the DTW table of every anchor in the block. The table is cut
into horizontal stripes of ``lanes`` rows, and a stripe is swept as a skewed wavefront: at step
``s`` lane ``l`` updates cell ``(i0 + l, lo + s - l)``, so the lanes of one step hold one
anti-diagonal of the stripe. What each lane needs:

- its anchors' sample vectors ``xa[i]``: loaded once per stripe and kept in registers;
- the partner's sample ``ya[j]``: one coalesced load per step, shared by the block's anchors;
- ``D[i, j - 1]`` (its own value at the previous step) and ``D[i - 1, j - 1]`` (its upper
  neighbour's value two steps ago, which it read at the previous step): kept in registers;
- ``D[i - 1, j]``: its upper neighbour's value at the previous step, the one value that crosses
  lanes, through a small exchange buffer (two copies by step parity, one barrier per step).

Lane 0's upper neighbour is the stripe's boundary row, ``D[i0 - 1, :]``, kept per anchor in a row
buffer that the stripe's last lane overwrites for the next stripe. The padding rows after row
``r - 1`` (stripes are whole) copy the row above, so the last stripe's last lane leaves
``D[r - 1, c - 1]`` in the row buffer. Cells outside the band or the table are +inf; a stripe
only sweeps the columns its rows' band can reach, so a band of half-width ``w`` costs about
``T (2w + 2 lanes)`` lane-steps, not ``T^2`` (a full table about ``T (T + lanes)``).

Memory is O(pairs x (c + lanes)) for the row and exchange buffers (extra outputs of the call,
discarded), never ``r x c`` per pair. Triton programs have no shared memory that Pallas exposes,
so the exchange goes through global memory, which the L1/L2 caches serve; the barrier is
Triton's ``debug_barrier`` (a CTA-wide ``bar.sync``, which also orders those memory accesses).
In interpret mode (CPU tests) a program runs as whole-array operations and needs no barrier.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

LANE_CHOICES = (32, 64, 128, 256)   # threads per program: whole warps.
ANCHOR_CHOICES = (1, 2, 4, 8)


def default_tiling(r: int, c: int, window: Optional[int]) -> tuple[int, int]:
  """(lanes, anchors) for an ``r x c`` table: narrow stripes for narrow bands.

  A stripe of ``lanes`` rows sweeps ``lanes + band width`` columns, so the lanes should not be
  much wider than the band; full tables take 128 lanes (4 warps) and 4 anchors per program.
  """
  width = min(r, c) if window is None else min(min(r, c), 2 * window - 1)
  lanes = 32
  while lanes < 128 and 2 * lanes <= width:
    lanes *= 2
  return lanes, 4


def _band_offsets(r: int, c: int, window: Optional[int]) -> tuple[int, int]:
  """(lo, hi): cell (i, j) is inside dtaidistance's band iff ``i + lo <= j <= i + hi``."""
  w = max(r, c) if window is None else window
  return -(max(0, r - c) + w - 1), max(0, c - r) + w - 1


def _barrier(interpret: bool) -> None:
  if not interpret:
    from jax.experimental.pallas import triton as pltriton  # pylint: disable=import-outside-toplevel
    pltriton.debug_barrier()


def _kernel(x_ref, y_ref, out_ref, ex_ref, row_ref, *, r: int, c: int, lo_off: int, hi_off: int,
            lanes: int, anchors: int, channels: int, num_partners: int, interpret: bool):
  """One program: anchors ``a0 .. a0 + anchors`` against partner ``m``."""
  f32 = jnp.float32
  inf = f32(jnp.inf)
  ab, m = pl.program_id(0), pl.program_id(1)
  g = ab * num_partners + m
  a0 = ab * anchors
  lane = lax.broadcasted_iota(jnp.int32, (lanes,), 0)
  infs = jnp.full((lanes,), inf, f32)
  row_len = row_ref.shape[2]
  junk = row_len - 1        # a row-buffer slot that nothing reads.

  def init_rows(k, carry):
    for p in range(anchors):
      row_ref[g, p, pl.ds(k * lanes, lanes)] = infs
    return carry
  lax.fori_loop(0, row_len // lanes, init_rows, 0)
  _barrier(interpret)

  def stripe(q, carry):
    i0 = q * lanes
    rows = i0 + lane
    lo = jnp.maximum(0, i0 + lo_off)
    hi = jnp.minimum(c - 1, jnp.minimum(i0 + lanes - 1, r - 1) + hi_off)
    num_steps = hi - lo + lanes
    xs = [[x_ref[a0 + p, k, pl.ds(i0, lanes)] for k in range(channels)] for p in range(anchors)]
    lefts, diags = [], []
    for p in range(anchors):
      ex_ref[g, 0, p, pl.ds(1, lanes)] = infs
      ex_ref[g, 0, p, 0] = row_ref[g, p, lo]
      # D[i0 - 1, lo - 1] for lane 0; the empty prefix (cost 0) before cell (0, 0).
      corner = jnp.where(lo > 0, row_ref[g, p, jnp.maximum(lo - 1, 0)],
                         jnp.where(q == 0, f32(0.0), inf))
      lefts.append(infs)
      diags.append(jnp.where(lane == 0, corner, inf))
    _barrier(interpret)

    def step(s, carry):
      lefts, diags = carry
      par = lax.rem(s, 2)
      j = lo + s - lane
      live = ((rows < r) & (j >= 0) & (j < c) & (j >= rows + lo_off) & (j <= rows + hi_off))
      ystart = lanes + c - 1 - lo - s       # y is time-reversed and padded by ``lanes``.
      ups = [ex_ref[g, par, p, pl.ds(0, lanes)] for p in range(anchors)]
      ys = [y_ref[m, k, pl.ds(ystart, lanes)] for k in range(channels)]
      # The previous step's last lane finished a cell of row i0 + lanes - 1: keep it for the
      # next stripe. Lane 0's next upper neighbour is read from the row buffer.
      last_col = lo + s - lanes
      # Arithmetic rather than jnp.where: jax 0.11's Triton lowering of select_n mistypes an
      # integer literal branch as a boolean, which the GPU compiler then rejects.
      keep = ((s > 0) & (last_col >= 0) & (last_col < c)).astype(jnp.int32)
      slot = junk + keep * (last_col - junk)
      new_lefts, new_diags = [], []
      for p in range(anchors):
        row_ref[g, p, slot] = ex_ref[g, par, p, lanes]
        next_up0 = row_ref[g, p, lo + s + 1]
        cost = xs[p][0] * ys[0]
        for k in range(1, channels):
          cost = cost + xs[p][k] * ys[k]
        best = jnp.minimum(jnp.minimum(ups[p], lefts[p]), diags[p])
        val = jnp.where(live, jnp.maximum(cost, 0.0) + best, inf)
        val = jnp.where(rows >= r, ups[p], val)   # padding rows carry D[r - 1, :] down.
        ex_ref[g, 1 - par, p, pl.ds(1, lanes)] = val
        ex_ref[g, 1 - par, p, 0] = next_up0
        new_lefts.append(val)
        new_diags.append(ups[p])
      _barrier(interpret)
      return new_lefts, new_diags

    lax.fori_loop(0, num_steps, step, (lefts, diags))
    for p in range(anchors):   # The last step's last lane, at column hi.
      row_ref[g, p, hi] = ex_ref[g, lax.rem(num_steps, 2), p, lanes]
    _barrier(interpret)
    return carry

  num_stripes = -(-r // lanes)
  lax.fori_loop(0, num_stripes, stripe, 0)
  for p in range(anchors):
    out_ref[a0 + p, m] = row_ref[g, p, c - 1]


def _check_tiling(lanes: int, anchors: int) -> None:
  if lanes not in LANE_CHOICES:
    raise ValueError(f"lanes must be one of {LANE_CHOICES}, got {lanes!r}")
  if anchors not in ANCHOR_CHOICES:
    raise ValueError(f"anchors must be one of {ANCHOR_CHOICES}, got {anchors!r}")


@functools.partial(jax.jit, static_argnames=("window", "lanes", "anchors", "interpret"))
def cross_accumulated(xa: jax.Array, ya: jax.Array, *, window: Optional[int] = None,
                      lanes: Optional[int] = None, anchors: Optional[int] = None,
                      interpret: bool = False) -> jax.Array:
  """Minimal accumulated cost ``(B, M)`` between augmented signals ``xa (B, r, C')`` and
  ``ya (M, c, C')`` (float32), with ``window`` already checked (None or >= 1).

  ``lanes`` (threads per program) and ``anchors`` (anchors per program) change speed, not
  values; None picks ``default_tiling``. ``interpret=True`` runs the kernel through Pallas'
  interpreter (any backend; slow, for tests).
  """
  b, r, ch = xa.shape
  mm, c, _ = ya.shape
  dl, da = default_tiling(r, c, window)
  lanes, anchors = lanes or dl, anchors or da
  _check_tiling(lanes, anchors)
  anchors = min(anchors, 1 << (b - 1).bit_length())   # no more padding anchors than anchors.
  lo_off, hi_off = _band_offsets(r, c, window)
  nb = -(-b // anchors)
  num_stripes = -(-r // lanes)
  # Channel-major, time-padded signals: rows of the anchors up to whole stripes; the partner
  # time-reversed with ``lanes`` samples of padding on either side, so that every load of a
  # step is in bounds (interpret mode clamps out-of-bounds slices instead of failing).
  x = jnp.pad(xa.astype(jnp.float32).transpose(0, 2, 1),
              ((0, nb * anchors - b), (0, 0), (0, num_stripes * lanes - r)))
  y = jnp.pad(ya.astype(jnp.float32)[:, ::-1].transpose(0, 2, 1),
              ((0, 0), (0, 0), (lanes, lanes)))
  row_len = lanes * (-(-(c + lanes + 1) // lanes))
  num_programs = nb * mm
  kernel = functools.partial(_kernel, r=r, c=c, lo_off=lo_off, hi_off=hi_off, lanes=lanes,
                             anchors=anchors, channels=ch, num_partners=mm, interpret=interpret)
  out_shape = (jax.ShapeDtypeStruct((nb * anchors, mm), jnp.float32),
               jax.ShapeDtypeStruct((num_programs, 2, anchors, lanes + 1), jnp.float32),
               jax.ShapeDtypeStruct((num_programs, anchors, row_len), jnp.float32))
  params = {}
  if not interpret:
    from jax.experimental.pallas import triton as pltriton  # pylint: disable=import-outside-toplevel
    params["compiler_params"] = pltriton.CompilerParams(num_warps=lanes // 32, num_stages=1)
  out, _, _ = pl.pallas_call(kernel, out_shape=out_shape, grid=(nb, mm), interpret=interpret,
                             name="ssldml_dtw", **params)(x, y)
  return out[:b]
