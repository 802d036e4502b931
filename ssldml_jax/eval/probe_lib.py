"""One probe: ``run_probe(config, workdir)`` probes one encoder end to end.

It embeds the labeled splits with the frozen encoder (``embed``, cached in
``<workdir>/embeddings/``, with any ``config.export_splits``), checks the targets of
``config.probe.targets`` against the dataset's features and reads those the embeddings do not
carry (``targets.resolve``, ``reader.read_features``), keeps the ECGs with known labels
(``subsets.labeled``), trains every head of ``config.probe.heads`` on every target, label
fraction and seed (``fitting``), estimates the table cells and subgroup tests on the test split
(``estimates``), and writes ``fits.npz``, ``probe_results.json`` and ``predictions.csv``
(``probe_files``) and the fitted heads (``saved_probes``, in ``<workdir>/heads/``, what
``predict`` applies to new ECGs); every fit is tagged with the seed its encoder was pretrained
(or initialised) with. A workdir that already holds them is not probed again. Tables and plots
over one or many probes: ``report.write_report``.

The pieces, by job: ``targets`` (what a label is), ``subsets`` (which labels a head sees),
``fitting`` (the heads), ``estimates`` (the statistics), ``probe_files`` (the files),
``saved_probes`` (the heads kept), ``report`` (tables and plots).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import TYPE_CHECKING, Optional

import jax
import ml_collections
import numpy as np

from ssldml_jax import cli, workdirs
from ssldml_jax.eval import (embed, estimates, fitting, probe_config, probe_files, saved_probes,
                             subsets, targets)
from ssldml_jax.eval.probe_files import ProbeOutcome

if TYPE_CHECKING:
  from ssldml_jax.data import ecg_files

_ROLES = ("train", "validation", "test")


def _default_name(config: ml_collections.ConfigDict) -> str:
  if config.probe.get("name"):
    return config.probe.name
  if config.encoder_workdir is None:
    return "random"
  return os.path.basename(os.path.normpath(config.encoder_workdir))


def _check_splits(config: ml_collections.ConfigDict, available, dataset: str) -> tuple[dict, list]:
  """(split of each role, the extra ``export_splits``); a split the dataset lacks names its key."""
  d = config.data
  split_names = {"train": d.train_split, "validation": d.validation_split, "test": d.test_split}
  extra = [s for s in probe_config.split_list(config.export_splits) if s not in
           split_names.values()]
  for key, split in list(split_names.items()) + [("export_splits", s) for s in extra]:
    if split not in available:
      where = "export_splits" if key == "export_splits" else f"data.{key}_split"
      raise cli.ConfigError(f"config.{where}={split!r} is not a split of {dataset} "
                            f"(has {', '.join(sorted(available))})")
  return split_names, extra


def with_features(arrays: dict, builder, split: str, names: tuple) -> dict:
  """``arrays`` of ``split`` with the label features ``names`` added, matched by ``ecg_id``."""
  from ssldml_jax.data import reader

  if not names:
    return arrays
  read = reader.read_features(builder, split, names)
  where = {ecg_id: i for i, ecg_id in enumerate(read["ecg_id"].tolist())}
  rows = np.array([where.get(i, -1) for i in np.asarray(arrays["ecg_id"]).tolist()])
  if (rows < 0).any():
    raise RuntimeError(f"split {split!r}: ECG {arrays['ecg_id'][rows < 0][0]!r} embedded but not "
                       "among the records (the dataset changed?); delete the embeddings cache")
  return dict(arrays, **{n: read[n][rows] for n in names})


def resolve_targets(config: ml_collections.ConfigDict, builder,
                    train_split: str) -> tuple[list, tuple]:
  """(the targets of ``config.probe.targets`` checked against the dataset, the features to read
  beside the embeddings); a target the dataset cannot give is a one-line config error, before
  anything is embedded."""
  from ssldml_jax.data import reader

  features = {name: targets.Feature(*spec) for name, spec in reader.label_features(builder).items()}
  wanted = targets.from_config(config)
  needed = tuple(dict.fromkeys(t.feature for t in wanted if t.feature in features))
  # Parsing every stored Example of the split is slow; only a few kinds of target need it.
  on_train = tuple(dict.fromkeys(t.feature for t in wanted if targets.needs_train(t, features)))
  train = reader.read_features(builder, train_split, on_train) if on_train else {}
  try:
    resolved = targets.resolve(wanted, features, builder.info.full_name, train)
  except ValueError as e:
    raise cli.ConfigError(f"config.probe.targets: {e}") from None
  return resolved, tuple(f for f in needed if f not in embed.FIELDS)


def record_format(data_config: ml_collections.ConfigDict, builder) -> ecg_files.RecordFormat:
  """What the probe's encoder saw: the dataset's records and the model's rate (for ``predict``)."""
  from ssldml_jax.data import ecg_files, pipeline

  info = pipeline.dataset_info(data_config)
  source = builder.builder_config
  band = getattr(source, "bandpass", None)
  return ecg_files.RecordFormat(
      stored_rate=info["stored_sampling_rate"], num_samples=info["stored_num_samples"],
      model_rate=info["sampling_rate"], crop=getattr(source, "crop", "first"),
      build_bandpass=None if band is None else tuple(band),
      bandpass=None if data_config.bandpass is None else tuple(data_config.bandpass))


RANDOM_DIR = "random"


