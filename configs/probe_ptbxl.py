"""The PTB-XL superdiagnostic benchmark: a linear probe of frozen embeddings, macro-AUROC.

    python -m ssldml_jax.data.build ptbxl --manual_dir=DIR          # once (README "Real datasets")
    python -m ssldml_jax.probe --config=configs/probe_ptbxl.py --workdir=runs/ptbxl_ssl_dml_dtw \
        --config.encoder_workdir=runs/ssl_dml_dtw

Protocol (README "PTB-XL benchmark"): the multi-label task over the five diagnostic superclasses
NORM, MI, STTC, CD and HYP (``diagnostic_superclass``); records without any superclass are left
out and counted; the recommended folds (1-8 train, 9 validation, 10 test, patient-wise); one
L2-regularised logistic probe per superclass on standardised embeddings, its strength chosen on
fold 9; macro-AUROC (and AUROC per superclass) on fold 10 with a 95% patient-bootstrap interval;
1%, 10% and 100% of the training patients, seeds 0, 1, 2; and the same probe of a randomly
initialised encoder of the same architecture (``random_baseline``) in ``<workdir>/random/``.
``:tiny`` is a small model and few resamples, for the test fixtures.
"""

from ssldml_jax import cli, methods
from ssldml_jax.eval import probe_config


def get_config(arg=None):
  c = probe_config.probe_job_config(arg)
  c.data.name = "ptbxl"
  c.data.pretrain_split = "train"    # PTB-XL has no unlabeled split (the probe does not read it)
  p = c.probe
  p.targets = ("diagnostic_superclass:multilabel",)
  p.heads = ("linear",)
  p.primary_head = "linear"
  p.fraction_heads = ("linear",)
  p.fractions = (0.01, 0.1, 1.0)
  p.limited_n = None
  if "tiny" not in cli.parse_words(arg, ("tiny",)):
    p.seeds = (0, 1, 2)
  return probe_config.add_entry_keys(methods.project(c, probe_config.PROBE_KEYS),
                                     random_baseline=True)
