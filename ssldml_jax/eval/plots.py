"""Figures as PNG: ROC and PR curves per method, calibration, and a 2-D embedding projection.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas directly (no pyplot), so
nothing depends on a display or on pyplot's global state, and a figure is freed when the
function returns. Curves and bins come from ``metrics.py``, the same code as the tables.
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ssldml_jax import atomic
from ssldml_jax.eval import metrics as metrics_lib

# (labels, scores) per method, in legend order.
Curves = Mapping[str, tuple[np.ndarray, np.ndarray]]


def _save(fig: Figure, path: str) -> str:
  FigureCanvasAgg(fig)
  with atomic.replacing(path, suffix=".png") as tmp:
    fig.savefig(tmp, dpi=150, bbox_inches="tight")
  return path


def plot_roc_pr(curves: Curves, path: str, title: str = "") -> str:
  """ROC (left) and precision-recall (right) curves of several methods on one figure."""
  fig = Figure(figsize=(10, 4.5))
  roc_ax, pr_ax = fig.subplots(1, 2)
  prevalence = None
  for name, (y, score) in curves.items():
    fpr, tpr, _ = metrics_lib.roc_curve(y, score)
    precision, recall, _ = metrics_lib.pr_curve(y, score)
    roc_ax.plot(fpr, tpr, label=f"{name} (AUROC {metrics_lib.auroc(y, score):.3f})")
    pr_ax.step(recall, precision, where="post",
               label=f"{name} (AUPRC {metrics_lib.average_precision(y, score):.3f})")
    prevalence = float(np.mean(np.asarray(y, bool)))
  roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
  if prevalence is not None:
    pr_ax.axhline(prevalence, color="grey", linestyle=":", linewidth=1)  # chance level
  roc_ax.set(xlabel="False positive rate", ylabel="True positive rate", xlim=(0, 1),
             ylim=(0, 1.01), title="ROC")
  pr_ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.01),
            title="Precision-recall")
  roc_ax.legend(loc="lower right", fontsize=8)
  pr_ax.legend(loc="upper right", fontsize=8)
  if title:
    fig.suptitle(title)
  return _save(fig, path)


def plot_calibration(curves: Curves, path: str, n_bins: int = 10, title: str = "") -> str:
  """Reliability diagram: observed frequency against mean predicted probability per bin."""
  fig = Figure(figsize=(5, 5))
  ax = fig.subplots()
  ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect")
  for name, (y, prob) in curves.items():
    observed, predicted, _ = metrics_lib.calibration_curve(y, prob, n_bins)
    ax.plot(predicted, observed, marker="o", label=name)
  ax.set(xlabel="Mean predicted probability", ylabel="Observed frequency", xlim=(0, 1),
         ylim=(0, 1), title=title or "Calibration")
  ax.legend(loc="upper left", fontsize=8)
  return _save(fig, path)


def pca_2d(embeddings) -> tuple[np.ndarray, np.ndarray]:
  """(n, 2) projection on the first two principal components, and their explained-variance
  ratios. Signs are fixed so that each component's largest-magnitude loading is positive."""
  x = np.asarray(embeddings, np.float64)
  if x.ndim != 2 or x.shape[0] < 2 or not np.isfinite(x).all():
    raise ValueError(f"embeddings: expected finite values of shape (n >= 2, d), got {x.shape}")
  x = x - x.mean(axis=0)
  _, s, vt = np.linalg.svd(x, full_matrices=False)
  vt = vt[:2]
  vt *= np.sign(vt[np.arange(vt.shape[0]), np.argmax(np.abs(vt), axis=1)])[:, None]
  variance = s ** 2
  ratio = variance[:2] / variance.sum() if variance.sum() > 0 else np.zeros(2)
  proj = x @ vt.T
  if proj.shape[1] < 2:  # one-dimensional embeddings: a flat second axis
    proj = np.pad(proj, ((0, 0), (0, 2 - proj.shape[1])))
    ratio = np.pad(ratio, (0, 2 - ratio.size))
  return proj, ratio


def plot_embedding_projection(embeddings, pcwp, path: str, title: str = "",
                              max_points: Optional[int] = 20000, seed: int = 0) -> str:
  """PCA of the embeddings coloured by mPCWP (mmHg). Beyond ``max_points`` a seeded random
  subset is drawn (the PCA itself uses every point)."""
  pcwp = metrics_lib.check_scores("pcwp", pcwp)
  proj, ratio = pca_2d(embeddings)
  if proj.shape[0] != pcwp.size:
    raise ValueError(f"embeddings ({proj.shape[0]}) and pcwp ({pcwp.size}) differ in length")
  shown = np.arange(pcwp.size)
  if max_points is not None and pcwp.size > max_points:
    shown = np.sort(np.random.default_rng(seed).choice(pcwp.size, max_points, replace=False))
  fig = Figure(figsize=(6, 5))
  ax = fig.subplots()
  points = ax.scatter(proj[shown, 0], proj[shown, 1], c=pcwp[shown], cmap="viridis", s=6,
                      alpha=0.7, linewidths=0)
  fig.colorbar(points, ax=ax, label="mPCWP (mmHg)")
  ax.set(xlabel=f"PC1 ({100 * ratio[0]:.1f}% of variance)",
         ylabel=f"PC2 ({100 * ratio[1]:.1f}% of variance)", title=title or "Embeddings (PCA)")
  return _save(fig, path)
