"""``python -m ssldml_jax.reproduce --config=configs/quickstart.py --workdir=DIR``: the main job.

1. Builds ``config.data.name`` if it is missing, prints the cohort (ECGs, patients, mPCWP > 18
   prevalence, sex and age bands per split; also ``tables/cohort.*``) and draws one test ECG as
   a standard 12-lead page (``plots/example_ecg.png``); for the synthetic cohort, one page per
   heart condition it models (``plots/conditions/``).
2. Pretrains every trainable method of ``config.methods`` (names of ``ssldml_jax.methods``) once
   per pretraining seed (``config.pretrain_seeds``) in ``pretrain/<method>/seed<k>/``, each with
   its stage of this config (``methods.stage_config``: the shared sections and the keys that
   method reads; ``seed`` is the pretraining seed). A method that uses labels is also pretrained,
   for every label-limited row of the probe (``1%``, ``10%``, ``n=1000``), pretraining seed and
   probe seed, on that row's labeled patients only (the subset the probe of that seed draws,
   ``task.train_labels`` / ``task.train_labels_seed`` of its stage), in
   ``pretrain/<method>/labels_<row>/seed<k>_draw<s>/``, so that no encoder behind a row has seen
   more labels than the row says. Before the first pretraining of a method that mines from raw
   distances (SSL-DML) it measures and prints how label-informative the mined positives are
   (``eval.premise``, ``premise/<method>.json``).
3. Probes every encoder, and ``random`` (the same architecture, initialised with each
   pretraining seed), in the matching ``probe/...`` directory with the probe's stage of this
   config (``probe_config.probe_stage_config``); a labeled method's full encoders are probed at
   100% of labels only, each of its row encoders in its own row and probe seed only.
4. Pools each method's probes (``eval.pooling``: every cell averages all its pretraining and
   probe seeds), compares every method with the random encoder and ``config.compare_to``
   (``eval.comparisons``), and writes ``tables/`` (classification, regression, subgroups, label
   fractions, subgroup tests, comparisons, pretext; Markdown, CSV, LaTeX),
   ``predictions/<method>.csv`` and ``plots/`` (ROC/PR, calibration, PCA of the test embeddings
   per method), and prints the main table last, with the differences from the random encoder
   that hold marked ``*``.

One config flows to every stage: an override given here reaches every stage that reads its key
(each stage's ``config.json`` shows it), and an override that no stage of this job reads (e.g. a
VICReg key when VICReg is not among ``config.methods``) stops the job with a one-line error. The
job sets ``seed`` and ``task.train_labels{,_seed}`` of each stage itself, so its own config has
none of them.

Every stage is skipped when its outputs exist: a finished pretraining (checkpoint at its last
step), a finished probe (``probe_results.json``); an interrupted pretraining resumes from its
checkpoint. Deleting a file or directory redoes just that part (and the report after it). One job
at a time per workdir (``workdirs.exclusive``).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
import time
from typing import Iterable, Sequence

import ml_collections
import numpy as np

from ssldml_jax import cli, methods as methods_lib, parallel, preemption, workdirs

# Keys of the main job's own (no stage reads them).
JOB_KEYS = ("methods", "example_ecg_split", "pretrain_seeds", "compare_to")
# Keys the job sets in each stage (so its own config holds none of them).
STAGE_KEYS = ("seed", "task.train_labels", "task.train_labels_seed")


# ------------------------------------------------------------------------------------- config


def add_job_keys(c: ml_collections.ConfigDict, *, methods: Sequence[str]) -> None:
  """The main job's own keys: the methods, pretraining seeds, the reference of the comparisons
  and the split of the example ECG; drops the keys the job sets per stage (``STAGE_KEYS``)."""
  c.methods = tuple(methods)       # names of ssldml_jax.methods; 'random' is the untrained encoder
  c.pretrain_seeds = (0, 1, 2)     # every pretraining (and the random encoder) once per seed
  c.compare_to = "simclr"          # the reference of the comparisons besides 'random' ('': none)
  c.example_ecg_split = "test"     # the split whose first ECG is drawn as plots/example_ecg.png
  with c.unlocked():
    for key in STAGE_KEYS:
      section, _, leaf = key.rpartition(".")
      del (c[section] if section else c)[leaf]


def replicate_config(config: ml_collections.ConfigDict, pretrain_seed: int,
                     labels: str = "100%", labels_seed: int = 0) -> ml_collections.ConfigDict:
  """The job's config with the ``STAGE_KEYS`` of one replicate set."""
  c = copy.deepcopy(config)
  with c.unlocked():
    c.seed = int(pretrain_seed)
    c.task.train_labels = labels
    c.task.train_labels_seed = int(labels_seed)
  return c


