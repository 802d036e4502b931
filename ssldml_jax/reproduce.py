"""``python -m ssldml_jax.reproduce --config=configs/quickstart.py --workdir=DIR``: the main job.

1. Builds ``config.data.name`` if it is missing, prints the cohort (ECGs, patients, mPCWP > 18
   prevalence, sex and age bands per split; also ``tables/cohort.*``) and draws one test ECG as
   a standard 12-lead page (``plots/example_ecg.png``).
2. Pretrains every method of ``config.methods`` in ``pretrain/<method>/`` with its own
   ``configs/<file>.py`` overlaid with this config's shared ``data`` (all but ``train_split``),
   ``model``, ``optim``, ``train`` and ``seed``, then ``config.pretrain`` (method keys such as
   ``mining.decimate``).
3. Probes each encoder, and ``random`` (the same architecture, untrained), in ``probe/<method>/``.
4. Writes ``tables/`` (classification, regression, subgroups, label fractions, subgroup tests;
   Markdown, CSV, LaTeX), ``predictions/<method>.csv`` and ``plots/`` (ROC/PR, calibration, PCA of
   the test embeddings per method), and prints the main table last.

Every stage is skipped when its outputs exist: a finished pretraining (checkpoint at its last
step), a finished probe (``probe_results.json``); an interrupted pretraining resumes from its
checkpoint. Deleting a file or directory redoes just that part (and the report after it). One job
at a time per workdir (``workdirs.exclusive``).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Optional

import ml_collections
import numpy as np

from ssldml_jax import cli, parallel, preemption, workdirs

# Method key -> (configs/<file>.py, ':arg'); 'random' is the untrained baseline encoder.
METHOD_CONFIGS = {
    "ssl_dml_dtw": ("ssl_dml_dtw", ""),
    "ssl_dml_euclidean": ("ssl_dml_euclidean", ""),
    "supervised_dml": ("supervised_dml", "binary"),
    "supervised_dml_regression": ("supervised_dml", "regression"),
    "supervised": ("supervised", "binary"),
    "supervised_regression": ("supervised", "regression"),
    "simclr": ("simclr", ""),
    "clocs_cmsc": ("clocs_cmsc", ""),
}
RANDOM = "random"
METHODS = tuple(METHOD_CONFIGS) + (RANDOM,)
LABELS = {
    "ssl_dml_dtw": "SSL-DML (DTW)", "ssl_dml_euclidean": "SSL-DML (Euclidean)",
    "supervised_dml": "Supervised DML", "supervised_dml_regression": "Supervised DML (regr.)",
    "supervised": "Supervised", "supervised_regression": "Supervised (regr.)",
    "simclr": "SimCLR", "clocs_cmsc": "CLOCS (CMSC)", RANDOM: "Random encoder",
}
# Sections of this config that every pretraining shares (the random encoder too).
SHARED_SECTIONS = ("data", "model", "optim", "train")
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


# ------------------------------------------------------------------------------------- config


def validate(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Checks the keys this job reads (the probe's and each pretraining's are checked later)."""
  from ssldml_jax.eval import probe_config

  methods = config.methods
  if isinstance(methods, str):
    methods = (methods,)
  methods = tuple(w.strip() for m in (methods or ()) for w in str(m).split(",") if w.strip())
  bad = [m for m in methods if m not in METHODS]
  if not methods or bad or len(set(methods)) != len(methods):
    raise cli.ConfigError(f"config.methods={tuple(config.methods)!r} must be distinct names from "
                          + ", ".join(repr(m) for m in METHODS))
  config.methods = methods
  cli.check_choice(config, "example_ecg_split", (config.probe.test_split,
                                                 config.probe.validation_split,
                                                 config.probe.train_split))
  probe_config.validate(config)
  return methods


def _merge(target: ml_collections.ConfigDict, source: ml_collections.ConfigDict,
           where: str, skip: tuple = ()) -> None:
  """Copies every key of ``source`` into ``target``; an unknown key is a config error."""
  for key, value in source.items():
    if key in skip:
      continue
    if key not in target:
      raise cli.ConfigError(f"config.{where}.{key} is not a key of the method configs (they have "
                            f"{', '.join(sorted(target.keys()))})")
    if isinstance(value, ml_collections.ConfigDict):
      _merge(target[key], value, f"{where}.{key}")
    else:
      target[key] = value


