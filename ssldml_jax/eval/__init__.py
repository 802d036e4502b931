"""Evaluation on NumPy arrays (embeddings, labels, predictions, patient ids, age, sex).

- ``metrics``: AUROC, AUPRC, thresholded F1/accuracy/sensitivity/specificity, RMSE, MAE,
  Pearson r (batched over weight rows), curves, recall@k and NMI of embeddings.
- ``bootstrap``: patient-level percentile CIs.
- ``subgroups``: sex and age bands, per-group CIs, patient-level permutation tests.
- ``linear_probe``: logistic / ridge probes with validation-tuned L2, label-fraction subsets.
- ``tables``: Markdown, CSV and LaTeX result tables.
- ``plots``: ROC/PR, calibration and embedding-projection figures (imports matplotlib).
"""