def random_baseline_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The probe of an untrained encoder of ``config.encoder_workdir``'s architecture and input
  (model section, sampling rate and band-pass from its ``config.json``), otherwise ``config``."""
  from ssldml_jax import metrics_log

  out = ml_collections.ConfigDict(config.to_dict())
  pretrained = metrics_log.read_config(config.encoder_workdir)
  with out.unlocked():
    out.model = pretrained.model
    out.data.sampling_rate = pretrained.data.sampling_rate
    out.data.bandpass = pretrained.data.bandpass
    out.encoder_workdir = None
    out.random_baseline = False
    out.probe.name = RANDOM_DIR
  return out


def run_probes(config: ml_collections.ConfigDict, workdir: str) -> list[ProbeOutcome]:
  """``run_probe`` of the encoder, and with ``config.random_baseline`` of a random one of its
  architecture in ``<workdir>/random/`` (none twice when the encoder is random already)."""
  outcomes = [run_probe(config, workdir)]
  if config.random_baseline and config.encoder_workdir is not None:
    outcomes.append(run_probe(random_baseline_config(config),
                              os.path.join(workdir, RANDOM_DIR)))
  return outcomes


def run_probe(config: ml_collections.ConfigDict, workdir: str, name: Optional[str] = None, *,
              estimate: bool = True) -> ProbeOutcome:
  """Probes the encoder of ``config.encoder_workdir`` (None: random); see the module docstring.

  ``estimate=False`` leaves the table rows and subgroup tests out of ``probe_results.json``: the
  main job computes them once from the fits of all of a method's probes (``pooling``).
  """
  probe_config.validate(config)
  workdir = os.path.abspath(workdir)
  name = name or _default_name(config)
  if probe_files.is_done(workdir):
    print(f"probe {name}: results in {workdir} exist (delete {probe_files.RESULTS_FILE} to probe "
          "again)", flush=True)
    return probe_files.load_outcome(workdir)
  workdir = workdirs.prepare(workdir)
  start = time.perf_counter()
  from ssldml_jax.data import pipeline  # Reads TFDS; imported when data is actually needed.

  encoder = embed.load_encoder(config)
  data_config = embed.data_config_for(config, encoder)
  split_names, extra = _check_splits(config, pipeline.dataset_info(data_config)["splits"],
                                     data_config.name)
  builder = pipeline.load_builder(data_config)
  probe_targets, extra_features = resolve_targets(config, builder, split_names["train"])
  embed_fn = embed.make_embed_fn(encoder.module)
  directory = os.path.join(workdir, embed.EMBEDDINGS_DIR)
  raw = {key: embed.cached_split(encoder, data_config, split, directory, embed_fn=embed_fn)
         for key, split in split_names.items()}
  for split in extra:
    embed.cached_split(encoder, data_config, split, directory, embed_fn=embed_fn)
  raw = {key: with_features(value, builder, split_names[key], extra_features)
         for key, value in raw.items()}
  emb = {key: subsets.labeled(value, key, probe_targets) for key, value in raw.items()}
  print(f"probe {name}: embedded train/validation/test = "
        + "/".join(str(len(emb[k]["ecg_id"])) for k in _ROLES)
        + f" labeled ECGs in {time.perf_counter() - start:.1f} s", flush=True)

  def finetune_splits():
    from ssldml_jax.eval import finetune

    finetune.require_single_process()
    loaded = [subsets.labeled(with_features(pipeline.read_split(data_config, split_names[k]),
                                             builder, split_names[k], extra_features), k,
                              probe_targets) for k in _ROLES]
    return (encoder, *loaded)

  fits = fitting.fit_all(config, emb, finetune_splits, log=lambda m: print(m, flush=True),
                         probe_targets=probe_targets)
  # replace() keeps the score arrays, so a fit standing for several seeds still counts once.
  fits = [dataclasses.replace(f, pretrain_seed=encoder.seed) for f in fits]
  rows, tests = [], []
  if estimate:
    rows, tests, _ = estimates.evaluate(config, fits, emb["test"], name, probe_targets)
  outcome = ProbeOutcome(name=name, workdir=workdir, rows=rows, tests=tests,
                         fits=estimates.fit_records(fits, emb["test"], probe_targets))
  if jax.process_index() == 0:  # every process computed the same; one writes
    probe_files.write_predictions(os.path.join(workdir, probe_files.PREDICTIONS_FILE), config,
                                  fits, emb, probe_targets)
    probe_files.save_fits(outcome.fits_path, fits, emb["test"]["ecg_id"])
    saved_probes.save(os.path.join(workdir, saved_probes.HEADS_DIR), config=config, fits=fits,
                      probe_targets=probe_targets, validation=emb["validation"],
                      encoder=encoder, record_format=record_format(data_config, builder),
                      dataset=data_config.name)
    labeled = {key: {"split": split_names[key], "ecgs": len(raw[key]["ecg_id"]),
                     "labeled": len(emb[key]["ecg_id"])} for key in _ROLES}
    probe_files.save_outcome(os.path.join(workdir, probe_files.RESULTS_FILE), outcome,
                             {"source": encoder.source, "dataset": data_config.name,
                              "labeled_ecgs": labeled,
                              "config": json.loads(config.to_json_best_effort())})
  print(f"probe {name}: done in {time.perf_counter() - start:.1f} s", flush=True)
  return outcome
