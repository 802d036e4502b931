"""``python -m ssldml_jax.predict --probe=PROBE_WORKDIR --input=PATH [PATH ...] --output=FILE.csv``

Applies a probed encoder and its saved heads (``<PROBE_WORKDIR>/heads/``, ``saved_probes``) to
new ECGs. A PATH is a WFDB record, an HDF5 or ``.npy`` file, a folder of them, or a built
dataset split ``dataset:NAME/CONFIG:SPLIT`` (``ecg_files``; e.g. ``dataset:ecg_synth/tiny:test``).

Each ECG is read with the dataset builders' readers, made into a record exactly as a build makes
one (leads by name into the project's order, resampled to the rate the encoder's dataset
stores, cut to its length, checked: NaN, flat or missing leads, a wrong length or an unknown
rate), then into the model's input as the input pipeline makes it, embedded under ``pmap`` in
padded batches, and scored by every saved (head, target): the seed mean of the heads fit on
100% of the labels, as in the probe's ``predictions.csv``.

Outputs, each written under a temporary name and renamed when complete:

- ``FILE.csv``: ``ecg_id, source``, then for each target and head ``y_score_<column>[_<head>]``
  (the probability of mPCWP > threshold, the predicted mPCWP, or per label / class) and
  ``y_pred_<column>[_<head>]`` (the saved rule: 0/1 at the validation threshold, the class of the
  highest score); the primary head's columns unsuffixed, as in ``predictions.csv``;
- ``FILE.errors.csv``: ``ecg_id, source, reason``, one row per ECG that failed (none: the header);
- ``--embeddings=FILE.npz``: ``embedding``, ``ecg_id``, ``source`` and the encoder.

A bad ECG is reported and the run goes on (``--strict``: the first one stops the run and nothing
is written); the exit status is 1 when any ECG failed, 2 for a usage error.
"""

from __future__ import annotations

import csv
import dataclasses
import sys
import time
from typing import Sequence

from absl import app, flags
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_string("probe", None, "A probe workdir (python -m ssldml_jax.probe) with heads/.")
flags.DEFINE_multi_string("input", None, "ECG files, folders or dataset:NAME/CONFIG:SPLIT; more "
                                         "paths may follow as arguments.")
flags.DEFINE_string("output", None, "The predictions CSV to write.")
flags.DEFINE_bool("strict", False, "Stop at the first bad ECG (and write nothing).")
flags.DEFINE_string("embeddings", None, "Also write the embeddings to this .npz file.")
flags.DEFINE_float("sampling_rate", None, "Hz of files that do not say (.npy; HDF5 without a "
                                          "rate attribute).")
flags.DEFINE_list("leads", None, "Lead order of .npy / HDF5 arrays without lead names "
                                 "(default I,II,III,aVR,aVL,aVF,V1,...,V6).")
flags.DEFINE_string("encoder_workdir", None, "The pretrain workdir the probe was fit on, if it "
                                             "moved (its weights are checked).")
flags.DEFINE_string("data_dir", None, "Data directory of dataset: inputs (default "
                                      "$SSLDML_DATA_DIR, else ~/ssldml_data).")
flags.DEFINE_integer("per_device_batch_size", 32, "ECGs per device and batch.", lower_bound=1)


class UsageError(ValueError):
  """A flag or input that makes the run impossible; printed as one line, exit status 2."""


def errors_path(output: str) -> str:
  """``FILE.errors.csv`` beside ``FILE.csv``."""
  stem = output[:-4] if output.lower().endswith(".csv") else output
  return stem + ".errors.csv"


def _write_csv(path: str, header: Sequence[str], rows: Sequence[Sequence]) -> None:
  from ssldml_jax import atomic

  with atomic.replacing(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)


def output_columns(probe, scores: dict) -> dict[str, list]:
  """The score and decision columns of ``predict``'s CSV (module docstring) from
  ``SavedProbe.scores``."""
  from ssldml_jax.eval import probe_files, targets

  out: dict[str, list] = {}
  for target in probe.targets:
    names = targets.columns(target)
    for ensemble in (e for e in probe.ensembles if e.target.name == target.name):
      score = scores[(ensemble.head, target.name)]
      columns = targets.as_columns(target, score)
      for name, column in zip(names, columns):
        out[probe_files.score_column(name, ensemble.head, probe.primary_head)] = [
            f"{v:.9g}" for v in column.tolist()]
      kind = target.kind
      if kind == "multiclass":
        name = probe_files.score_column(target.name, ensemble.head, probe.primary_head, "pred")
        out[name] = [target.classes[k] for k in np.argmax(score, axis=1).tolist()]
      elif kind in ("binary", "multilabel"):
        thresholds = np.atleast_1d(np.asarray(ensemble.threshold, np.float64))
        for name, column, threshold in zip(names, columns, thresholds):
          pred = probe_files.score_column(name, ensemble.head, probe.primary_head, "pred")
          out[pred] = (column >= threshold).astype(int).tolist()
  return out


@dataclasses.dataclass
class Summary:
  """What a run did: ECGs scored and failed, and seconds spent reading, checking and resampling
  them (``read_s``) and in the encoder and heads (``model_s``)."""
  scored: int = 0
  failed: int = 0
  read_s: float = 0.0
  model_s: float = 0.0

  @property
  def ecg_per_s(self) -> float:
    return (self.scored + self.failed) / max(self.read_s + self.model_s, 1e-9)


