"""Evaluation: probes of frozen encoders and the statistics of the paper's tables.

On NumPy arrays (embeddings, labels, predictions, patient ids, age, sex):

- ``metrics``: AUROC, AUPRC, thresholded F1/accuracy/sensitivity/specificity/PPV/NPV, the
  majority-class accuracy, RMSE, MAE, Pearson r (batched over weight rows), curves, recall@k and
  NMI of embeddings.
- ``bootstrap``: patient-level percentile CIs.
- ``delong``: DeLong's test for AUROCs (fast midrank form, patient clusters, replicates).
- ``significance``: differences with bootstrap intervals and p-values; Holm's adjustment.
- ``subgroups``: sex and age bands, per-group CIs, tests of equal metric between groups.
- ``targets``: a split's labels for each probe target, and the metrics of each.
- ``subsets``: rows with known labels, patient-level label-fraction subsets.
- ``linear_probe``: logistic / ridge probes with validation-tuned L2.
- ``estimates``: table cells (means over pretraining and probe seeds, bootstrap, SD over
  pretraining seeds, subgroup tests).
- ``comparisons``: paired comparisons of methods (bootstrap, DeLong, Holm).
- ``tables``: Markdown, CSV and LaTeX result tables; ``cohort_table``: the cohort per split.
- ``plots``: ROC/PR, calibration and embedding-projection figures (imports matplotlib).

With JAX: ``embed`` (cached frozen-encoder embeddings), ``head_training`` (what the trained heads
share), ``mlp_probe``, ``finetune``; a probe run: ``fitting`` (every head, target, subset and
seed), ``probe_files`` (``probe_results.json``, ``fits.npz``, ``predictions.csv``),
``probe_lib`` (``run_probe``: one encoder end to end), ``pooling`` (a method's probes of the main
job into one set of cells), ``premise`` (how label-informative raw-distance positives are) and
``report`` (tables and plots over many probes).
"""
