"""``python -m ssldml_jax.reproduce --config=configs/quickstart.py --workdir=DIR``: the main job.

1. Builds ``config.data.name`` if it is missing, prints the cohort (ECGs, patients, mPCWP > 18
   prevalence, sex and age bands per split; also ``tables/cohort.*``) and draws one test ECG as
   a standard 12-lead page (``plots/example_ecg.png``); for the synthetic cohort, one page per
   heart condition it models (``plots/conditions/``).
2. Pretrains every trainable method of ``config.methods`` (names of ``ssldml_jax.methods``) in
   ``pretrain/<method>/``, each with its stage of this config (``methods.stage_config``: the
   shared sections and the keys that method reads).
3. Probes each encoder, and ``random`` (the same architecture, untrained), in ``probe/<method>/``
   with the probe's stage of this config (``probe_config.probe_stage_config``).
4. Writes ``tables/`` (classification, regression, subgroups, label fractions, subgroup tests;
   Markdown, CSV, LaTeX), ``predictions/<method>.csv`` and ``plots/`` (ROC/PR, calibration, PCA of
   the test embeddings per method), and prints the main table last.

One config flows to every stage: an override given here reaches every stage that reads its key
(each stage's ``config.json`` shows it), and an override that no stage of this job reads (e.g. a
VICReg key when VICReg is not among ``config.methods``) stops the job with a one-line error.

Every stage is skipped when its outputs exist: a finished pretraining (checkpoint at its last
step), a finished probe (``probe_results.json``); an interrupted pretraining resumes from its
checkpoint. Deleting a file or directory redoes just that part (and the report after it). One job
at a time per workdir (``workdirs.exclusive``).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Optional, Sequence

import ml_collections

from ssldml_jax import cli, methods as methods_lib, parallel, preemption, workdirs

# Keys of the main job's own (no stage reads them).
JOB_KEYS = ("methods", "example_ecg_split")


# ------------------------------------------------------------------------------------- config


def add_job_keys(c: ml_collections.ConfigDict, *, methods: Sequence[str]) -> None:
  """The main job's own keys: the methods to run and the split of the example ECG."""
  c.methods = tuple(methods)       # names of ssldml_jax.methods; 'random' is the untrained encoder
  c.example_ecg_split = "test"     # the split whose first ECG is drawn as plots/example_ecg.png


def stage_configs(config: ml_collections.ConfigDict, root: str,
                  methods: Sequence[str]) -> dict[str, ml_collections.ConfigDict]:
  """Every stage's config by stage name: ``pretrain/<m>`` and ``probe/<m>``."""
  from ssldml_jax.eval import probe_config

  out = {}
  for name in methods:
    method = methods_lib.get(name)
    encoder_dir = None
    if method.pretrains:
      out[f"pretrain/{name}"] = methods_lib.stage_config(config, name)
      encoder_dir = os.path.join(root, "pretrain", name)
    out[f"probe/{name}"] = probe_config.probe_stage_config(config, name, encoder_dir)
  return out


def _leaf_keys(config: ml_collections.ConfigDict, prefix: str = "") -> set[str]:
  keys = set()
  for key, value in config.items():
    path = f"{prefix}{key}"
    keys |= _leaf_keys(value, path + ".") if isinstance(value, ml_collections.ConfigDict) \
        else {path}
  return keys


def check_overrides(overrides: Iterable[str], stages: dict[str, ml_collections.ConfigDict],
                    methods: Sequence[str]) -> None:
  """An override that no stage of this job reads is an error, never silently ignored."""
  read = set(JOB_KEYS)
  for stage in stages.values():
    read |= _leaf_keys(stage)
  for key in overrides:
    if key not in read and not any(r.startswith(key + ".") for r in read):
      raise cli.ConfigError(f"config.{key} is read by no stage of this job (methods: "
                            f"{', '.join(methods)}); leave it out or add a method that reads it")


def validate(config: ml_collections.ConfigDict, root: str = "",
             overrides: Iterable[str] = ()) -> dict[str, ml_collections.ConfigDict]:
  """Checks the job's keys and every stage's config; returns the stage configs."""
  from ssldml_jax import train_lib
  from ssldml_jax.eval import probe_config

  methods = cli.check_words(config, "methods", methods_lib.names())
  stages = stage_configs(config, root, methods)
  check_overrides(overrides, stages, methods)
  for name, stage in stages.items():
    if name.startswith("pretrain/"):
      train_lib.validate_config(stage)
    else:
      probe_config.validate(stage)
  cli.check_choice(config, "example_ecg_split", (config.data.test_split,
                                                 config.data.validation_split,
                                                 config.data.train_split))
  return stages


# ------------------------------------------------------------------------------------- stages


def pretrain_done(workdir: str) -> bool:
  from ssldml_jax import checkpoint

  meta = checkpoint.latest_readable_meta(workdir)
  return bool(meta) and int(meta.get("step", -1)) >= int(meta.get("total_steps", 1 << 62))


