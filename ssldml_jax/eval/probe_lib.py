"""The probe experiment: ``run_probe(config, workdir)`` for one encoder, ``write_report`` for many.

``run_probe`` embeds the labeled splits with the frozen encoder (cached in
``<workdir>/embeddings/``), trains every head of ``config.probe.heads`` on every target, label
fraction and seed, evaluates the test predictions, and writes ``probe_results.json`` (rows of the
tables, subgroup tests, one record per fit) and ``predictions.csv``. A workdir that already holds
``probe_results.json`` is not probed again.

Settings (``config.probe``):

- Heads: ``linear`` (logistic regression for mPCWP > threshold, ridge for mPCWP; L2 strength on
  validation; ``linear_probe``), ``mlp`` (``mlp_probe``), ``finetune`` (``finetune``).
- Label fractions: ``label_fraction_subsets`` of the training PATIENTS (1%, 10%, 100%) and the
  fixed ``n=limited_n`` labeled ECGs, drawn anew for every seed; heads outside
  ``fraction_heads`` run at 100% only. At 100% the linear probe is deterministic, so it is fit
  once and that fit stands for every seed.
- Seeds: every seed redraws the label subset and (MLP / fine-tuning) the initialisation.

Statistics of a (head, target, fraction) cell:

- Thresholds for F1 / accuracy / sensitivity / specificity are chosen on each seed's
  validation scores and applied to its test scores.
- The point estimate is the mean over seeds of the metric on the full test split; the interval
  is the patient-level bootstrap percentile interval of that seed mean (``bootstrap``): each
  resample of test patients is scored for every seed and the values averaged, so the interval
  shows test-set uncertainty of the averaged metric.
- Subgroups (the primary head, 100% of labels): the same estimate within each sex and age band
  (age at the patient's first ECG), and patient-level permutation tests of the seed-mean metric
  between the groups of each kind (``subgroups.permutation_test``), on the test predictions.

Seed averaging reuses the bootstrap and permutation code unchanged: the "score" handed to them
is the row index of each test ECG, and each metric looks up every seed's scores by that index
(so resampling or regrouping rows moves all seeds' predictions together).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import ml_collections
import numpy as np

from ssldml_jax import cli
from ssldml_jax.eval import bootstrap, embed, linear_probe, metrics as metrics_lib
from ssldml_jax.eval import probe_config, subgroups, tables

RESULTS_FILE = "probe_results.json"
PREDICTIONS_FILE = "predictions.csv"
FULL = linear_probe.fraction_name(1.0)   # '100%'
SEX_UNKNOWN, AGE_UNKNOWN = "sex unknown", "age unknown"


@dataclasses.dataclass
class Fit:
  """One trained head: its test scores (probabilities or mmHg) and validation threshold."""
  head: str
  target: str
  fraction: str
  seed: int
  n_train: int
  test_scores: np.ndarray
  val_scores: np.ndarray
  threshold: Optional[float]
  info: dict                        # chosen L2 strength, best step ...


@dataclasses.dataclass
class ProbeOutcome:
  """What ``run_probe`` leaves in its workdir, read back."""
  name: str
  workdir: str
  rows: list                        # (head, tables.Row)
  tests: list                       # (head, target, subgroups.PermutationResult)
  fits: list                        # dicts: head, target, fraction, seed, n_train, test metrics

  @property
  def predictions_path(self) -> str:
    return os.path.join(self.workdir, PREDICTIONS_FILE)

  def embeddings_path(self, split: str) -> str:
    return os.path.join(self.workdir, embed.EMBEDDINGS_DIR, f"{split}.npz")


# ------------------------------------------------------------------------------------ labels


def binary_target(pcwp: np.ndarray, threshold: float) -> np.ndarray:
  return np.asarray(pcwp) > threshold


def _labeled(split: dict, name: str) -> dict:
  """Rows with a known mPCWP; the others are reported, not silently dropped."""
  known = np.isfinite(split["pcwp"])
  if not known.all():
    first = split["ecg_id"][np.flatnonzero(~known)[0]]
    print(f"probe: {name}: {int((~known).sum())} ECG(s) without mPCWP left out (first "
          f"{first!r})", flush=True)
  if not known.any():
    raise cli.ConfigError(f"config.data.{name}_split: no ECG of that split has an mPCWP label")
  return {k: v[known] for k, v in split.items()}


def subset_names(config: ml_collections.ConfigDict, head: str) -> list[str]:
  p = config.probe
  if head not in p.fraction_heads:
    return [FULL]
  names = [linear_probe.fraction_name(f) for f in sorted(p.fractions)]
  if p.limited_n is not None:
    names.append(linear_probe.limited_name(p.limited_n))
  return names


def draw_subsets(config: ml_collections.ConfigDict, patient_ids: np.ndarray,
                 seed: int) -> dict[str, np.ndarray]:
  """Training subsets of one seed; a ``limited_n`` above the split's size is left out (the
  caller says so)."""
  p = config.probe
  limited = p.limited_n if p.limited_n is not None and p.limited_n <= len(patient_ids) else None
  return linear_probe.label_fraction_subsets(patient_ids, fractions=tuple(p.fractions),
                                             limited_n=limited, seed=seed)


# ------------------------------------------------------------------------------------- fitting


def _fit_one(head: str, target: str, seed: int, x_tr, y_tr, x_va, y_va, x_te, *,
             config: ml_collections.ConfigDict, finetune_data=None) -> tuple[Any, dict]:
  from ssldml_jax.eval import finetune as finetune_lib, mlp_probe  # JAX only when needed.

  p = config.probe
  if head == "linear":
    if target == "binary":
      res = linear_probe.logistic_probe(x_tr, y_tr, x_va, y_va, x_te,
                                        threshold_criterion=p.threshold_criterion)
    else:
      res = linear_probe.ridge_probe(x_tr, y_tr, x_va, y_va, x_te)
    for note in res.notes:
      print(f"probe: linear {target}: {note}", flush=True)
    return res, {res.hyper_name: res.hyper}
  if head == "mlp":
    res = mlp_probe.train_mlp_probe(x_tr, y_tr, x_va, y_va, x_te, task=target, seed=seed,
                                    settings=mlp_probe.MLPSettings.from_config(p.mlp),
                                    threshold_criterion=p.threshold_criterion)
    return res, {"best_step": res.best_step, "steps": res.steps_run}
  encoder, train, val, test = finetune_data
  res = finetune_lib.finetune(encoder, train, val, test, task=target, seed=seed,
                              settings=finetune_lib.FinetuneSettings.from_config(p.finetune),
                              pcwp_threshold=float(config.task.pcwp_threshold),
                              threshold_criterion=p.threshold_criterion)
  return res, {"best_step": res.best_step, "steps": res.steps_run}


def fit_all(config: ml_collections.ConfigDict, emb: Mapping[str, dict],
            finetune_splits: Optional[Callable[[], tuple]] = None,
            log: Callable[[str], None] = print) -> list[Fit]:
  """Every (head, target, label subset, seed) of the config on the embedded splits."""
  p = config.probe
  train, val, test = emb["train"], emb["validation"], emb["test"]
  threshold = float(config.task.pcwp_threshold)

  def y_of(split, target):
    return (binary_target(split["pcwp"], threshold) if target == "binary"
            else split["pcwp"].astype(np.float64))

  if p.limited_n is not None and p.limited_n > len(train["patient_id"]):
    log(f"probe: the n={p.limited_n} setting is left out: the training split has only "
        f"{len(train['patient_id'])} labeled ECGs")
  subsets: dict[int, dict] = {}

  def subsets_of(seed: int) -> dict[str, np.ndarray]:
    if seed not in subsets:
      subsets[seed] = draw_subsets(config, train["patient_id"], seed)
    return subsets[seed]

  fits = []
  for head in p.heads:
    seeds = tuple(p.finetune.seeds) if head == "finetune" else tuple(p.seeds)
    if head == "finetune":
      encoder, train_raw, val_raw, test_raw = finetune_splits()
      for name, raw, e in (("train", train_raw, train), ("validation", val_raw, val),
                           ("test", test_raw, test)):
        if not np.array_equal(raw["ecg_id"], e["ecg_id"]):
          raise RuntimeError(f"probe: the {name} ECGs read for fine-tuning differ from the "
                             "embedded ones (the dataset changed?); delete the embeddings cache")
    for target in p.targets:
      start = time.perf_counter()
      count = 0
      for fraction in subset_names(config, head):
        for seed in seeds:
          idx = subsets_of(seed).get(fraction)
          if idx is None:  # the n=limited_n setting, left out above
            continue
          if head == "linear" and fraction == FULL and seed != seeds[0]:
            # Deterministic fit on the same rows: the first seed's stands for every seed.
            first = next(f for f in fits if (f.head, f.target, f.fraction) == (head, target, FULL))
            fits.append(dataclasses.replace(first, seed=seed))
            continue
          ft_data = None
          if head == "finetune":
            ft_data = (encoder, {k: v[idx] for k, v in train_raw.items()}, val_raw, test_raw)
          try:
            res, info = _fit_one(head, target, seed, train["embedding"][idx],
                                 y_of(train, target)[idx], val["embedding"], y_of(val, target),
                                 test["embedding"], config=config, finetune_data=ft_data)
          except ValueError as e:
            if fraction == FULL:  # the whole training split is unusable: say why, stop
              raise cli.ConfigError(f"probe {head} {target} on the whole training split: "
                                    f"{e}") from None
            log(f"probe: {head} {target} {fraction} seed {seed} left out: {e}")
            continue
          count += 1
          fits.append(Fit(head=head, target=target, fraction=fraction, seed=seed,
                          n_train=int(len(idx)), test_scores=np.asarray(res.test_scores),
                          val_scores=np.asarray(res.val_scores), threshold=res.threshold,
                          info=info))
      log(f"probe: {head} {target}: {count} fit(s) in {time.perf_counter() - start:.1f} s")
  return fits


# ------------------------------------------------------------------------------- evaluation


def metric_names(target: str) -> tuple[str, ...]:
  if target == "binary":
    return metrics_lib.CLASSIFICATION_METRICS
  return metrics_lib.REGRESSION_METRICS


def seed_mean_metrics(fits: Sequence[Fit], names: Sequence[str]) -> dict[str, metrics_lib.MetricFn]:
  """Metrics of the seed mean, called with the test ROW INDEX as the score (module docstring)."""
  per_seed = [(metrics_lib.classification_metrics(f.threshold, names) if f.target == "binary"
               else metrics_lib.regression_metrics(names), f.test_scores) for f in fits]

  def make(name):
    def fn(y, index, weights):
      rows = np.asarray(index).astype(np.int64)
      return np.mean([m[name](y, s[rows], weights) for m, s in per_seed], axis=0)
    return fn

  return {name: make(name) for name in names}


def _groups(test: dict) -> dict[str, np.ndarray]:
  sex = subgroups.sex_groups(test["sex"])
  sex = np.where(sex == subgroups.UNKNOWN, SEX_UNKNOWN, sex)
  age = subgroups.age_bands(subgroups.first_per_patient(test["age"], test["patient_id"]))
  age = np.where(age == subgroups.UNKNOWN, AGE_UNKNOWN, age)
  return {"sex": sex, "age": age}


def evaluate(config: ml_collections.ConfigDict, fits: Sequence[Fit], test: dict,
             name: str) -> tuple[list, list]:
  """Table rows ``(head, Row)`` and subgroup tests ``(head, target, PermutationResult)``."""
  p = config.probe
  threshold = float(config.task.pcwp_threshold)
  index = np.arange(len(test["ecg_id"]), dtype=np.float64)
  pids = test["patient_id"]
  groups = _groups(test)
  rows, tests = [], []
  cells = list(dict.fromkeys((f.head, f.target, f.fraction) for f in fits))
  for head, target, fraction in cells:
    chosen = [f for f in fits if (f.head, f.target, f.fraction) == (head, target, fraction)]
    # A fit standing for several seeds (the linear probe at 100%) counts once.
    chosen = list({id(f.test_scores): f for f in chosen}.values())
    y = (binary_target(test["pcwp"], threshold) if target == "binary"
         else test["pcwp"].astype(np.float64))
    fns = seed_mean_metrics(chosen, metric_names(target))
    estimates = bootstrap.bootstrap_ci(fns, y, index, pids, n_resamples=p.n_bootstrap, seed=0)
    rows += [(head, tables.Row.from_estimate(name, target, metric, est, fraction=fraction))
             for metric, est in estimates.items()]
    if head != p.primary_head or fraction != FULL:
      continue
    test_names = tuple(p.binary_test_metrics if target == "binary" else p.regression_test_metrics)
    for kind, g in groups.items():
      by_group = subgroups.subgroup_estimates(fns, y, index, pids, g, n_resamples=p.n_bootstrap,
                                              seed=0)
      for group, per_metric in by_group.items():
        rows += [(head, tables.Row.from_estimate(name, target, metric, est, group=group))
                 for metric, est in per_metric.items()]
      unknown = SEX_UNKNOWN if kind == "sex" else AGE_UNKNOWN
      known = [x for x in subgroups.group_order(g) if x != unknown]
      pairs = [(a, b) for i, a in enumerate(known) for b in known[i + 1:]]
      if not test_names or not pairs:
        continue
      results = subgroups.compare_groups({m: fns[m] for m in test_names}, y, index, pids, g,
                                         pairs=pairs, n_permutations=p.n_permutations, seed=0,
                                         mixed="majority")
      tests += [(head, target, r) for r in results]
  return rows, tests


def fit_records(fits: Sequence[Fit], test: dict, threshold: float) -> list[dict]:
  """One JSON-able record per fit with its own test metrics (the per-seed numbers)."""
  out = []
  for f in fits:
    y = (binary_target(test["pcwp"], threshold) if f.target == "binary"
         else test["pcwp"].astype(np.float64))
    fns = (metrics_lib.classification_metrics(f.threshold) if f.target == "binary"
           else metrics_lib.regression_metrics())
    values = {k: float(fn(y, f.test_scores, None)[0]) for k, fn in fns.items()}
    out.append(dict(head=f.head, target=f.target, fraction=f.fraction, seed=f.seed,
                    n_train=f.n_train, threshold=f.threshold, **f.info, test=values))
  return out


# -------------------------------------------------------------------------- files of a probe


def write_predictions(path: str, config: ml_collections.ConfigDict, fits: Sequence[Fit],
                      splits: Mapping[str, dict]) -> str:
  """``ecg_id, patient_id, split, y_true_<target>, y_score_<target>[_<head>]`` for the
  validation and test ECGs (``y_true_regression`` is the mPCWP in mmHg); scores are the seed mean
  at 100% of labels, the primary head's unsuffixed."""
  p = config.probe
  threshold = float(config.task.pcwp_threshold)
  columns, values = [], {}
  for target in p.targets:
    columns.append(f"y_true_{target}")
    for head in p.heads:
      chosen = [f for f in fits if (f.head, f.target, f.fraction) == (head, target, FULL)]
      if not chosen:
        continue
      column = f"y_score_{target}" + ("" if head == p.primary_head else f"_{head}")
      columns.append(column)
      values[column] = {
          "validation": np.mean([f.val_scores for f in chosen], axis=0),
          "test": np.mean([f.test_scores for f in chosen], axis=0)}
  tmp = path + ".tmp"
  with open(tmp, "w", newline="", encoding="utf-8") as fh:
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(["ecg_id", "patient_id", "split"] + columns)
    for split in ("validation", "test"):
      s = splits[split]
      for i in range(len(s["ecg_id"])):
        row = [s["ecg_id"][i], s["patient_id"][i], split]
        for column in columns:
          if column.startswith("y_true_"):
            target = column[len("y_true_"):]
            row.append(int(s["pcwp"][i] > threshold) if target == "binary"
                       else f"{float(s['pcwp'][i]):.3f}")
          else:
            row.append(f"{float(values[column][split][i]):.6g}")
        writer.writerow(row)
  os.replace(tmp, path)
  return path


