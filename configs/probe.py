"""The probe trainer on the labeled cohort (linear, MLP and fine-tuned heads; paper settings).

    python -m ssldml_jax.probe --config=configs/probe.py --workdir=runs/probe_ssl_dml_dtw \
        --config.encoder_workdir=runs/ssl_dml_dtw
    python -m ssldml_jax.probe --config=configs/probe.py --workdir=runs/probe_random
    python -m ssldml_jax.probe --config=configs/probe.py:tiny --workdir=runs/tiny_probe \
        --config.encoder_workdir=runs/tiny_ssl_dml_dtw

Without ``encoder_workdir`` the encoder is ``config.model`` with random weights (the baseline row
of every table). With it, the model and the input sampling rate come from the pretrain workdir.
Label fractions 1%, 10%, 100% of training patients and n=1,000 labeled ECGs; seeds 0, 1, 2;
1,000 patient-bootstrap resamples. ``:tiny`` is a one-minute run on
``ecg_synth/tiny`` for quick checks.
"""

from ssldml_jax import methods
from ssldml_jax.eval import probe_config


def get_config(arg=None):
  c = probe_config.probe_job_config(arg)
  return probe_config.add_entry_keys(methods.project(c, probe_config.PROBE_KEYS))
