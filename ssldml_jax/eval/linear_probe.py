"""Linear probes on frozen embeddings.

Protocol (the same for every encoder, so that rows of a table are comparable):

- Embeddings are standardised with the mean and standard deviation of the TRAINING split only
  (a dimension with zero variance there keeps scale 1, so a dead unit stays zero rather than
  becoming NaN).
- Binary target (mPCWP > 18): L2-regularised logistic regression (scikit-learn, lbfgs). The
  inverse strength C is chosen from a grid by validation AUROC; ties go to the smaller C
  (stronger regularisation). Scores are probabilities. The decision threshold for F1/accuracy
  is then chosen on the validation scores (``metrics.choose_threshold``).
- Regression target (mPCWP, mmHg): ridge regression (scikit-learn); alpha chosen by validation
  RMSE, ties to the larger alpha.
- Multi-label target (K labels): one logistic probe per label as above, each with its own C and
  threshold chosen on that label's validation AUROC and scores (``multilabel_probe``).
- Multi-class target (K classes): multinomial logistic regression (softmax); C chosen by
  validation macro-AUROC (one-vs-rest), ties to the smaller C (``multiclass_probe``).
- The model kept is the one fit on the training split with the chosen value; validation data
  never enters the fit.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from ssldml_jax.eval import metrics as metrics_lib

DEFAULT_C_GRID = tuple(10.0 ** np.arange(-4, 3))       # 1e-4 .. 1e2
DEFAULT_ALPHA_GRID = tuple(10.0 ** np.arange(-2, 5))   # 1e-2 .. 1e4


@dataclasses.dataclass(frozen=True)
class Standardizer:
  mean: np.ndarray
  scale: np.ndarray

  def __call__(self, x) -> np.ndarray:
    return (np.asarray(x, np.float64) - self.mean) / self.scale


def fit_standardizer(x_train) -> Standardizer:
  x = np.asarray(x_train, np.float64)
  scale = x.std(axis=0)
  return Standardizer(mean=x.mean(axis=0), scale=np.where(scale > 0, scale, 1.0))


@dataclasses.dataclass(frozen=True)
class ProbeResult:
  """A fitted probe with its validation search and its predictions on validation and test.

  Multi-label probes hold one value per label in ``hyper``, ``val_criterion`` and ``threshold``
  and a column per label in ``coef``; multi-class probes a column per class.
  """
  task: str                         # 'binary' | 'regression' | 'multilabel' | 'multiclass'
  hyper_name: str                   # 'C' (logistic) | 'alpha' (ridge)
  hyper: Any                        # the chosen value (multilabel: one per label)
  grid: tuple                       # values tried
  val_criterion: tuple              # validation AUROC / RMSE / macro-AUROC per value
  val_scores: np.ndarray            # probabilities (binary) or mmHg (regression); (n, K) multi
  test_scores: Optional[np.ndarray]
  threshold: Any                    # binary: chosen on validation; multilabel: per label
  coef: np.ndarray                  # on standardised embeddings: (d,) or (d, K)
  intercept: Any                    # float or (K,)
  standardizer: Standardizer
  n_train: int
  notes: tuple = ()                 # e.g. grid values at which the solver did not converge

  def predict(self, x) -> np.ndarray:
    """Scores for new embeddings, on the same scale as ``val_scores``."""
    z = self.standardizer(_check_embeddings("x", x, self.coef.shape[0])) @ self.coef
    return scores(self.task, z + self.intercept)

  @property
  def raw_coef(self) -> np.ndarray:
    """Coefficients on the original embedding scale (per unit of each dimension)."""
    return (self.coef.T / self.standardizer.scale).T


def scores(task: str, z: np.ndarray) -> np.ndarray:
  """A linear probe's scores from its linear outputs ``z``: probabilities (sigmoid; softmax for
  a multi-class probe) or the regression value itself."""
  if task in ("binary", "multilabel"):
    return _sigmoid(z)
  if task == "multiclass":
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
  return z


def logistic_probe(x_train, y_train, x_val, y_val, x_test=None, *,
                   grid: Sequence[float] = DEFAULT_C_GRID, threshold_criterion: str = "f1",
                   max_iter: int = 2000) -> ProbeResult:
  """Logistic regression on standardised embeddings; C by validation AUROC (see module doc)."""
  x_train, x_val, x_test = _check_splits(x_train, x_val, x_test)
  y_train = metrics_lib.check_binary("y_train", y_train, x_train.shape[0])
  y_val = metrics_lib.check_binary("y_val", y_val, x_val.shape[0])
  for name, y in (("y_train", y_train), ("y_val", y_val)):
    if y.all() or not y.any():
      raise ValueError(f"{name}: only one class among {y.size} labels; a logistic probe needs "
                       "both (too small a label fraction?)")
  std = fit_standardizer(x_train)
  z_train, z_val = std(x_train), std(x_val)
  fits, criterion, notes = [], [], []
  for c, model in _logistic_path(z_train, y_train, grid, max_iter, notes):
    coef, intercept = model.coef_[0].copy(), float(model.intercept_[0])
    fits.append((c, coef, intercept))
    criterion.append(metrics_lib.auroc(y_val, z_val @ coef + intercept))
  best = int(np.argmax(criterion))  # First maximum: the smallest C among ties.
  c, coef, intercept = fits[best]
  val_scores = _sigmoid(z_val @ coef + intercept)
  return ProbeResult(
      task="binary", hyper_name="C", hyper=c, grid=tuple(f[0] for f in fits),
      val_criterion=tuple(criterion), val_scores=val_scores,
      test_scores=None if x_test is None else _sigmoid(std(x_test) @ coef + intercept),
      threshold=metrics_lib.choose_threshold(y_val, val_scores, threshold_criterion),
      coef=coef, intercept=intercept, standardizer=std, n_train=int(x_train.shape[0]),
      notes=tuple(notes))


def ridge_probe(x_train, y_train, x_val, y_val, x_test=None, *,
                grid: Sequence[float] = DEFAULT_ALPHA_GRID) -> ProbeResult:
  """Ridge regression on standardised embeddings; alpha by validation RMSE (see module doc)."""
  x_train, x_val, x_test = _check_splits(x_train, x_val, x_test)
  y_train = metrics_lib.check_scores("y_train", y_train, x_train.shape[0])
  y_val = metrics_lib.check_scores("y_val", y_val, x_val.shape[0])
  from sklearn.linear_model import Ridge

  std = fit_standardizer(x_train)
  z_train, z_val = std(x_train), std(x_val)
  fits, criterion = [], []
  for alpha in sorted((float(a) for a in grid), reverse=True):
    model = Ridge(alpha=alpha).fit(z_train, y_train)
    coef, intercept = model.coef_.copy(), float(model.intercept_)
    fits.append((alpha, coef, intercept))
    criterion.append(metrics_lib.rmse(y_val, z_val @ coef + intercept))
  best = int(np.argmin(criterion))  # First minimum: the largest alpha among ties.
  alpha, coef, intercept = fits[best]
  return ProbeResult(
      task="regression", hyper_name="alpha", hyper=alpha, grid=tuple(f[0] for f in fits),
      val_criterion=tuple(criterion), val_scores=z_val @ coef + intercept,
      test_scores=None if x_test is None else std(x_test) @ coef + intercept, threshold=None,
      coef=coef, intercept=intercept, standardizer=std, n_train=int(x_train.shape[0]))


def multilabel_probe(x_train, y_train, x_val, y_val, x_test=None, *, labels: Sequence[str],
                     grid: Sequence[float] = DEFAULT_C_GRID, threshold_criterion: str = "f1",
                     max_iter: int = 2000) -> ProbeResult:
  """One ``logistic_probe`` per label (column of the bool ``y`` (n, K)); see the module doc."""
  y_train, y_val = np.asarray(y_train), np.asarray(y_val)
  if y_train.ndim != 2 or y_train.shape[1] != len(labels) or y_val.shape[1:] != y_train.shape[1:]:
    raise ValueError(f"y_train {y_train.shape} and y_val {y_val.shape}: expected (n, "
                     f"{len(labels)}) multi-hot labels")
  fits = []
  for k, label in enumerate(labels):
    try:
      fits.append(logistic_probe(x_train, y_train[:, k], x_val, y_val[:, k], x_test, grid=grid,
                                 threshold_criterion=threshold_criterion, max_iter=max_iter))
    except ValueError as e:
      raise ValueError(f"label {label}: {e}") from None
  first = fits[0]
  stack = lambda key: np.stack([getattr(f, key) for f in fits], axis=-1)  # noqa: E731
  return ProbeResult(
      task="multilabel", hyper_name="C", hyper=tuple(f.hyper for f in fits), grid=first.grid,
      val_criterion=tuple(f.val_criterion for f in fits), val_scores=stack("val_scores"),
      test_scores=None if x_test is None else stack("test_scores"),
      threshold=tuple(f.threshold for f in fits), coef=stack("coef"),
      intercept=np.array([f.intercept for f in fits]), standardizer=first.standardizer,
      n_train=first.n_train,
      notes=tuple(f"{label}: {n}" for label, f in zip(labels, fits) for n in f.notes))


def multiclass_probe(x_train, y_train, x_val, y_val, x_test=None, *, classes: Sequence[str],
                     grid: Sequence[float] = DEFAULT_C_GRID,
                     max_iter: int = 2000) -> ProbeResult:
  """Softmax logistic regression on class indices ``y`` in 0..K-1; C by validation
  macro-AUROC (see the module doc)."""
  from ssldml_jax.eval import label_metrics

  x_train, x_val, x_test = _check_splits(x_train, x_val, x_test)
  width = len(classes)
  for name, y, x in (("y_train", y_train, x_train), ("y_val", y_val, x_val)):
    y = np.asarray(y)
    if y.shape != (x.shape[0],):
      raise ValueError(f"{name}: expected {x.shape[0]} class indices, got shape {y.shape}")
    absent = [c for k, c in enumerate(classes) if not np.any(y == k)]
    if absent:
      raise ValueError(f"{name}: no example of class(es) {', '.join(absent)} among {y.size} "
                       "labels; a multi-class probe needs every class")
  macro_auroc = label_metrics.multiclass_metric_fns(classes, ("macro_auroc",))["macro_auroc"]
  std = fit_standardizer(x_train)
  z_train, z_val = std(x_train), std(x_val)
  fits, criterion, notes = [], [], []
  for c, model in _logistic_path(z_train, np.asarray(y_train), grid, max_iter, notes):
    coef, intercept = model.coef_.T.copy(), model.intercept_.copy()
    if width == 2:  # scikit-learn fits one logit; softmax([-z/2, z/2]) is the same sigmoid(z).
      coef, intercept = np.concatenate([-coef / 2, coef / 2], axis=1), np.r_[-intercept,
                                                                             intercept] / 2
    fits.append((c, coef, intercept))
    criterion.append(float(macro_auroc(np.asarray(y_val), scores("multiclass",
                                                                 z_val @ coef + intercept),
                                       None)[0]))
  best = int(np.argmax(criterion))
  c, coef, intercept = fits[best]
  assert coef.shape == (x_train.shape[1], width)
  return ProbeResult(
      task="multiclass", hyper_name="C", hyper=c, grid=tuple(f[0] for f in fits),
      val_criterion=tuple(criterion), val_scores=scores("multiclass", z_val @ coef + intercept),
      test_scores=None if x_test is None else scores("multiclass",
                                                     std(x_test) @ coef + intercept),
      threshold=None, coef=coef, intercept=intercept, standardizer=std,
      n_train=int(x_train.shape[0]), notes=tuple(notes))


# ---------------------------------------------------------------------------------- helpers


def _logistic_path(z_train, y_train, grid: Sequence[float], max_iter: int,
                   notes: list) -> Iterator[tuple[float, Any]]:
  """``(C, model)`` for each C of ``grid`` in increasing order, ``model`` (one scikit-learn
  ``LogisticRegression``, refit in place) fit on ``z_train, y_train``; a C at which lbfgs did
  not converge is appended to ``notes``, any other warning of the fit is re-issued."""
  from sklearn.exceptions import ConvergenceWarning
  from sklearn.linear_model import LogisticRegression

  # Increasing C with warm starts: each fit starts from the previous, more regularised solution.
  model = LogisticRegression(max_iter=max_iter, warm_start=True)
  for c in sorted(float(c) for c in grid):
    model.set_params(C=c)
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always", ConvergenceWarning)
      model.fit(z_train, y_train)
    for w in caught:
      if issubclass(w.category, ConvergenceWarning):
        notes.append(f"C={c:g}: lbfgs did not converge in max_iter={max_iter} iterations")
      else:
        warnings.warn(w.message, w.category)
    yield c, model


def _sigmoid(z: np.ndarray) -> np.ndarray:
  return 0.5 * (1.0 + np.tanh(0.5 * z))  # Stable for large |z|, unlike 1 / (1 + exp(-z)).


def _check_embeddings(name: str, x, dim: Optional[int] = None) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 2:
    raise ValueError(f"{name}: expected embeddings of shape (n, d), got {x.shape}")
  if dim is not None and x.shape[1] != dim:
    raise ValueError(f"{name}: embedding dimension {x.shape[1]}, expected {dim}")
  bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
  if bad.size:
    raise ValueError(f"{name}: {bad.size} embedding(s) with NaN/inf, first at row {bad[0]}")
  return x


def _check_splits(x_train, x_val, x_test):
  x_train = _check_embeddings("x_train", x_train)
  dim = x_train.shape[1]
  x_val = _check_embeddings("x_val", x_val, dim)
  x_test = None if x_test is None else _check_embeddings("x_test", x_test, dim)
  return x_train, x_val, x_test
