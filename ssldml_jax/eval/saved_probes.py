"""Fitted probe heads saved in the probe workdir, and read back to score new ECGs.

Files (plain NumPy and JSON, no pickle)::

    <probe workdir>/heads/
      manifest.json                          everything but the weights (below)
      <head>-<target>-<fraction>-seed<k>.npz  one fitted head's arrays

- ``manifest.json``: the encoder the heads were fit on (its pretrain workdir and checkpoint step,
  or a random initialisation with its seed; its architecture; the SHA-256 of its parameters,
  ``params_sha256``), the input (``ecg_files.RecordFormat``: the project's lead order, the rate,
  length and crop of the records, the rate and band-pass the model sees), the dataset, the
  targets (``targets.Target``), the primary head, the threshold criterion, every fit (its file,
  head, target, label fraction, the seeds it stands for, its threshold, output map and settings)
  and every ensemble below.
- A linear head's arrays: ``mean``, ``scale`` (the standardiser of the embeddings), ``coef``
  ((d,) or (d, K)) and ``intercept``. An MLP head's: the standardiser and its flax variables as
  ``variables/params/...`` and ``variables/batch_stats/...``; a fine-tuned model's: the variables
  of its encoder and head.

A (head, target) predicts the mean over seeds of its fits at 100% of the labels, exactly the
scores of ``predictions.csv``. Its rule: a binary target is positive when that score is at least
the ensemble's threshold, chosen on the validation split's seed-mean scores with
``config.probe.threshold_criterion`` (one per label for a multi-label target); a multi-class
target takes the class of the highest score; a regression target has no rule.

``load`` rebuilds the encoder (from its workdir, or re-initialised) and checks its parameters
against ``params_sha256``: weights that differ (a longer pretraining in the same workdir, another
machine's random initialisation) are a one-line ``ProbeFileError`` saying which.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import ml_collections
import numpy as np

from ssldml_jax import atomic
from ssldml_jax.data import ecg_files
from ssldml_jax.eval import (embed, head_training, linear_probe, probe_files, subsets,
                             targets)
from ssldml_jax.eval.fitting import Fit

HEADS_DIR = "heads"
MANIFEST = "manifest.json"
FORMAT = 1


class ProbeFileError(ValueError):
  """A saved probe that cannot be used: missing, damaged, or fit on other weights."""


# ------------------------------------------------------------------------------- arrays


def flatten(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
  """Nested dicts of arrays as ``{'a/b/c': array}``."""
  out = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, path + "/"))
    else:
      out[path] = np.asarray(value)
  return out


def unflatten(flat: Mapping[str, np.ndarray]) -> dict:
  out: dict = {}
  for path, value in flat.items():
    node = out
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def params_sha256(variables: Mapping) -> str:
  """SHA-256 over every array of ``variables`` (path, dtype, shape and bytes, in path order)."""
  digest = hashlib.sha256()
  for path, value in sorted(flatten(variables).items()):
    value = np.ascontiguousarray(value)
    digest.update(f"{path}|{value.dtype.str}|{value.shape}|".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


def _save_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  with atomic.replacing(path, suffix=".npz") as tmp:
    np.savez(tmp, **arrays)


def _json(value: Any) -> Any:
  if isinstance(value, (tuple, list)):
    return [_json(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


# --------------------------------------------------------------------------------- save


def _fit_arrays(fit: Fit) -> tuple[dict[str, np.ndarray], dict]:
  """(arrays, manifest fields) of one fitted head."""
  res = fit.model
  if isinstance(res, linear_probe.ProbeResult):
    return ({"mean": res.standardizer.mean, "scale": res.standardizer.scale, "coef": res.coef,
             "intercept": np.asarray(res.intercept, np.float64)}, {})
  arrays = flatten(res.best_variables, "variables/")
  fields = {"output": dataclasses.asdict(res.output)}
  if res.standardizer is not None:
    arrays.update(mean=res.standardizer.mean, scale=res.standardizer.scale)
  return arrays, fields


def _file_name(fit: Fit) -> str:
  fraction = fit.fraction.replace("%", "pct").replace("=", "")
  return f"{fit.head}-{fit.target}-{fraction}-seed{fit.seed}.npz"


def encoder_record(encoder: embed.Encoder, seed: int) -> dict:
  """What identifies the weights a probe was fit on (manifest ``encoder``)."""
  return {"workdir": encoder.workdir, "step": encoder.step, "source": encoder.source,
          "seed": None if encoder.workdir else int(seed),
          "model": json.loads(encoder.model_config.to_json(sort_keys=True)),
          "sampling_rate": encoder.sampling_rate,
          "bandpass": None if encoder.bandpass is None else list(encoder.bandpass),
          "params_sha256": params_sha256(encoder.variables)}


def save(directory: str, *, config: ml_collections.ConfigDict, fits: Sequence[Fit],
         probe_targets: Sequence[targets.Target], validation: Mapping[str, np.ndarray],
         encoder: embed.Encoder, record_format: ecg_files.RecordFormat,
         dataset: str) -> str:
  """Writes every fitted head of ``fits`` and the manifest (module docstring) into
  ``directory``; ``validation``: the labeled validation split the fits were scored on. The
  manifest is written last, so a directory holding it is complete."""
  p = config.probe
  os.makedirs(directory, exist_ok=True)
  entries, seeds_of = [], {}
  for fit in fits:  # a fit standing for several seeds (the linear probe at 100%) is saved once
    seeds_of.setdefault(id(fit.test_scores), (fit, []))[1].append(fit.seed)
  for fit, seeds in seeds_of.values():
    arrays, fields = _fit_arrays(fit)
    _save_npz(os.path.join(directory, _file_name(fit)), arrays)
    entries.append({"file": _file_name(fit), "head": fit.head, "target": fit.target,
                    "fraction": fit.fraction, "seeds": seeds, "n_train": fit.n_train,
                    "threshold": _json(fit.threshold), **fields})
  ensembles = []
  for head in p.heads:
    for target in probe_targets:
      chosen = [e for e in entries if (e["head"], e["target"], e["fraction"]) ==
                (head, target.name, subsets.FULL)]
      if not chosen:
        continue
      mean_val = probe_files.seed_mean(fits, head, target.name, "val_scores")
      threshold = head_training.choose_thresholds(
          target.kind, targets.values(validation, target), mean_val, p.threshold_criterion)
      ensembles.append({"head": head, "target": target.name,
                        "files": [e["file"] for e in chosen], "threshold": _json(threshold)})
  manifest = {
      "format": FORMAT, "dataset": dataset, "encoder": encoder_record(encoder, config.seed),
      "input": dataclasses.asdict(record_format),
      "targets": [t.to_json() for t in probe_targets], "primary_head": p.primary_head,
      "threshold_criterion": p.threshold_criterion,
      "mlp": {"hidden_dim": int(p.mlp.hidden_dim), "dropout": float(p.mlp.dropout)},
      "fits": entries, "ensembles": ensembles}
  atomic.write_text(os.path.join(directory, MANIFEST), json.dumps(manifest, indent=1))
  return directory


# --------------------------------------------------------------------------------- load


@dataclasses.dataclass(frozen=True)
class Ensemble:
  """A (head, target) of a saved probe: the seed mean of its 100% fits, and its rule."""
  head: str
  target: targets.Target
  files: tuple
  threshold: Any


@dataclasses.dataclass
class SavedProbe:
  """A probe read back (``load``): encoder, input format, targets and ensembles."""
  directory: str
  manifest: dict
  encoder: embed.Encoder
  record_format: ecg_files.RecordFormat
  targets: list
  ensembles: list
  # Read and prepared once per file (``arrays``, ``fit_scores``), not per batch of ECGs.
  _arrays: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)
  _scorers: dict = dataclasses.field(default_factory=dict, init=False, repr=False,
                                     compare=False)

  @property
  def primary_head(self) -> str:
    return self.manifest["primary_head"]

  def _fit(self, name: str) -> dict:
    return next(e for e in self.manifest["fits"] if e["file"] == name)

  def arrays(self, name: str) -> dict[str, np.ndarray]:
    """The arrays of the saved fit in file ``name`` (module docstring), read once: later calls
    return the same dict, which callers must not change."""
    if name not in self._arrays:
      path = os.path.join(self.directory, name)
      try:
        with np.load(path, allow_pickle=False) as f:
          self._arrays[name] = {k: f[k] for k in f.files}
      except (OSError, ValueError) as e:
        raise ProbeFileError(f"{path}: unreadable saved head ({e})") from None
    return self._arrays[name]

  def fit_scores(self, name: str, target: targets.Target, embedding: np.ndarray,
                 ecg: Optional[np.ndarray], per_device_batch_size: int) -> np.ndarray:
    """Scores of one saved fit: from the embeddings (linear, MLP) or the model input ECGs
    (fine-tuned)."""
    key = (name, target, per_device_batch_size)
    if key not in self._scorers:  # each batch of ``predict`` reuses it
      self._scorers[key] = self._scorer(name, target, per_device_batch_size)
    return self._scorers[key](embedding, ecg)

  def _scorer(self, name: str, target: targets.Target,
              per_device_batch_size: int) -> Callable[[np.ndarray, Optional[np.ndarray]],
                                                      np.ndarray]:
    """``f(embedding, ecg) -> scores`` of the saved fit in file ``name``."""
    entry, arrays = self._fit(name), self.arrays(name)
    std = (linear_probe.Standardizer(arrays["mean"], arrays["scale"])
           if "mean" in arrays else None)
    if entry["head"] == "linear":
      return lambda embedding, ecg: linear_probe.scores(
          target.kind, std(embedding) @ arrays["coef"] + arrays["intercept"])
    output = head_training.OutputMap(**entry["output"])
    variables = unflatten({k: v for k, v in arrays.items()
                           if k.startswith("variables/")})["variables"]
    if entry["head"] == "mlp":
      from ssldml_jax.eval import mlp_probe

      return lambda embedding, ecg: mlp_probe.predict_scores(
          variables, std, output, embedding, width=target.width, **self.manifest["mlp"])
    from ssldml_jax.eval import finetune

    predict = finetune.predictor(self.encoder.model_config, variables, output,
                                 width=target.width, per_device_batch_size=per_device_batch_size)
    return lambda embedding, ecg: predict(ecg)

  def scores(self, embedding: np.ndarray, ecg: Optional[np.ndarray] = None, *,
             per_device_batch_size: int = 32) -> dict[tuple[str, str], np.ndarray]:
    """(head, target name) -> seed-mean scores of ECGs given by their ``embedding`` (n, d) and,
    for fine-tuned heads, their model input ``ecg`` (n, T, 12)."""
    return {(e.head, e.target.name): np.mean(
        [self.fit_scores(f, e.target, embedding, ecg, per_device_batch_size) for f in e.files],
        axis=0) for e in self.ensembles}

  @property
  def needs_ecg(self) -> bool:
    return any(e.head == "finetune" for e in self.ensembles)


def _read_manifest(directory: str) -> dict:
  path = os.path.join(directory, MANIFEST)
  if not os.path.isfile(path):
    raise ProbeFileError(f"{directory} holds no saved probe (no {MANIFEST}); probe an encoder "
                         "first: python -m ssldml_jax.probe ...")
  try:
    with open(path, encoding="utf-8") as fh:
      manifest = json.load(fh)
  except (OSError, ValueError) as e:
    raise ProbeFileError(f"{path}: unreadable ({e})") from None
  if manifest.get("format") != FORMAT:
    raise ProbeFileError(f"{path}: format {manifest.get('format')!r}, this version reads "
                         f"{FORMAT}")
  return manifest


def _encoder(record: dict, encoder_workdir: Optional[str]) -> embed.Encoder:
  from ssldml_jax import cli, metrics_log

  workdir = encoder_workdir or record["workdir"]
  if workdir is None:  # JSON lists back as the config's tuples, as metrics_log.read_config does
    c = ml_collections.ConfigDict(metrics_log.tuples({"model": record["model"], "data": {
        "sampling_rate": record["sampling_rate"], "bandpass": record["bandpass"]}}))
    return embed.random_encoder(c, int(record["seed"]))
  try:
    return embed.pretrained_encoder(workdir)
  except cli.ConfigError as e:
    raise ProbeFileError(str(e).replace("config.encoder_workdir=", "the encoder ")) from None


def load(probe_workdir: str, encoder_workdir: Optional[str] = None) -> SavedProbe:
  """The probe saved in ``probe_workdir``, its encoder rebuilt and checked (module docstring);
  ``encoder_workdir`` replaces the recorded pretrain workdir (moved runs)."""
  directory = os.path.join(os.path.abspath(probe_workdir), HEADS_DIR)
  manifest = _read_manifest(directory)
  record = manifest["encoder"]
  encoder = _encoder(record, encoder_workdir)
  found = params_sha256(encoder.variables)
  if found != record["params_sha256"]:
    was = (f"{record['workdir']} at step {record['step']}" if record["workdir"]
           else f"a random initialisation (seed {record['seed']})")
    now = (f"{encoder.workdir} at step {encoder.step}" if encoder.workdir
           else "this machine's random initialisation")
    raise ProbeFileError(
        f"the encoder differs from the one the probe in {probe_workdir} was fit on: it was "
        f"{was}, parameters sha256 {record['params_sha256'][:12]}...; {now} has "
        f"{found[:12]}...; probe this encoder again, or give the one it was fit on")
  fmt = manifest["input"]
  record_format = ecg_files.RecordFormat(**{
      **fmt, "leads": tuple(fmt["leads"]),
      "build_bandpass": None if fmt["build_bandpass"] is None else tuple(fmt["build_bandpass"]),
      "bandpass": None if fmt["bandpass"] is None else tuple(fmt["bandpass"])})
  probe_targets = [targets.Target.from_json(t) for t in manifest["targets"]]
  by_name = targets.by_name(probe_targets)
  ensembles = [Ensemble(head=e["head"], target=by_name[e["target"]], files=tuple(e["files"]),
                        threshold=e["threshold"]) for e in manifest["ensembles"]]
  return SavedProbe(directory=directory, manifest=manifest, encoder=encoder,
                    record_format=record_format, targets=probe_targets, ensembles=ensembles)
