"""``python -m ssldml_jax.pretrain --config=configs/X.py[:arg] --workdir=DIR [--config.key=value ...]``

Pretrains an ECG encoder with the method of ``config.method`` (see ``configs/``); started again on
the same workdir, it resumes from the newest checkpoint.
"""

from ssldml_jax import cli, parallel, train_lib

if __name__ == "__main__":
  parallel.initialize_distributed()
  cli.define_flags()
  cli.run(train_lib.main)