@dataclasses.dataclass(frozen=True)
class Stage:
  """One pretraining or probe of the job: where it runs, for which method, with what labels."""
  kind: str                  # 'pretrain' | 'probe'
  method: str
  path: str                  # relative to the job's root, e.g. 'probe/supervised/seed0'
  config: ml_collections.ConfigDict
  row: str = "100%"          # the label row its encoder and probe see ('100%': every row)


def limited_rows(config: ml_collections.ConfigDict) -> list[str]:
  """The probe's label-limited rows (none when no head trains below 100%)."""
  from ssldml_jax.eval import subsets

  if not config.probe.fraction_heads:
    return []
  return [r for r in subsets.row_names(config) if r != subsets.FULL]


def stages(config: ml_collections.ConfigDict, root: str,
           method_names: Sequence[str]) -> list[Stage]:
  """Every stage of the job, method by method, each probe after the pretraining of its encoder
  (module docstring)."""
  from ssldml_jax.eval import probe_config, subsets

  out = []
  for name in method_names:
    method = methods_lib.get(name)
    for seed in config.pretrain_seeds:
      replicas = [(f"seed{seed}", subsets.FULL, 0)]
      if method.uses_labels:
        replicas += [(f"{subsets.row_slug(row)}/seed{seed}_draw{draw}", row, draw)
                     for row in limited_rows(config) for draw in config.probe.seeds]
      for where, row, draw in replicas:
        replica = replicate_config(config, seed, row, draw)
        encoder_dir = None
        if method.pretrains:
          path = f"pretrain/{name}/{where}"
          out.append(Stage("pretrain", name, path, methods_lib.stage_config(replica, name), row))
          encoder_dir = os.path.join(root, path)
        probe = probe_config.probe_stage_config(replica, name, encoder_dir)
        if method.uses_labels:  # its encoders saw labels: probe each in its own row only
          probe.probe.rows = (row,)
          if row != subsets.FULL:
            probe.probe.seeds = (draw,)
        out.append(Stage("probe", name, f"probe/{name}/{where}", probe, row))
  return out


def _leaf_keys(config: ml_collections.ConfigDict, prefix: str = "") -> set[str]:
  keys = set()
  for key, value in config.items():
    path = f"{prefix}{key}"
    keys |= _leaf_keys(value, path + ".") if isinstance(value, ml_collections.ConfigDict) \
        else {path}
  return keys


def check_overrides(overrides: Iterable[str], job_stages: Sequence[Stage],
                    methods: Sequence[str]) -> None:
  """An override that no stage of this job reads is an error, never silently ignored."""
  read = set(JOB_KEYS)
  for stage in job_stages:
    read |= _leaf_keys(stage.config)
  for key in overrides:
    if key not in read and not any(r.startswith(key + ".") for r in read):
      raise cli.ConfigError(f"config.{key} is read by no stage of this job (methods: "
                            f"{', '.join(methods)}); leave it out or add a method that reads it")


