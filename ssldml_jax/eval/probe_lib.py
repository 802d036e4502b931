"""One probe: ``run_probe(config, workdir)`` probes one encoder end to end.

It embeds the labeled splits with the frozen encoder (``embed``, cached in
``<workdir>/embeddings/``, with any ``config.export_splits``), keeps the ECGs with known labels
(``subsets.labeled``), trains every head of ``config.probe.heads`` on every target, label
fraction and seed (``fitting``), estimates the table cells and subgroup tests on the test split
(``estimates``), and writes ``fits.npz``, ``probe_results.json`` and ``predictions.csv``
(``probe_files``); every fit is tagged with the seed its encoder was pretrained (or initialised)
with. A workdir that already holds them is not probed again. Tables and plots over one
or many probes: ``report.write_report``.

The pieces, by job: ``targets`` (what a label is), ``subsets`` (which labels a head sees),
``fitting`` (the heads), ``estimates`` (the statistics), ``probe_files`` (the files),
``report`` (tables and plots).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Optional

import jax
import ml_collections

from ssldml_jax import cli, workdirs
from ssldml_jax.eval import embed, estimates, fitting, probe_config, probe_files, subsets
from ssldml_jax.eval.probe_files import ProbeOutcome

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
  embed_fn = embed.make_embed_fn(encoder.module)
  directory = os.path.join(workdir, embed.EMBEDDINGS_DIR)
  raw = {key: embed.cached_split(encoder, data_config, split, directory, embed_fn=embed_fn)
         for key, split in split_names.items()}
  for split in extra:
    embed.cached_split(encoder, data_config, split, directory, embed_fn=embed_fn)
  emb = {key: subsets.labeled(value, key) for key, value in raw.items()}
  print(f"probe {name}: embedded train/validation/test = "
        + "/".join(str(len(emb[k]["ecg_id"])) for k in _ROLES)
        + f" labeled ECGs in {time.perf_counter() - start:.1f} s", flush=True)

  def finetune_splits():
    from ssldml_jax.eval import finetune

    finetune.require_single_process()
    loaded = [subsets.labeled(pipeline.read_split(data_config, split_names[k]), k) for k in _ROLES]
    return (encoder, *loaded)

  fits = fitting.fit_all(config, emb, finetune_splits, log=lambda m: print(m, flush=True))
  # replace() keeps the score arrays, so a fit standing for several seeds still counts once.
  fits = [dataclasses.replace(f, pretrain_seed=encoder.seed) for f in fits]
  rows, tests = [], []
  if estimate:
    rows, tests, _ = estimates.evaluate(config, fits, emb["test"], name)
  outcome = ProbeOutcome(name=name, workdir=workdir, rows=rows, tests=tests,
                         fits=estimates.fit_records(fits, emb["test"],
                                                    float(config.task.pcwp_threshold)))
  if jax.process_index() == 0:  # every process computed the same; one writes
    probe_files.write_predictions(os.path.join(workdir, probe_files.PREDICTIONS_FILE), config,
                                  fits, emb)
    probe_files.save_fits(outcome.fits_path, fits, emb["test"]["ecg_id"])
    probe_files.save_outcome(os.path.join(workdir, probe_files.RESULTS_FILE), outcome,
                             {"source": encoder.source, "dataset": data_config.name,
                              "config": json.loads(config.to_json_best_effort())})
  print(f"probe {name}: done in {time.perf_counter() - start:.1f} s", flush=True)
  return outcome