def run(probe_workdir: str, inputs: Sequence[str], output: str, *, strict: bool = False,
        embeddings_path: str | None = None, sampling_rate: float | None = None,
        leads: Sequence[str] | None = None, encoder_workdir: str | None = None,
        data_dir: str | None = None, per_device_batch_size: int = 32,
        progress: bool = True) -> Summary:
  """The whole program (module docstring). Raises ``UsageError`` (and, with ``strict``,
  ``BadRecordError`` for the first bad ECG) before writing anything."""
  import jax

  from ssldml_jax import parallel
  from ssldml_jax.data import ecg_files, records
  from ssldml_jax.data.records import BadRecordError
  from ssldml_jax.eval import embed, saved_probes

  if not inputs:
    raise UsageError("--input: give at least one ECG file, folder or dataset split")
  try:
    probe = saved_probes.load(probe_workdir, encoder_workdir)
  except saved_probes.ProbeFileError as e:
    raise UsageError(f"--probe: {e}") from None
  fmt = probe.record_format
  lead_order = tuple(leads) if leads else records.LEADS
  items = ecg_files.list_inputs(inputs, default_rate=np.nan if sampling_rate is None
                                else float(sampling_rate), leads=lead_order, data_dir=data_dir,
                                log=lambda m: print(m, file=sys.stderr, flush=True))
  if not items:
    raise UsageError(f"--input: no ECG found in {', '.join(inputs)}")
  encoder = probe.encoder
  embed_fn = embed.make_embed_fn(encoder.module)
  replicated = parallel.replicate(encoder.variables)
  batch = jax.local_device_count() * per_device_batch_size
  summary, errors, done = Summary(), [], []
  ids, sources, embedding_parts, score_parts = [], [], [], []
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=len(items), unit="ECG", desc="predict", dynamic_ncols=True, file=sys.stderr)

  def flush():
    if not done:
      return
    start = time.perf_counter()
    x = records.model_input(np.stack([r for _, r in done]), fmt.stored_rate, fmt.model_rate,
                            fmt.bandpass)
    summary.read_s += time.perf_counter() - start
    start = time.perf_counter()
    emb = embed.embed_array(embed_fn, replicated, x, per_device_batch_size)
    score_parts.append(probe.scores(emb, x if probe.needs_ecg else None,
                                    per_device_batch_size=per_device_batch_size))
    summary.model_s += time.perf_counter() - start
    embedding_parts.append(emb)
    ids.extend(item.ecg_id for item, _ in done)
    sources.extend(item.source for item, _ in done)
    if bar is not None:
      bar.update(len(done))
    done.clear()

  for item in items:
    start = time.perf_counter()
    try:
      record = ecg_files.as_record(item.read(), fmt, item.source)
    except (OSError, ValueError, KeyError) as e:  # BadRecordError, or what a library raised
      reason = _reason(e, item.source)
      if strict:
        raise BadRecordError(f"{item.source}: {reason} (strict mode: nothing written)") from None
      errors.append((item.ecg_id, item.source, reason))
      if bar is not None:
        bar.update(1)
      continue
    finally:
      summary.read_s += time.perf_counter() - start
    done.append((item, record))
    if len(done) == batch:
      flush()
  flush()
  if bar is not None:
    bar.close()

  n = len(ids)
  if n:
    scores = {key: np.concatenate([part[key] for part in score_parts]) for key in score_parts[0]}
  else:  # every ECG failed: the files still say so, with their columns
    scores = {(e.head, e.target.name): np.zeros((0, e.target.width)[:1 + (e.target.width > 1)])
              for e in probe.ensembles}
  columns = output_columns(probe, scores)
  _write_csv(output, ["ecg_id", "source"] + list(columns),
             [[ids[i], sources[i]] + [columns[c][i] for c in columns] for i in range(n)])
  bad_path = errors_path(output)
  _write_csv(bad_path, ["ecg_id", "source", "reason"], errors)
  if embeddings_path:
    from ssldml_jax import atomic

    dim = int(encoder.model_config.embedding_dim)
    with atomic.replacing(embeddings_path, suffix=".npz") as tmp:
      np.savez(tmp, embedding=(np.concatenate(embedding_parts) if n
                               else np.zeros((0, dim), np.float32)),
               ecg_id=np.asarray(ids, str), source=np.asarray(sources, str),
               encoder=np.asarray(encoder.source),
               params_sha256=np.asarray(probe.manifest["encoder"]["params_sha256"]))
  summary.scored, summary.failed = n, len(errors)
  print(f"predict: {n} ECG(s) scored -> {output}"
        + (f"; {len(errors)} failed -> {bad_path}" if errors else "")
        + f"; {summary.ecg_per_s:.1f} ECG/s (reading and checking {summary.read_s:.2f} s, model "
        f"{summary.model_s:.2f} s)", file=sys.stderr, flush=True)
  return summary


def _reason(error: Exception, source: str) -> str:
  """The error's sentence without the file name it starts with (the row names the file)."""
  text = str(error)
  return text[len(source) + 2:] if text.startswith(source + ": ") else text


def main(argv: Sequence[str]) -> None:
  from absl import logging

  from ssldml_jax.data.records import BadRecordError

  logging.set_verbosity(logging.ERROR)
  inputs = list(FLAGS.input or []) + list(argv[1:])
  for name in ("probe", "output"):
    if not FLAGS[name].value:
      _fail(f"--{name} is required", 2)
  try:
    summary = run(FLAGS.probe, inputs, FLAGS.output, strict=FLAGS.strict,
                 embeddings_path=FLAGS.embeddings, sampling_rate=FLAGS.sampling_rate,
                 leads=FLAGS.leads, encoder_workdir=FLAGS.encoder_workdir,
                 data_dir=FLAGS.data_dir, per_device_batch_size=FLAGS.per_device_batch_size)
  except UsageError as e:
    _fail(str(e), 2)
  except BadRecordError as e:
    _fail(str(e), 1)
  sys.exit(1 if summary.failed else 0)


def _fail(message: str, status: int) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


if __name__ == "__main__":
  app.run(main)