def read_predictions(path: str) -> dict[str, np.ndarray]:
  """Columns of a predictions file (numbers as float, ids as text)."""
  with open(path, newline="", encoding="utf-8") as fh:
    reader = csv.DictReader(fh)
    records = list(reader)
    fields = reader.fieldnames or []
  out = {}
  for field in fields:
    column = [r[field] for r in records]
    out[field] = (np.asarray(column, str) if field in ("ecg_id", "patient_id", "split")
                  else np.asarray(column, np.float64))
  return out


def _to_json(value: Any) -> Any:
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _to_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_to_json(v) for v in value]
  if isinstance(value, np.generic):
    return _to_json(value.item())
  return value


def _from_json(value: Any) -> float:
  return math.nan if value is None else float(value)


def save_outcome(path: str, outcome: ProbeOutcome, extra: dict) -> None:
  data = dict(extra, name=outcome.name,
              rows=[dict(head=h, **dataclasses.asdict(r)) for h, r in outcome.rows],
              tests=[dict(head=h, target=t, **dataclasses.asdict(r)) for h, t, r in outcome.tests],
              fits=outcome.fits)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as fh:
    json.dump(_to_json(data), fh, indent=1)
  os.replace(tmp, path)


def load_outcome(workdir: str) -> ProbeOutcome:
  """The outcome a finished ``run_probe`` left in ``workdir``."""
  path = os.path.join(workdir, RESULTS_FILE)
  with open(path, encoding="utf-8") as fh:
    data = json.load(fh)
  rows = []
  for r in data["rows"]:
    head = r.pop("head")
    for key in ("point", "low", "high"):
      r[key] = _from_json(r[key])
    rows.append((head, tables.Row(**r)))
  tests = []
  for t in data["tests"]:
    head, target = t.pop("head"), t.pop("target")
    for key in ("value_a", "value_b", "difference", "p_value"):
      t[key] = _from_json(t[key])
    tests.append((head, target, subgroups.PermutationResult(**t)))
  return ProbeOutcome(name=data["name"], workdir=os.path.abspath(workdir), rows=rows, tests=tests,
                      fits=data["fits"])