def validate(config: ml_collections.ConfigDict, root: str = "",
             overrides: Iterable[str] = ()) -> list[Stage]:
  """Checks the job's keys and every stage's config; returns the stages."""
  from ssldml_jax import train_lib
  from ssldml_jax.eval import probe_config

  methods = cli.check_words(config, "methods", methods_lib.names())
  seeds = tuple(cli.get_path(config, "pretrain_seeds"))
  if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds) or \
      len(set(seeds)) != len(seeds):
    raise cli.ConfigError(f"config.pretrain_seeds={seeds!r} must be distinct integers >= 0")
  cli.check_choice(config, "compare_to", ("",) + methods_lib.names())
  job_stages = stages(config, root, methods)
  check_overrides(overrides, job_stages, methods)
  for stage in job_stages:
    if stage.kind == "pretrain":
      train_lib.validate_config(stage.config)
    else:
      probe_config.validate(stage.config)
  cli.check_choice(config, "example_ecg_split", (config.data.test_split,
                                                 config.data.validation_split,
                                                 config.data.train_split))
  return job_stages


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


def _drawable_rows(config: ml_collections.ConfigDict, builder,
                   split_labels: dict) -> tuple[set, list[str]]:
  """The label rows that can be drawn from the labeled training split, and notes on the others;
  ``split_labels``: split -> ``reader.read_labels`` of it (every split of ``builder``)."""
  from ssldml_jax.data import reader
  from ssldml_jax.eval import subsets

  split = config.data.train_split
  # A training split the dataset lacks: read_labels raises its error, naming the splits there are.
  labels = split_labels[split] if split in split_labels else reader.read_labels(builder, split)
  patients = labels["patient_id"][np.isfinite(labels["pcwp"])]
  ok, notes = {subsets.FULL}, []
  for row in limited_rows(config):
    try:
      subsets.train_label_rows(patients, row, 0)
      ok.add(row)
    except ValueError as e:
      notes.append(f"the {row} row is left out for the methods that use labels: {e}")
  return ok, notes


def _premise(config: ml_collections.ConfigDict, stage: Stage, root: str, chief: bool):
  """The premise diagnostic of a raw-distance mining method, measured once and kept."""
  from ssldml_jax.eval import premise

  path = os.path.join(root, "premise", f"{stage.method}.json")
  if os.path.isfile(path):
    return premise.load(path)
  result = premise.measure(stage.config, float(config.task.pcwp_threshold))
  if chief:
    premise.save(path, result)
  return result


def run(config: ml_collections.ConfigDict, workdir: str, overrides: Iterable[str] = ()) -> dict:
  """The whole job (module docstring); returns the tables of the report by file stem.

  ``overrides``: the dotted keys the user set (``cli.overrides()`` from the command line).
  """
  root = os.path.abspath(workdir)
  job_stages = validate(config, root, overrides)  # every config error before any work
  methods = config.methods
  import jax

  from ssldml_jax import metrics_log, train_lib
  from ssldml_jax.data import build, plot_ecg, reader
  from ssldml_jax.eval import cohort_table, premise, probe_lib, tables

  root = workdirs.prepare(workdir)
  clock = _Clock(total=3 + len(job_stages))

  clock.banner(f"data: {config.data.name}")
  try:
    builder = build.ensure_built(config.data.name, config.data.data_dir,
                                 build_if_missing=bool(config.data.build_if_missing))
  except build.DatasetError as e:
    raise cli.ConfigError(f"config.data.name={config.data.name!r}: {e}") from None
  print(f"data in {builder.data_dir}", flush=True)

  clock.banner("cohort")
  # Each split's labels, read once: the cohort table and the label rows that can be drawn.
  split_labels = {split: reader.read_labels(builder, split) for split in builder.info.splits}
  table, example = cohort_table.build(builder, float(config.task.pcwp_threshold),
                                      config.example_ecg_split, split_labels)
  chief = jax.process_index() == 0
  if chief:
    tables.write_table(table, os.path.join(root, "tables", "cohort"))
  print(tables.to_markdown(table), flush=True)
  example_path = os.path.join(root, "plots", "example_ecg.png")
  if chief and example is not None and not os.path.isfile(example_path):
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
                               seed=int(config.pretrain_seeds[0]))
      os.replace(pages + ".tmp", pages)
    print(f"one 12-lead page per condition of the synthetic cohort: {pages}", flush=True)

  rows_ok, notes = _drawable_rows(config, builder, split_labels)
  if config.compare_to and config.compare_to not in methods:
    print(f"note: config.compare_to={config.compare_to!r} is not among config.methods: the "
          "comparisons are against the random encoder only", flush=True)
  for note in notes:
    print(f"note: {note}", flush=True)
  labels = {m: methods_lib.get(m).label for m in methods}
  premises = {}
  probes: dict[str, list] = {m: [] for m in methods}
  for stage in job_stages:
    target = os.path.join(root, stage.path)
    if stage.row not in rows_ok:
      clock.banner(f"{stage.path}: left out (label row {stage.row} cannot be drawn)")
      continue
    if stage.kind == "pretrain":
      clock.banner(f"{stage.path} ({stage.config.train.num_steps or 'epochs'} steps)")
      raw = methods_lib.get(stage.method).raw_distance is not None
      if raw and stage.method not in premises:
        premises[stage.method] = _premise(config, stage, root, chief)
      if pretrain_done(target):
        print(f"done earlier: {target}", flush=True)
        continue
      if raw:
        print(tables.to_markdown(premise.table([premises[stage.method]], labels,
                                               float(config.task.pcwp_threshold))), flush=True)
        print(premise.HOW_TO_READ, flush=True)
      train_lib.train_and_evaluate(stage.config, target)
      continue
    clock.banner(stage.path)
    if chief:  # write_config makes the directory
      metrics_log.write_config(target, stage.config)
    probes[stage.method].append(probe_lib.run_probe(stage.config, target, name=stage.method,
                                                    estimate=False))

  clock.banner("report")
  made = _report(config, root, builder, labels, probes, premises, notes)
  print(f"total {clock.elapsed()} (m:ss); the cohort is synthetic: these figures say nothing "
        "about real patients.", flush=True)
  return made


