"""Whether a stored dataset is the one this version wrote, and errors that name what is damaged.

``check_dataset(builder, split)`` runs when a split is opened for reading: every shard must exist,
open (a truncated or overwritten array_record file loses the footer that indexes it) and hold the
number of records ``dataset_info.json`` lists, and the stored features must be those
``tfds_common.ecg_features`` writes. A record that fails later, when it is read, becomes
``damaged_record(...)``. Both are ``DamagedDataError``: one line naming the dataset, the split, the
file and the record where known, and the command that rebuilds the dataset.
"""

from __future__ import annotations

import contextlib
import os
from typing import Union

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module

from ssldml_jax import cli
from ssldml_jax.data import records, tfds_common


class DamagedDataError(cli.RunError):
  """A dataset's files cannot be read as this version writes them; the message names the dataset,
  split and file (and record), and how to rebuild it."""


def rebuild_hint(builder: tfds.core.DatasetBuilder) -> str:
  """The command that builds ``builder``'s dataset again, for messages."""
  name = builder.name + (f"/{builder.builder_config.name}" if builder.builder_config else "")
  return (f"rebuild it with python -m ssldml_jax.data.build {name} "
          f"--data_dir={builder.data_dir_root} --overwrite (and its --manual_dir, if any)")


def check_dataset(builder: tfds.core.DatasetBuilder, split: str) -> None:
  """Raises ``DamagedDataError`` unless ``split``'s shards are all there, readable and of the
  sizes ``dataset_info.json`` lists, and the stored features are those this version writes."""
  have = builder.info.features
  stored = os.path.join(os.fspath(builder.data_path), "features.json")
  if os.path.isfile(stored):  # What the records hold, which the builder's code may no longer say.
    try:
      have = tfds.features.FeatureConnector.from_config(os.fspath(builder.data_path))
    except Exception as e:  # pylint: disable=broad-except
      raise DamagedDataError(f"{builder.info.full_name}: {stored} cannot be read "
                             f"({cli.error_line(e)}); " + rebuild_hint(builder)) from None
  if "ecg" not in have or len(have["ecg"].shape) != 2:
    raise DamagedDataError(f"{builder.info.full_name}: no 'ecg' feature of shape (T, "
                           f"{records.NUM_LEADS}); it was not written by this version; "
                           + rebuild_hint(builder))
  want = tfds_common.ecg_features(int(have["ecg"].shape[0]))
  for key, feature in want.items():
    if key not in have:
      problem = "is missing"
    elif (have[key].np_dtype, tuple(have[key].shape)) != (feature.np_dtype, tuple(feature.shape)):
      problem = (f"is {np.dtype(have[key].np_dtype).name} {list(have[key].shape)}, this version "
                 f"writes {np.dtype(feature.np_dtype).name} {list(feature.shape)}")
    else:
      continue
    raise DamagedDataError(f"{builder.info.full_name}: feature {key!r} {problem} (this version "
                           f"writes {', '.join(want)}); " + rebuild_hint(builder))
  for instruction in builder.info.splits[split].file_instructions:
    path = instruction.filename
    where = f"{builder.info.full_name} split {split!r}: shard {path}"
    if not os.path.isfile(path):
      raise DamagedDataError(f"{where} is missing; " + rebuild_hint(builder))
    reader = array_record_module.ArrayRecordReader(path)
    try:
      if not reader.ok():  # Its footer is gone (truncated) or it is not an array_record file.
        try:
          reader.read([0])
          detail = ""
        except Exception as e:  # pylint: disable=broad-except  # The reader's own words.
          detail = f" ({cli.error_line(e)})"
        raise DamagedDataError(f"{where} is damaged (truncated or overwritten){detail}; "
                               + rebuild_hint(builder))
      if reader.num_records() != instruction.examples_in_shard:
        raise DamagedDataError(f"{where} holds {reader.num_records()} records where "
                               f"dataset_info.json lists {instruction.examples_in_shard}; "
                               + rebuild_hint(builder))
    finally:
      with contextlib.suppress(Exception):  # Closing a failed reader raises its error again.
        reader.close()


def damaged_record(builder: tfds.core.DatasetBuilder, split: str, index: int,
                   problem: Union[str, BaseException]) -> DamagedDataError:
  """The error for record ``index`` of ``split`` (an error reading it, or a sentence), naming
  the shard that holds it and its place there."""
  if isinstance(problem, BaseException):
    problem = f"cannot be read ({cli.error_line(problem)})"
  where, offset = "", index
  for instruction in builder.info.splits[split].file_instructions:
    if offset < instruction.take:
      where = f" (record {instruction.skip + offset} of {instruction.filename})"
      break
    offset -= instruction.take
  return DamagedDataError(f"{builder.info.full_name} split {split!r}: record {index}{where} "
                          f"{problem}; " + rebuild_hint(builder))
