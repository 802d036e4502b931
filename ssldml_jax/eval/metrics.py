"""Evaluation metrics in NumPy, batched over weight vectors so that bootstraps are one call.

Every ``*_batch`` function takes the labels ``y`` (n,), the predictions ``score`` (n,) and a
weight matrix ``weights`` (R, n) and returns R values. Row r is the metric of the data set in
which example i appears ``weights[r, i]`` times, so

- ``weights = ones((1, n))`` gives the ordinary (point) value,
- a bootstrap resample is a row of integer counts (a patient drawn twice doubles its ECGs),
- a subgroup is a 0/1 row.

Integer weights give exactly the value of the data set with the rows repeated, the same as
scikit-learn with ``sample_weight``. A metric that is undefined on a row (AUROC with one class,
Pearson r with a constant input) returns NaN for that row rather than a made-up number; callers
count those rows (see ``bootstrap.py``).

Ties in the scores are handled like scikit-learn: AUROC counts a tied positive/negative pair as
one half (the trapezoid under the ROC curve), and average precision moves through tied scores as
one threshold.

Thresholds. F1, accuracy, sensitivity, specificity, PPV and NPV need a decision threshold; it is chosen on
the VALIDATION split with ``choose_threshold`` (maximum F1 by default, or Youden's J) and then
applied unchanged to the test split. A positive prediction is ``score >= threshold``.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import numpy as np

# (y, score, weights (R, n)) -> (R,) values; NaN where undefined.
MetricFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

CLASSIFICATION_METRICS = ("auroc", "auprc", "f1", "accuracy", "sensitivity", "specificity", "ppv",
                          "npv")
REGRESSION_METRICS = ("rmse", "mae", "pearson_r")


# ----------------------------------------------------------------------------- input checks


def check_scores(name: str, x, n: Optional[int] = None) -> np.ndarray:
  """A finite float vector (of length ``n`` if given); the message names the argument."""
  x = np.asarray(x, dtype=np.float64)
  if x.ndim != 1:
    raise ValueError(f"{name}: expected a 1-D array, got shape {x.shape}")
  if n is not None and x.shape[0] != n:
    raise ValueError(f"{name}: has {x.shape[0]} entries, expected {n}")
  bad = np.flatnonzero(~np.isfinite(x))
  if bad.size:
    raise ValueError(f"{name}: {bad.size} non-finite value(s) (NaN/inf), first at index {bad[0]}")
  return x


def check_binary(name: str, y, n: Optional[int] = None) -> np.ndarray:
  """Labels that are exactly 0/1 (or bool), as a bool vector."""
  y = np.asarray(y)
  if y.ndim != 1:
    raise ValueError(f"{name}: expected a 1-D array, got shape {y.shape}")
  if n is not None and y.shape[0] != n:
    raise ValueError(f"{name}: has {y.shape[0]} entries, expected {n}")
  if y.dtype != bool:
    bad = np.flatnonzero((y != 0) & (y != 1))
    if bad.size:
      raise ValueError(f"{name}: labels must be 0/1; found {y[bad[:1]].tolist()[0]!r} at index "
                       f"{bad[0]} ({bad.size} such value(s))")
  return y.astype(bool)


def weight_rows(weights, n: int) -> np.ndarray:
  """``weights`` as the (R, n) float64 matrix of the module docstring: None is one row of ones,
  a vector one row; any other shape is a ``ValueError``."""
  if weights is None:
    return np.ones((1, n))
  w = np.asarray(weights, dtype=np.float64)
  if w.ndim == 1:
    w = w[None]
  if w.ndim != 2 or w.shape[1] != n:
    raise ValueError(f"weights: expected shape (R, {n}), got {np.shape(weights)}")
  return w


def nan_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  """num / den with NaN (undefined) where den == 0."""
  out = np.full(np.broadcast(num, den).shape, np.nan)
  np.divide(num, den, out=out, where=den != 0)
  return out


def _tie_groups(sorted_scores: np.ndarray) -> np.ndarray:
  """Start index of each run of equal values in a sorted vector."""
  return np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])


def _counts_above(y: np.ndarray, score: np.ndarray):
  """Each distinct score (decreasing) with the true and false positives of ``score >= it``."""
  order = np.argsort(-score, kind="stable")
  s, yo = score[order], y[order]
  ends = np.r_[_tie_groups(s)[1:], s.size] - 1
  return s[ends], np.cumsum(yo)[ends], np.cumsum(~yo)[ends]


# ----------------------------------------------------------------------- ranking metrics


def auroc_batch(y, score, weights) -> np.ndarray:
  """Area under the ROC curve per weight row (Mann-Whitney U / (P N), ties count one half)."""
  score = check_scores("score", score)
  y = check_binary("y", y, score.size)
  w = weight_rows(weights, score.size)
  order = np.argsort(score, kind="stable")
  starts = _tie_groups(score[order])
  yo, wo = y[order], w[:, order]
  pos = np.add.reduceat(wo * yo, starts, axis=1)
  neg = np.add.reduceat(wo * ~yo, starts, axis=1)
  neg_below = np.cumsum(neg, axis=1) - neg
  u = np.sum(pos * (neg_below + 0.5 * neg), axis=1)
  return nan_divide(u, pos.sum(axis=1) * neg.sum(axis=1))


def average_precision_batch(y, score, weights) -> np.ndarray:
  """Average precision (AUPRC as scikit-learn defines it: sum over thresholds of dRecall x P)."""
  score = check_scores("score", score)
  y = check_binary("y", y, score.size)
  w = weight_rows(weights, score.size)
  order = np.argsort(-score, kind="stable")
  starts = _tie_groups(score[order])
  yo, wo = y[order], w[:, order]
  tp = np.add.reduceat(wo * yo, starts, axis=1)
  fp = np.add.reduceat(wo * ~yo, starts, axis=1)
  ctp, cfp = np.cumsum(tp, axis=1), np.cumsum(fp, axis=1)
  # A threshold that admits no weight yet has 0/0 precision but also adds no recall.
  precision = np.nan_to_num(nan_divide(ctp, ctp + cfp))
  return nan_divide(np.sum(tp * precision, axis=1), ctp[:, -1])


def auroc(y, score) -> float:
  return float(auroc_batch(y, score, None)[0])


def average_precision(y, score) -> float:
  return float(average_precision_batch(y, score, None)[0])


def roc_curve(y, score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(fpr, tpr, thresholds) at every distinct score, starting from (0, 0) at +inf."""
  score = check_scores("score", score)
  y = check_binary("y", y, score.size)
  thresholds, tps, fps = _counts_above(y, score)
  p, n = max(tps[-1], 1), max(fps[-1], 1)
  return (np.r_[0.0, fps / n], np.r_[0.0, tps / p], np.r_[np.inf, thresholds])


