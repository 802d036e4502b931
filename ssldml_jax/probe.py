"""``python -m ssldml_jax.probe --config=configs/probe.py --workdir=DIR --config.encoder_workdir=PRETRAIN_DIR``

Probes a pretrained encoder (``config.encoder_workdir``; leave it unset for a randomly initialised
encoder of ``config.model``) on the labeled cohort: cached embeddings, logistic / ridge, MLP and
fine-tuned heads at every label fraction and seed, patient-bootstrap CIs and subgroup tests
(``ssldml_jax.eval.probe_lib``, then ``ssldml_jax.eval.report``). Writes ``probe_results.json``,
``predictions.csv``, ``embeddings/``, ``tables/`` and ``plots/`` in the workdir and prints the main
tables. With ``--config.random_baseline=True`` it also probes a randomly initialised encoder of
the same architecture in ``<workdir>/random/`` and puts its row in the same tables.
"""

from __future__ import annotations

import ml_collections

from ssldml_jax import cli, parallel, workdirs


def main(config: ml_collections.ConfigDict, workdir: str) -> None:
  from absl import logging

  # After flag parsing: errors stay one line.
  from ssldml_jax.eval import probe_lib, report, tables

  logging.set_verbosity(logging.ERROR)  # TFDS / orbax INFO lines would bury the tables.

  workdir = workdirs.prepare(workdir)
  outcomes = probe_lib.run_probes(config, workdir)
  made = report.write_report(outcomes, config, workdir)
  for stem in report.printed_stems(config):
    if stem in made:
      print("\n" + tables.to_markdown(made[stem]), flush=True)


if __name__ == "__main__":
  parallel.initialize_distributed()
  cli.define_flags()
  cli.run(main)