def is_done(workdir: str) -> bool:
  return os.path.isfile(os.path.join(workdir, RESULTS_FILE))


def _is_chief() -> bool:
  import jax

  return jax.process_index() == 0


def _default_name(config: ml_collections.ConfigDict) -> str:
  if config.probe.get("name"):
    return config.probe.name
  if config.encoder_workdir is None:
    return "random"
  return os.path.basename(os.path.normpath(config.encoder_workdir))


def run_probe(config: ml_collections.ConfigDict, workdir: str,
              name: Optional[str] = None) -> ProbeOutcome:
  """Probes the encoder of ``config.encoder_workdir`` (None: random); see the module docstring."""
  probe_config.validate(config)
  workdir = os.path.abspath(workdir)
  name = name or _default_name(config)
  if is_done(workdir):
    print(f"probe {name}: results in {workdir} exist (delete {RESULTS_FILE} to probe again)",
          flush=True)
    return load_outcome(workdir)
  os.makedirs(workdir, exist_ok=True)
  start = time.perf_counter()
  encoder = embed.load_encoder(config)
  data_config = embed.data_config_for(config, encoder)
  from ssldml_jax.data import pipeline

  available = pipeline.dataset_info(data_config)["splits"]
  p = config.probe
  d = config.data
  split_names = {"train": d.train_split, "validation": d.validation_split, "test": d.test_split}
  extra = [s for s in probe_config.split_list(config.export_splits) if s not in
           split_names.values()]
  for key, split in list(split_names.items()) + [("export_splits", s) for s in extra]:
    if split not in available:
      where = "export_splits" if key == "export_splits" else f"data.{key}_split"
      raise cli.ConfigError(f"config.{where}={split!r} is not a split of {data_config.name} "
                            f"(has {', '.join(sorted(available))})")
  embed_fn = embed.make_embed_fn(encoder.module)
  directory = os.path.join(workdir, embed.EMBEDDINGS_DIR)
  raw = {key: embed.cached_split(encoder, data_config, split, directory, embed_fn=embed_fn)
         for key, split in split_names.items()}
  for split in extra:
    embed.cached_split(encoder, data_config, split, directory, embed_fn=embed_fn)
  emb = {key: _labeled(value, key) for key, value in raw.items()}
  print(f"probe {name}: embedded train/validation/test = "
        + "/".join(str(len(emb[k]["ecg_id"])) for k in ("train", "validation", "test"))
        + f" labeled ECGs in {time.perf_counter() - start:.1f} s", flush=True)

  def finetune_splits():
    from ssldml_jax.eval import finetune as finetune_lib

    loaded = [_labeled(finetune_lib.load_split(data_config, split_names[k]), k)
              for k in ("train", "validation", "test")]
    return (encoder, *loaded)

  fits = fit_all(config, emb, finetune_splits, log=lambda m: print(m, flush=True))
  rows, tests = evaluate(config, fits, emb["test"], name)
  outcome = ProbeOutcome(name=name, workdir=workdir, rows=rows, tests=tests,
                         fits=fit_records(fits, emb["test"], float(config.task.pcwp_threshold)))
  if _is_chief():  # every process computed the same; one writes
    write_predictions(os.path.join(workdir, PREDICTIONS_FILE), config, fits, emb)
    save_outcome(os.path.join(workdir, RESULTS_FILE), outcome,
                 {"source": encoder.source, "dataset": data_config.name,
                  "config": json.loads(config.to_json_best_effort())})
  print(f"probe {name}: done in {time.perf_counter() - start:.1f} s", flush=True)
  return outcome