class _Clock:
  """Stage banners with the elapsed time since the job started."""

  def __init__(self, total: int):
    self.start, self.total, self.stage = time.perf_counter(), total, 0

  def banner(self, text: str) -> None:
    self.stage += 1
    print(f"\n[{self.stage}/{self.total}] {text}  (elapsed {self.elapsed()})", flush=True)

  def elapsed(self) -> str:
    seconds = int(time.perf_counter() - self.start)
    return f"{seconds // 60}:{seconds % 60:02d}"


def run(config: ml_collections.ConfigDict, workdir: str, overrides: Iterable[str] = ()) -> dict:
  """The whole job (module docstring); returns the tables of the report by file stem.

  ``overrides``: the dotted keys the user set (``cli.overrides()`` from the command line).
  """
  root = os.path.abspath(workdir)
  stages = validate(config, root, overrides)  # every config error before any work
  methods = config.methods
  import jax

  from ssldml_jax import metrics_log, train_lib
  from ssldml_jax.data import build, plot_ecg
  from ssldml_jax.eval import cohort_table, probe_lib, report, tables

  root = workdirs.prepare(workdir)
  trained = [m for m in methods if f"pretrain/{m}" in stages]
  clock = _Clock(total=2 + len(trained) + len(methods) + 1)

  clock.banner(f"data: {config.data.name}")
  try:
    builder = build.ensure_built(config.data.name, config.data.data_dir,
                                 build_if_missing=bool(config.data.build_if_missing))
  except build.DatasetError as e:
    raise cli.ConfigError(f"config.data.name={config.data.name!r}: {e}") from None
  print(f"data in {builder.data_dir}", flush=True)

  clock.banner("cohort")
  table, example = cohort_table.build(builder, float(config.task.pcwp_threshold),
                                      config.example_ecg_split)
  chief = jax.process_index() == 0
  if chief:
    tables.write_table(table, os.path.join(root, "tables", "cohort"))
  print(tables.to_markdown(table), flush=True)
  example_path = os.path.join(root, "plots", "example_ecg.png")
  if chief and example is not None and not os.path.isfile(example_path):
    os.makedirs(os.path.dirname(example_path), exist_ok=True)
    plot_ecg.plot_12lead(example["ecg_mv"], example["rate"], example_path,
                         title=f"{example['ecg_id']} ({config.data.name}, "
                               f"{config.example_ecg_split})")
  print(f"example ECG: {example_path}", flush=True)
  if config.data.name.split("/")[0] == "ecg_synth":
    pages = os.path.join(root, "plots", "conditions")
    if chief and not os.path.isdir(pages):
      # Written to a temporary folder first: a folder that exists holds every page.
      plot_ecg.plot_conditions(pages + ".tmp",
                               sampling_rate=int(builder.builder_config.sampling_rate),
                               seed=int(config.seed))
      os.replace(pages + ".tmp", pages)
    print(f"one 12-lead page per condition of the synthetic cohort: {pages}", flush=True)

  for method in trained:
    stage = stages[f"pretrain/{method}"]
    target = os.path.join(root, "pretrain", method)
    clock.banner(f"pretrain {method} ({stage.train.num_steps or 'epochs'} steps)")
    if pretrain_done(target):
      print(f"done earlier: {target}", flush=True)
      continue
    train_lib.train_and_evaluate(stage, target)

  outcomes = []
  for method in methods:
    clock.banner(f"probe {method}")
    target = os.path.join(root, "probe", method)
    if chief:
      os.makedirs(target, exist_ok=True)
      metrics_log.write_config(target, stages[f"probe/{method}"])
    outcomes.append(probe_lib.run_probe(stages[f"probe/{method}"], target, name=method))

  clock.banner("report")
  labels = {m: methods_lib.get(m).label for m in methods}
  made = report.write_report(outcomes, stages[f"probe/{methods[0]}"], root, labels=labels)
  print(f"tables, predictions and plots in {root}", flush=True)
  for stem in ("label_fractions_binary", "regression", "classification"):
    if stem in made:
      print("\n" + tables.to_markdown(made[stem]), flush=True)
  print(f"total {clock.elapsed()} (m:ss); the cohort is synthetic: these figures say nothing "
        "about real patients.", flush=True)
  return made


def main(config: ml_collections.ConfigDict, workdir: str) -> None:
  from absl import logging

  from ssldml_jax import checkpoint, train_lib

  # Library INFO lines (TFDS, orbax) would bury the progress bars and the tables.
  logging.set_verbosity(logging.ERROR)
  try:
    # One job per workdir; SIGTERM between pretrainings stops it at once (every output is
    # written atomically), during one it saves a checkpoint first.
    with workdirs.exclusive(workdir), preemption.notice(interrupt=True):
      run(config, workdir, cli.overrides())
  except (train_lib.NonFiniteError, checkpoint.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
  parallel.initialize_distributed()
  cli.define_flags()
  cli.run(main)
