"""The CLOCS CMSC baseline: contrast the two non-overlapping temporal halves of each ECG.

    python -m ssldml_jax.pretrain --config=configs/clocs_cmsc.py --workdir=runs/clocs_cmsc
    python -m ssldml_jax.pretrain --config=configs/clocs_cmsc.py:tiny --workdir=runs/tiny_clocs_cmsc

Positives are the halves of the same ECG and, as in CLOCS, the halves of other ECGs of the same
patient in the global batch; temperature 0.1. CLOCS used no other augmentation for CMSC, so the
augmentation strengths are zero here (set config.augment.* to add some).
"""

from ssldml_jax.pretrain_configs import pretrain_config


def get_config(arg=None):
  c = pretrain_config("clocs_cmsc", arg)
  c.loss.name = "cmsc"
  for key in ("noise_std", "time_mask_fraction", "wander_mv", "lead_dropout"):
    c.augment[key] = 0.0
  c.augment.scale_min = c.augment.scale_max = 1.0
  return c