# ----------------------------------------------------------------------------- the report


def _relabel(row: tables.Row, labels: Mapping[str, str]) -> tables.Row:
  return dataclasses.replace(row, method=labels.get(row.method, row.method))


def report_tables(outcomes: Sequence[ProbeOutcome], config: ml_collections.ConfigDict,
                  labels: Optional[Mapping[str, str]] = None) -> dict[str, tables.Table]:
  """Every table of the paper by file stem: the primary head's unsuffixed, other heads'
  ``_<head>``."""
  p = config.probe
  labels = labels or {}
  rows_by_head: dict[str, list] = {}
  for o in outcomes:
    for head, row in o.rows:
      rows_by_head.setdefault(head, []).append(_relabel(row, labels))
  out = {}
  for head in p.heads:
    rows = rows_by_head.get(head, [])
    if not rows:
      continue
    suffix = "" if head == p.primary_head else f"_{head}"
    what = {"linear": "logistic / ridge probe", "mlp": "MLP probe",
            "finetune": "fine-tuned"}[head]
    if "binary" in p.targets:
      out[f"classification{suffix}"] = tables.classification_table(
          rows, caption=f"Elevated mPCWP (> {config.task.pcwp_threshold:g} mmHg), {what}, "
                        "test split, 95% patient-bootstrap CI")
    if "regression" in p.targets:
      out[f"regression{suffix}"] = tables.regression_table(
          rows, caption=f"mPCWP regression (mmHg), {what}, test split, 95% patient-bootstrap CI")
    if head in p.fraction_heads:
      for target, metric in (("binary", "auroc"), ("regression", "rmse")):
        if target in p.targets:
          out[f"label_fractions_{target}{suffix}"] = tables.label_fraction_table(
              [r for r in rows if r.target == target], metric=metric,
              caption=f"{tables.METRIC_LABELS[metric]} by training labels ({what})")
    if head == p.primary_head:
      for target in p.targets:
        out[f"subgroups_{target}"] = tables.subgroup_table(
            rows, target=target, caption=f"Subgroups by sex and age band ({target}, {what})")
  tests = [(labels.get(o.name, o.name), r) for o in outcomes for h, _, r in o.tests
           if h == p.primary_head]
  if tests:
    out["subgroup_tests"] = tables.pvalue_table(tests)
  return out


