"""Multi-label and multi-class metrics against scikit-learn, and over weight rows."""

import numpy as np
import pytest
from sklearn import metrics as skm

from ssldml_jax.eval import label_metrics


def test_multilabel_and_multiclass_metrics_agree_with_sklearn():
  rng = np.random.default_rng(2)
  n, labels = 120, ("NORM", "MI", "STTC", "CD", "HYP")
  y = rng.random((n, 5)) < np.array([0.4, 0.2, 0.3, 0.15, 0.1])
  y[:5] = [True, True, True, True, True]  # every label has positives
  score = np.clip(0.3 * y + rng.random((n, 5)), 0, 1)
  fns = label_metrics.multilabel_metric_fns(labels)
  assert tuple(fns) == ("macro_auroc", "macro_auprc") + tuple(f"auroc_{c}" for c in labels)
  assert fns["macro_auroc"](y, score, None)[0] == pytest.approx(
      skm.roc_auc_score(y, score, average="macro"), abs=1e-12)
  assert fns["macro_auprc"](y, score, None)[0] == pytest.approx(
      skm.average_precision_score(y, score, average="macro"), abs=1e-12)
  for k, c in enumerate(labels):
    assert fns[f"auroc_{c}"](y, score, None)[0] == pytest.approx(
        skm.roc_auc_score(y[:, k], score[:, k]), abs=1e-12)
  # Integer weights are repeated rows; a label without positives on a row makes the macro NaN.
  counts = rng.integers(0, 3, n)
  weights = np.stack([counts.astype(float), (~y[:, 3]).astype(float)])
  values = fns["macro_auroc"](y, score, weights)
  rows = np.repeat(np.arange(n), counts)
  assert values[0] == pytest.approx(skm.roc_auc_score(y[rows], score[rows]), abs=1e-12)
  assert np.isnan(values[1])

  k = 4
  classes = tuple(str(i) for i in range(k))
  c = rng.integers(0, k, n)
  logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[c]
  prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  fns = label_metrics.multiclass_metric_fns(classes)
  assert fns["macro_auroc"](c, prob, None)[0] == pytest.approx(
      skm.roc_auc_score(c, prob, multi_class="ovr", average="macro"), abs=1e-12)
  assert fns["accuracy"](c, prob, None)[0] == pytest.approx(
      skm.accuracy_score(c, prob.argmax(1)), abs=1e-12)
  assert fns["auroc_2"](c, prob, None)[0] == pytest.approx(
      skm.roc_auc_score(c == 2, prob[:, 2]), abs=1e-12)
