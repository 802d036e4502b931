"""Builds a dataset: ``python -m ssldml_jax.data.build NAME[/CONFIG] [--data_dir=DIR]
[--manual_dir=DIR] [--strict] [--overwrite]``.

Builds a dataset into ``DIR/NAME/CONFIG/VERSION`` and prints its build report. ``NAME`` is a
module of this package (``ssldml_jax.data.NAME``) that defines a TFDS builder: a new dataset plugs
in by adding its file, with no registry to edit. The data directory is ``--data_dir``, else
``$SSLDML_DATA_DIR``, else ``~/ssldml_data``; never inside the package.

One build of a dataset at a time: a build holds a lock beside the dataset
(``DIR/NAME/CONFIG/.build-VERSION.lock``, see ``ssldml_jax.locks``), and another build of the same
dataset, from any process, job or host that shares the data directory, waits for it and then uses
its dataset. So every process of a multi-process run may call ``ensure_built``: one builds, the
others wait and read the same files. A build whose process dies leaves a stale lock that the next
build takes over (at once on the same host, a minute after its last heartbeat from another).
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import shutil
import sys
import tempfile
from typing import Optional, Type

import tensorflow_datasets as tfds

from ssldml_jax import cli, locks, workdirs
from ssldml_jax.data import records, tfds_common

DATA_DIR_ENV = "SSLDML_DATA_DIR"
# How long a build waits for another build of the same dataset (a live one: a dead builder's lock
# goes stale within a minute). Real datasets can take hours to build on a small host.
BUILD_WAIT_S = 12 * 3600.0
DEFAULT_DATA_DIR = "~/ssldml_data"
_PACKAGE = "ssldml_jax.data"
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DatasetError(ValueError):
  """A dataset name, config or directory that cannot be used; the message says what exists."""


def resolve_data_dir(data_dir: Optional[str] = None) -> str:
  """``data_dir``, else ``$SSLDML_DATA_DIR``, else ``~/ssldml_data``, as an absolute path."""
  path = data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.commonpath([path, _PACKAGE_ROOT]) == _PACKAGE_ROOT:
    raise DatasetError(f"data directory {path} is inside the ssldml_jax package; choose another "
                       f"(--data_dir or ${DATA_DIR_ENV})")
  return path


def _builder_classes(module) -> list[Type[tfds.core.DatasetBuilder]]:
  return [obj for obj in vars(module).values()
          if inspect.isclass(obj) and issubclass(obj, tfds.core.DatasetBuilder)
          and not inspect.isabstract(obj) and obj.__module__ == module.__name__]


def available_datasets() -> list[str]:
  """``name/config`` of every builder defined by a module of this package."""
  package = importlib.import_module(_PACKAGE)
  found = []
  for info in pkgutil.iter_modules(package.__path__):
    try:
      module = importlib.import_module(f"{_PACKAGE}.{info.name}")
    except Exception:  # pylint: disable=broad-except
      continue  # A module that does not import here (e.g. optional deps) is no dataset to list.
    for cls in _builder_classes(module):
      configs = [c.name for c in cls.BUILDER_CONFIGS] or [None]
      found += [cls.name if c is None else f"{cls.name}/{c}" for c in configs]
  return sorted(found)


def builder_class(name: str) -> Type[tfds.core.DatasetBuilder]:
  """The TFDS builder class defined by module ``ssldml_jax.data.<name>``."""
  if not name.isidentifier():
    raise DatasetError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")
  try:
    module = importlib.import_module(f"{_PACKAGE}.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"{_PACKAGE}.{name}":
      raise
    raise DatasetError(
        f"unknown dataset {name!r}; available: {', '.join(available_datasets())}") from None
  classes = _builder_classes(module)
  named = [cls for cls in classes if cls.name == name]
  if len(named) == 1 or len(classes) == 1:
    return (named or classes)[0]
  raise DatasetError(f"module {module.__name__} defines {len(classes)} dataset builders, none "
                     f"named {name!r}; available: {', '.join(available_datasets())}")


def make_builder(name: str, data_dir: Optional[str] = None, *,
                 strict: bool = False) -> tfds.core.DatasetBuilder:
  """The builder of ``NAME[/CONFIG]`` (its default config when none is given) over ``data_dir``."""
  base, _, config = name.partition("/")
  cls = builder_class(base)
  configs = [c.name for c in cls.BUILDER_CONFIGS]
  if config and config not in configs:
    raise DatasetError(f"unknown config {config!r} of dataset {base!r}; available: "
                       + ", ".join(f"{base}/{c}" for c in configs))
  kwargs = {"data_dir": resolve_data_dir(data_dir)}
  if config:
    kwargs["config"] = config
  if issubclass(cls, tfds_common.EcgBuilder):
    kwargs["strict"] = strict
  return cls(**kwargs)


def build(name: str, data_dir: Optional[str] = None, *, manual_dir: Optional[str] = None,
          strict: bool = False, overwrite: bool = False,
          wait_s: float = BUILD_WAIT_S) -> tfds.core.DatasetBuilder:
  """Builds ``NAME[/CONFIG]`` (again, with ``overwrite``) and returns its builder.

  Waits up to ``wait_s`` seconds for another build of the same dataset and, unless
  ``overwrite``, uses what it built (``locks.LockHeld`` when the wait times out). Raises
  ``DatasetError`` when the data directory is not a writable directory.
  """
  try:
    root = workdirs.prepare(resolve_data_dir(data_dir), "data directory")
  except workdirs.WorkdirError as e:
    raise DatasetError(str(e)) from None
  builder = make_builder(name, root, strict=strict)
  lock = build_lock(builder)

  def waiting(holder: dict) -> None:
    print(f"{builder.info.full_name} is being built by {locks.describe(holder)}; waiting for it "
          f"(up to {wait_s / 3600:.3g} h)", flush=True)

  lock.acquire(wait_s=wait_s, on_wait=waiting)
  try:
    builder = make_builder(name, root, strict=strict)  # Another build may have finished it.
    if builder.is_prepared() and not overwrite:
      return builder
    config = tfds.download.DownloadConfig(
        manual_dir=os.path.abspath(os.path.expanduser(manual_dir)) if manual_dir else None)
    print(f"building {builder.info.full_name} in {root}", flush=True)
    if builder.is_prepared():
      return _rebuild(name, root, builder, config, strict=strict)
    builder.download_and_prepare(download_config=config)
    return builder
  finally:
    lock.release()


def build_lock(builder: tfds.core.DatasetBuilder) -> locks.HolderLock:
  """The lock that one build of ``builder``'s dataset holds: ``.build-VERSION.lock`` beside it."""
  return locks.HolderLock(
      os.path.join(os.path.dirname(os.fspath(builder.data_path)), f".build-{builder.version}.lock"),
      f"dataset {builder.info.full_name} in {builder.data_dir_root}", doing="being built")


