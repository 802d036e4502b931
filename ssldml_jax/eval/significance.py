"""Differences of metrics with bootstrap intervals and p-values, and Holm's adjustment.

A difference is read from bootstrap replicates of the two values:

- **paired** (two methods scored on the same test patients): both values are computed on the
  SAME patient resamples (``bootstrap.resample_values`` with one seed), so the replicates of the
  difference keep the correlation between the methods;
- **independent** (two disjoint groups of patients): each group is resampled on its own, with its
  own seed, so the replicates of the two values are independent.

The interval is the percentile interval of the replicated differences
(``bootstrap.percentile_interval``; resamples on which either value is undefined are skipped and
counted). The two-sided p-value of "no difference" is that of the z statistic ``d / se``, ``se``
the standard deviation of the replicated differences (the bootstrap standard error; normal
approximation, as DeLong's test). A percentile p-value,
``2 min(#{d* <= 0}, #{d* >= 0}) / R``, cannot go below ``2 / (R + 1)``: 0.002 at R = 1000, which
Holm's adjustment over a table of 100 comparisons turns into 0.2, so no difference could ever
hold. When the replicates are close to normal the two agree: the interval excludes 0 about when
p < 1 - level.

``holm`` adjusts a family of p-values for multiple comparisons (Holm 1979): it controls the
family-wise error rate under any dependence between the tests.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from ssldml_jax.eval import bootstrap


@dataclasses.dataclass(frozen=True)
class Difference:
  """``value_a - value_b`` on the test set with its bootstrap interval and p-value."""
  value_a: float
  value_b: float
  difference: float
  low: float
  high: float
  p_value: float
  n_resamples: int
  n_undefined: int = 0
  level: float = 0.95


def difference(point_a: float, values_a: np.ndarray, point_b: float, values_b: np.ndarray, *,
               level: float = 0.95) -> Difference:
  """The difference of two values from their bootstrap replicates (paired or independent: the
  caller decides by how ``values_a`` and ``values_b`` were drawn; see the module docstring)."""
  values_a, values_b = np.asarray(values_a, np.float64), np.asarray(values_b, np.float64)
  if values_a.shape != values_b.shape or values_a.ndim != 1:
    raise ValueError(f"replicates of shape {values_a.shape} and {values_b.shape}; expected two "
                     "vectors of the same length")
  d = values_a - values_b
  low, high, defined = bootstrap.percentile_interval(d, level)
  point = float(point_a) - float(point_b)
  if defined.size and math.isfinite(point):
    p = wald_p(point, float(np.std(defined, ddof=1)) if defined.size > 1 else 0.0)
  else:
    low = high = p = math.nan
  return Difference(value_a=float(point_a), value_b=float(point_b), difference=point,
                    low=float(low), high=float(high), p_value=float(p), n_resamples=int(d.size),
                    n_undefined=int(d.size - defined.size), level=level)


def wald_p(estimate: float, se: float) -> float:
  """Two-sided p-value of ``estimate / se`` under the standard normal; a zero ``se`` gives 1
  for a zero estimate and 0 otherwise."""
  if se > 0:
    return math.erfc(abs(estimate / se) / math.sqrt(2.0))
  return 1.0 if estimate == 0 else 0.0


def holm(p_values: Sequence[float]) -> np.ndarray:
  """Holm-adjusted p-values in the input order; NaN entries stay NaN and are not counted.

  Sorted ascending, the i-th of m p-values (i from 0) becomes ``min(1, (m - i) p_(i))``, made
  non-decreasing along the order; a test is rejected at level alpha when its adjusted value is
  below alpha.
  """
  p = np.asarray(p_values, np.float64).reshape(-1)
  out = np.full(p.shape, np.nan)
  known = np.flatnonzero(np.isfinite(p))
  if known.size == 0:
    return out
  if np.any((p[known] < 0) | (p[known] > 1)):
    raise ValueError(f"p-values must lie in [0, 1]; got {p[known].min()} .. {p[known].max()}")
  order = known[np.argsort(p[known], kind="stable")]
  m = order.size
  scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
  out[order] = np.maximum.accumulate(scaled)
  return out