def pr_curve(y, score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(precision, recall, thresholds) ordered like scikit-learn's ``precision_recall_curve``:
  thresholds increasing (recall decreasing), then a last point (precision 1, recall 0)."""
  score = check_scores("score", score)
  y = check_binary("y", y, score.size)
  thresholds, tps, fps = _counts_above(y, score)
  precision = tps / (tps + fps)
  recall = tps / max(tps[-1], 1)
  return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


# ---------------------------------------------------------------- thresholded classification


def choose_threshold(y_val, score_val, criterion: str = "f1") -> float:
  """Decision threshold that maximises ``criterion`` ('f1' or 'youden') on the validation split.

  Candidates are the distinct validation scores (predict positive when ``score >= t``). The
  returned value is the midpoint between the best candidate and the next lower distinct score,
  which gives the same validation predictions but does not sit on a validation example; when the
  best rule predicts every example positive it is the lowest score. Ties between candidates go to
  the highest threshold.
  """
  score = check_scores("score_val", score_val)
  y = check_binary("y_val", y_val, score.size)
  if y.all() or not y.any():
    raise ValueError("y_val: the validation labels hold one class only; a threshold cannot be "
                     "chosen")
  if criterion not in ("f1", "youden"):
    raise ValueError(f"criterion={criterion!r} is not allowed; choose 'f1' or 'youden'")
  candidates, tp, fp = _counts_above(y, score)
  p, n = tp[-1], fp[-1]
  if criterion == "f1":
    value = 2.0 * tp / (tp + fp + p)   # 2TP / (2TP + FP + FN) with FN = P - TP.
  else:
    value = tp / p - fp / n
  best = int(np.argmax(value))
  if best + 1 < candidates.size:
    return float(0.5 * (candidates[best] + candidates[best + 1]))
  return float(candidates[best])


def _confusion(y, score, weights, threshold: float):
  score = check_scores("score", score)
  y = check_binary("y", y, score.size)
  w = weight_rows(weights, score.size)
  pred = score >= threshold
  return (w @ (y & pred), w @ (~y & pred), w @ (y & ~pred), w @ (~y & ~pred))


def f1_batch(y, score, weights, *, threshold: float) -> np.ndarray:
  tp, fp, fn, _ = _confusion(y, score, weights, threshold)
  return nan_divide(2.0 * tp, 2.0 * tp + fp + fn)


def accuracy_batch(y, score, weights, *, threshold: float) -> np.ndarray:
  tp, fp, fn, tn = _confusion(y, score, weights, threshold)
  return nan_divide(tp + tn, tp + fp + fn + tn)


def _share(y, score, weights, threshold: float, part: str, rest: str) -> np.ndarray:
  """``part / (part + rest)`` of the confusion counts ('tp', 'fp', 'fn', 'tn')."""
  counts = dict(zip(("tp", "fp", "fn", "tn"), _confusion(y, score, weights, threshold)))
  return nan_divide(counts[part], counts[part] + counts[rest])


def sensitivity_batch(y, score, weights, *, threshold: float) -> np.ndarray:
  """TP / (TP + FN)."""
  return _share(y, score, weights, threshold, "tp", "fn")


def specificity_batch(y, score, weights, *, threshold: float) -> np.ndarray:
  """TN / (TN + FP)."""
  return _share(y, score, weights, threshold, "tn", "fp")


def ppv_batch(y, score, weights, *, threshold: float) -> np.ndarray:
  """Positive predictive value (precision): TP / (TP + FP); NaN when nothing is called positive."""
  return _share(y, score, weights, threshold, "tp", "fp")


def npv_batch(y, score, weights, *, threshold: float) -> np.ndarray:
  """Negative predictive value: TN / (TN + FN); NaN when nothing is called negative."""
  return _share(y, score, weights, threshold, "tn", "fn")


def majority_accuracy_batch(y, score, weights) -> np.ndarray:
  """Accuracy of always answering the majority class of each weight row (ignores ``score``):
  the floor a thresholded classifier's accuracy must be read against."""
  y = check_binary("y", y)
  w = weight_rows(weights, y.size)
  positive = w @ y
  return nan_divide(np.maximum(positive, w.sum(axis=1) - positive), w.sum(axis=1))


def classification_metrics(threshold: float,
                           names: Sequence[str] = CLASSIFICATION_METRICS) -> dict[str, MetricFn]:
  """The binary-task metrics as batch functions, thresholded metrics fixed at ``threshold``."""
  every = {
      "auroc": auroc_batch,
      "auprc": average_precision_batch,
      "f1": lambda y, s, w: f1_batch(y, s, w, threshold=threshold),
      "accuracy": lambda y, s, w: accuracy_batch(y, s, w, threshold=threshold),
      "sensitivity": lambda y, s, w: sensitivity_batch(y, s, w, threshold=threshold),
      "specificity": lambda y, s, w: specificity_batch(y, s, w, threshold=threshold),
      "ppv": lambda y, s, w: ppv_batch(y, s, w, threshold=threshold),
      "npv": lambda y, s, w: npv_batch(y, s, w, threshold=threshold),
  }
  return select(every, names)


# ------------------------------------------------------------------------------ regression


def rmse_batch(y, pred, weights) -> np.ndarray:
  pred = check_scores("pred", pred)
  y = check_scores("y", y, pred.size)
  w = weight_rows(weights, pred.size)
  return np.sqrt(nan_divide(w @ (pred - y) ** 2, w.sum(axis=1)))


def mae_batch(y, pred, weights) -> np.ndarray:
  pred = check_scores("pred", pred)
  y = check_scores("y", y, pred.size)
  w = weight_rows(weights, pred.size)
  return nan_divide(w @ np.abs(pred - y), w.sum(axis=1))


def pearson_r_batch(y, pred, weights) -> np.ndarray:
  """Weighted Pearson correlation (centred per row, so large offsets do not cancel digits)."""
  pred = check_scores("pred", pred)
  y = check_scores("y", y, pred.size)
  w = weight_rows(weights, pred.size)
  total = w.sum(axis=1, keepdims=True)
  safe = np.where(total > 0, total, 1.0)
  yc = y - (w @ y)[:, None] / safe
  pc = pred - (w @ pred)[:, None] / safe
  cov = np.sum(w * yc * pc, axis=1)
  var = np.sum(w * yc * yc, axis=1) * np.sum(w * pc * pc, axis=1)
  # A constant input has zero variance up to rounding; treat tiny variances as zero.
  scale = np.sum(w * (yc * yc + pc * pc), axis=1)
  var = np.where(var > (1e-12 * scale) ** 2, var, 0.0)
  return np.clip(nan_divide(cov, np.sqrt(var)), -1.0, 1.0)


def regression_metrics(names: Sequence[str] = REGRESSION_METRICS) -> dict[str, MetricFn]:
  every = {"rmse": rmse_batch, "mae": mae_batch, "pearson_r": pearson_r_batch}
  return select(every, names)


def rmse(y, pred) -> float:
  return float(rmse_batch(y, pred, None)[0])


def mae(y, pred) -> float:
  return float(mae_batch(y, pred, None)[0])


def pearson_r(y, pred) -> float:
  return float(pearson_r_batch(y, pred, None)[0])


def select(every: Mapping[str, MetricFn], names: Sequence[str]) -> dict[str, MetricFn]:
  """The metrics ``names`` of ``every``, in that order; an unknown name is a ``ValueError``."""
  unknown = [n for n in names if n not in every]
  if unknown:
    raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(every)}")
  return {n: every[n] for n in names}