def write_report(outcomes: Sequence[ProbeOutcome], config: ml_collections.ConfigDict, root: str,
                 labels: Optional[Mapping[str, str]] = None) -> dict[str, tables.Table]:
  """``tables/``, ``predictions/<name>.csv`` and ``plots/`` under ``root`` for these probes."""
  from ssldml_jax.eval import plots  # matplotlib only for the report.

  labels = labels or {}
  made = report_tables(outcomes, config, labels)
  if not _is_chief():
    return made
  for stem, table in made.items():
    tables.write_table(table, os.path.join(root, "tables", stem))
  os.makedirs(os.path.join(root, "predictions"), exist_ok=True)
  curves = {}
  for o in outcomes:
    target = os.path.join(root, "predictions", f"{o.name}.csv")
    if os.path.abspath(target) != os.path.abspath(o.predictions_path):
      shutil.copyfile(o.predictions_path, target)
    pred = read_predictions(o.predictions_path)
    test = pred["split"] == "test"
    label = labels.get(o.name, o.name)
    if "y_score_binary" in pred:
      curves[label] = (pred["y_true_binary"][test].astype(bool), pred["y_score_binary"][test])
    emb_path = o.embeddings_path(config.data.test_split)
    if os.path.isfile(emb_path):
      e = embed.load_npz(emb_path)
      known = np.isfinite(e["pcwp"])
      if known.sum() >= 2:
        plots.plot_embedding_projection(
            e["embedding"][known], e["pcwp"][known],
            os.path.join(root, "plots", f"embedding_{o.name}.png"),
            title=f"{label}: test embeddings (PCA)")
  if curves:
    plots.plot_roc_pr(curves, os.path.join(root, "plots", "roc_pr.png"),
                      title=f"mPCWP > {config.task.pcwp_threshold:g} mmHg, test split")
    plots.plot_calibration(curves, os.path.join(root, "plots", "calibration.png"),
                           title="Calibration, test split")
  return made