def method_config(config: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
  """``configs/<file>.py[:arg]`` of ``method`` with this job's shared settings laid over it."""
  name, arg = METHOD_CONFIGS[method]
  path = os.path.join(CONFIG_DIR, f"{name}.py")
  if not os.path.isfile(path):
    raise cli.ConfigError(f"config.methods: {method!r} needs {path}, which is missing")
  c = cli.load_config_file(path + (f":{arg}" if arg else ""))
  c.seed = config.seed
  for section in SHARED_SECTIONS:
    _merge(c[section], config[section], section, skip=("train_split",) if section == "data" else ())
  _merge(c, config.pretrain, "pretrain")
  return c


def probe_config_for(config: ml_collections.ConfigDict, method: str,
                     encoder_workdir: Optional[str]) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(config.to_dict())
  c.encoder_workdir = encoder_workdir
  c.probe.name = method
  return c


# ------------------------------------------------------------------------------------- cohort


def read_labels(builder, split: str, *, with_first_ecg: bool = False) -> dict:
  """Ids, mPCWP, age and sex of every record of ``split`` (and its first ECG, in millivolts)."""
  import tensorflow_datasets as tfds
  from tensorflow_datasets.proto import tf_example_pb2

  from ssldml_jax.data import records

  source = builder.as_data_source(split,
                                  deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  out = {"ecg_id": [], "patient_id": [], "pcwp": [], "age": [], "sex": []}
  first = None
  for i in range(len(source)):
    feature = tf_example_pb2.Example.FromString(source[i]).features.feature
    out["ecg_id"].append(feature["ecg_id"].bytes_list.value[0].decode("utf-8"))
    out["patient_id"].append(feature["patient_id"].bytes_list.value[0].decode("utf-8"))
    out["pcwp"].append(feature["pcwp"].float_list.value[0])
    out["age"].append(feature["age"].float_list.value[0])
    out["sex"].append(feature["sex"].int64_list.value[0])
    if with_first_ecg and first is None:
      shape = tuple(builder.info.features["ecg"].shape)
      ecg = np.frombuffer(feature["ecg"].bytes_list.value[0], np.int16).reshape(shape)
      first = {"ecg_mv": records.int16_uv_to_mv(ecg),
               "ecg_id": feature["ecg_id"].bytes_list.value[0].decode("utf-8"),
               "rate": int(feature["sampling_rate"].int64_list.value[0])}
  arrays = {k: np.asarray(v) for k, v in out.items()}
  arrays["first"] = first
  return arrays


def cohort_table(builder, threshold: float, example_split: str):
  """(table of the cohort per split, the example ECG)."""
  from ssldml_jax.eval import subgroups, tables

  header = ("Split", "ECGs", "Patients", "mPCWP known", "mPCWP mean (SD)",
            f"mPCWP > {threshold:g}", "Female", "Male", "Sex unknown") + tuple(
                b[2] for b in subgroups.AGE_BANDS) + ("Age <18 / unknown",)
  body, example = [], None
  for split in builder.info.splits:
    labels = read_labels(builder, split, with_first_ecg=split == example_split)
    if split == example_split:
      example = labels["first"]
    n = len(labels["pcwp"])
    pcwp = labels["pcwp"]
    known = np.isfinite(pcwp)
    sex = subgroups.sex_groups(labels["sex"]) if n else np.array([], str)
    age = subgroups.age_bands(labels["age"]) if n else np.array([], str)
    if known.any():
      stats = f"{pcwp[known].mean():.1f} ({pcwp[known].std():.1f})"
      above = pcwp[known] > threshold
      high = f"{int(above.sum())} ({100 * above.mean():.1f}%)"
    else:
      stats = high = "-"
    body.append((split, str(n), str(len(np.unique(labels["patient_id"]))), str(int(known.sum())),
                 stats, high) + tuple(str(int((sex == g).sum())) for g in
                                      ("female", "male", subgroups.UNKNOWN)) +
                tuple(str(int((age == b[2]).sum())) for b in subgroups.AGE_BANDS) +
                (f"{int((age == subgroups.AGE_UNDER_18).sum())} / "
                 f"{int((age == subgroups.UNKNOWN).sum())}",))
  return tables.Table(header=header, body=tuple(body),
                      caption=f"Cohort: {builder.info.full_name} (ECGs per group)"), example


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


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The whole job (module docstring); returns the tables of the report by file stem."""
  methods = validate(config)
  import jax

  from ssldml_jax import train_lib
  from ssldml_jax.data import build, plot_ecg
  from ssldml_jax.eval import probe_lib, tables

  root = workdirs.prepare(workdir)
  trained = [m for m in methods if m != RANDOM]
  clock = _Clock(total=2 + len(trained) + len(methods) + 1)

  clock.banner(f"data: {config.data.name}")
  try:
    builder = build.ensure_built(config.data.name, config.data.data_dir,
                                 build_if_missing=bool(config.data.build_if_missing))
  except build.DatasetError as e:
    raise cli.ConfigError(f"config.data.name={config.data.name!r}: {e}") from None
  print(f"data in {builder.data_dir}", flush=True)

  clock.banner("cohort")
  table, example = cohort_table(builder, float(config.task.pcwp_threshold),
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

  method_configs = {m: method_config(config, m) for m in trained}  # all config errors up front
  for method in trained:
    target = os.path.join(root, "pretrain", method)
    clock.banner(f"pretrain {method} ({method_configs[method].train.num_steps or 'epochs'} steps)")
    if pretrain_done(target):
      print(f"done earlier: {target}", flush=True)
      continue
    train_lib.train_and_evaluate(method_configs[method], target)

  outcomes = []
  for method in methods:
    clock.banner(f"probe {method}")
    encoder_dir = None if method == RANDOM else os.path.join(root, "pretrain", method)
    outcomes.append(probe_lib.run_probe(probe_config_for(config, method, encoder_dir),
                                        os.path.join(root, "probe", method), name=method))

  clock.banner("report")
  made = probe_lib.write_report(outcomes, config, root, labels=LABELS)
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
      run(config, workdir)
  except (train_lib.NonFiniteError, checkpoint.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
  parallel.initialize_distributed()
  cli.define_flags()
  cli.run(main)