def _rebuild(name: str, data_dir: Optional[str], old: tfds.core.DatasetBuilder,
             config: tfds.download.DownloadConfig, *, strict: bool) -> tfds.core.DatasetBuilder:
  """Builds beside the existing dataset and swaps it in, so a failed rebuild keeps the old one.

  (TFDS's own overwrite mode deletes the old dataset before it starts.)
  """
  root = resolve_data_dir(data_dir)
  staging = tempfile.mkdtemp(prefix=".rebuild-", dir=root)
  try:
    fresh = make_builder(name, staging, strict=strict)
    fresh.download_and_prepare(download_config=config)
    target = os.fspath(old.data_path)
    # An ``incomplete.`` name is one TFDS never reads as a dataset version.
    retired = os.path.join(os.path.dirname(target),
                           f"incomplete.replaced_{os.path.basename(staging)}")
    os.rename(target, retired)
    os.rename(os.fspath(fresh.data_path), target)
    shutil.rmtree(retired)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return make_builder(name, data_dir, strict=strict)


def ensure_built(name: str, data_dir: Optional[str] = None, *, build_if_missing: bool = True,
                 manual_dir: Optional[str] = None, strict: bool = False,
                 overwrite: bool = False,
                 wait_s: float = BUILD_WAIT_S) -> tfds.core.DatasetBuilder:
  """The builder of a complete ``NAME[/CONFIG]`` dataset, building it first if it is missing
  (or waiting for the process that builds it: see ``build``)."""
  builder = make_builder(name, data_dir, strict=strict)
  if builder.is_prepared() and not overwrite:
    return builder
  if not build_if_missing:
    where = resolve_data_dir(data_dir)
    raise DatasetError(f"dataset {name} is not built in {where}; run "
                       f"python -m ssldml_jax.data.build {name} --data_dir={where}")
  builder = build(name, data_dir, manual_dir=manual_dir, strict=strict, overwrite=overwrite,
                  wait_s=wait_s)
  report = tfds_common.read_build_report(builder)
  if report is not None:
    print(records.BuildReport(**report).summary(), flush=True)
  return builder


def main(argv: list[str]) -> int:
  import argparse
  parser = argparse.ArgumentParser(prog="python -m ssldml_jax.data.build",
                                   description="Build an ECG dataset (TFDS, array_record).")
  parser.add_argument("name", help="NAME[/CONFIG], e.g. ecg_synth/default")
  parser.add_argument("--data_dir", default=None,
                      help=f"default: ${DATA_DIR_ENV}, else {DEFAULT_DATA_DIR}")
  parser.add_argument("--manual_dir", default=None,
                      help="where the downloaded source files are (real datasets)")
  parser.add_argument("--strict", action="store_true", help="stop at the first bad record")
  parser.add_argument("--overwrite", action="store_true", help="rebuild an existing dataset")
  args = parser.parse_args(argv)
  try:
    builder = make_builder(args.name, args.data_dir, strict=args.strict)
    if builder.is_prepared() and not args.overwrite:
      print(f"{builder.info.full_name} already built in {builder.data_dir} (--overwrite rebuilds)")
    else:
      builder = build(args.name, args.data_dir, manual_dir=args.manual_dir, strict=args.strict,
                      overwrite=args.overwrite)
  except (DatasetError, records.BadRecordError, cli.RunError) as e:
    # BadRecordError: strict mode's first bad record, or (its subclass) unusable source files;
    # RunError: a full disk, or another build that did not finish in time.
    print(f"error: {e}", file=sys.stderr)
    return 2 if isinstance(e, DatasetError) else getattr(e, "exit_status", 1)
  report = tfds_common.read_build_report(builder)
  if report is not None:
    print(records.BuildReport(**report).summary())
  print(f"data: {builder.data_dir}")
  for split, info in sorted(builder.info.splits.items()):
    print(f"  {split}: {info.num_examples} examples")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