def _report(config: ml_collections.ConfigDict, root: str, builder, labels: dict, probes: dict,
            premises: dict, notes: Sequence[str]) -> dict:
  """Pools each method's probes, compares the methods, writes and prints the tables; ``labels``:
  method -> its name in the tables."""
  from ssldml_jax.eval import comparisons, pooling, probe_config, probe_lib, report, tables

  methods = config.methods
  # The probe's keys as every probe of the job has them, before the per-stage rows and seeds.
  report_config = probe_config.probe_stage_config(
      replicate_config(config, config.pretrain_seeds[0]), "", None)
  probe_targets, _ = probe_lib.resolve_targets(report_config, builder, config.data.train_split)
  first = next(o for m in methods for o in probes[m])
  splits = {role: pooling.labeled_split(first, builder, config.data[f"{role}_split"], role,
                                        probe_targets) for role in ("validation", "test")}
  pooled, cells = [], {}
  for name in methods:
    outcome, evaluation = pooling.pool(report_config, name, probes[name],
                                       os.path.join(root, "probe", name), splits, probe_targets)
    pooled.append(outcome)
    cells[name] = evaluation.cells
  found = comparisons.compare(cells, ("random", config.compare_to), config.probe.primary_head,
                              probe_targets, splits["test"])
  labeled = [labels[m] for m in methods if methods_lib.get(m).uses_labels]
  fraction_note = "; ".join(
      ([f"the encoders of {', '.join(labeled)} were pretrained on each row's labeled patients "
        "only"] if labeled else []) + list(notes))
  made = report.write_report(pooled, report_config, root, labels=labels, comparisons=found,
                             premises=[premises[m] for m in methods if m in premises],
                             fraction_note=fraction_note)
  print(f"tables, predictions and plots in {root}", flush=True)
  # The first target's main table (mPCWP > 18: classification) last: it carries the marks.
  mains = [report.main_stem(t) for t in probe_targets]
  stems = ["pretext", "comparisons"] + [s for s in report.printed_stems(report_config)
                                        if s not in mains] + mains[::-1]
  for stem in stems:
    if stem in made:
      print("\n" + tables.to_markdown(made[stem]), flush=True)
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