# --------------------------------------------------------------------------- calibration


def calibration_curve(y, prob, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(observed frequency, mean predicted probability, count) per non-empty uniform bin of [0, 1].

  Bin edges follow scikit-learn's 'uniform' strategy (a value on an inner edge falls in the
  lower bin).
  """
  prob = check_scores("prob", prob)
  y = check_binary("y", y, prob.size)
  if prob.min() < 0.0 or prob.max() > 1.0:
    raise ValueError("prob: values outside [0, 1]; pass probabilities, not logits")
  edges = np.linspace(0.0, 1.0, n_bins + 1)
  ids = np.searchsorted(edges[1:-1], prob)
  count = np.bincount(ids, minlength=n_bins)
  keep = count > 0
  observed = np.bincount(ids, weights=y, minlength=n_bins)[keep] / count[keep]
  predicted = np.bincount(ids, weights=prob, minlength=n_bins)[keep] / count[keep]
  return observed, predicted, count[keep]


# -------------------------------------------------------------------- embedding metrics


def recall_at_k(embeddings, labels, ks: Sequence[int] = (1, 5, 10), *,
                tolerance: Optional[float] = None, exclude_groups=None,
                chunk: int = 1024) -> dict[int, float]:
  """Fraction of queries with at least one relevant item among their k nearest neighbours.

  Each example is a query against all the others (itself excluded), neighbours ranked by
  Euclidean distance in the embedding (ties broken by index). "Relevant" means the same class
  when ``tolerance`` is None, otherwise ``|label_i - label_j| <= tolerance`` (mPCWP in mmHg).
  With ``exclude_groups`` (e.g. patient ids) a query never sees items of its own group, so a
  patient's other ECGs do not count as easy hits. Queries that have no relevant item among the
  candidates cannot score and are left out of the average.
  """
  x = np.asarray(embeddings, dtype=np.float64)
  if x.ndim != 2:
    raise ValueError(f"embeddings: expected shape (n, d), got {x.shape}")
  n = x.shape[0]
  if not np.isfinite(x).all():
    raise ValueError("embeddings: non-finite values (NaN/inf)")
  labels = np.asarray(labels)
  if labels.shape != (n,):
    raise ValueError(f"labels: expected shape ({n},), got {labels.shape}")
  if tolerance is None and labels.dtype.kind == "f" and np.isnan(labels).any():
    raise ValueError("labels: NaN labels")
  groups = None if exclude_groups is None else np.asarray(exclude_groups)
  if groups is not None and groups.shape != (n,):
    raise ValueError(f"exclude_groups: expected shape ({n},), got {groups.shape}")
  ks = sorted(set(int(k) for k in ks))
  if not ks or ks[0] < 1:
    raise ValueError(f"ks: expected positive integers, got {ks}")
  kmax = min(ks[-1], n - 1)
  sq = np.sum(x * x, axis=1)
  hits = {k: 0 for k in ks}
  valid = 0
  for lo in range(0, n, chunk):
    idx = np.arange(lo, min(lo + chunk, n))
    dist = sq[idx, None] + sq[None, :] - 2.0 * x[idx] @ x.T
    excluded = idx[:, None] == np.arange(n)[None, :]
    if groups is not None:
      excluded |= groups[idx, None] == groups[None, :]
    dist[excluded] = np.inf
    if tolerance is None:
      relevant = labels[idx, None] == labels[None, :]
    else:
      relevant = np.abs(labels[idx, None] - labels[None, :]) <= tolerance
    relevant &= ~excluded
    has_relevant = relevant.any(axis=1)
    # Stable sort on distance then index, so ties resolve the same way as a brute-force loop.
    nearest = np.argsort(dist, axis=1, kind="stable")[:, :kmax]
    hit = np.take_along_axis(relevant, nearest, axis=1)
    first_hit = np.where(hit.any(axis=1), np.argmax(hit, axis=1), kmax)
    for k in ks:
      hits[k] += int(np.sum((first_hit < k) & has_relevant))
    valid += int(has_relevant.sum())
  if valid == 0:
    raise ValueError("recall_at_k: no query has a relevant item among the candidates")
  return {k: hits[k] / valid for k in ks}


def nmi(embeddings, labels, *, n_clusters: Optional[int] = None, seed: int = 0) -> float:
  """Normalised mutual information between k-means clusters of the embedding and ``labels``.

  k-means (scikit-learn, 10 restarts, seeded) uses as many clusters as there are classes unless
  ``n_clusters`` is given; NMI uses the arithmetic-mean normalisation. For mPCWP, pass the binary
  label or binned pressures.
  """
  from sklearn.cluster import KMeans  # Imported here: only this metric needs it.
  from sklearn.metrics import normalized_mutual_info_score

  x = np.asarray(embeddings, dtype=np.float64)
  labels = np.asarray(labels)
  if x.ndim != 2 or labels.shape != (x.shape[0],):
    raise ValueError(f"nmi: embeddings {x.shape} and labels {labels.shape} do not match")
  k = n_clusters or np.unique(labels).size
  clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
  return float(normalized_mutual_info_score(labels, clusters))
