"""The command-line shell shared by every entry point: ``--config``, ``--workdir`` and clear errors.

Each entry point is ``cli.run(main)`` with ``main(config, workdir)``. Flags follow the flax
examples: ``--config=configs/X.py[:arg]`` loads ``get_config(arg)`` and ``--config.a.b=value``
overrides a field. A missing file, an unknown key or a bad value ends the program with one line
that names the key and what is allowed, never a traceback.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from typing import Any, Callable, Iterable, Iterator, Optional

import ml_collections
from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
# The dotted keys given as ``--config.key=value`` in this program's command line (set by ``run``).
_OVERRIDES: tuple[str, ...] = ()
# While a ``recording()`` block runs: every key that a check or ``get_path`` looked up.
_READ_LOG: Optional[set[str]] = None


class ConfigError(ValueError):
  """A config key holds a value the program cannot use; the message names the key."""


class RunError(RuntimeError):
  """An expected failure of a run that a sentence explains (damaged data, a full disk, a workdir
  in use by another run, a preemption notice): ``run`` prints the message as one line and exits
  with ``exit_status``."""
  exit_status = 1


def define_flags(workdir_required: bool = True) -> None:
  config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file, optionally :arg.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and outputs.",
                      required=workdir_required)


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads ``path[:arg]`` the way ``--config`` does (used to explain bad overrides)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"--config: no such file {path!r}")
  module_spec = importlib.util.spec_from_file_location("_ssldml_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _explain_override_error(argv: list[str]) -> Optional[str]:
  """Finds the first ``--config.x.y=`` override whose key does not exist in the loaded config."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return None
  try:
    config = load_config_file(spec)
  except ConfigError as e:
    return str(e)
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    key = arg[len("--config."):].split("=", 1)[0]
    node, walked = config, []
    for part in key.split("."):
      if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
        allowed = ", ".join(sorted(node.keys())) if isinstance(
            node, (ml_collections.ConfigDict, dict)) else "(none: not a section)"
        where = ".".join(walked) or "the top level"
        return f"unknown config key {key!r}: {where} has {allowed}"
      node = node[part]
      walked.append(part)
  return None


def error_line(error: BaseException, limit: int = 200) -> str:
  """``Type: first line of the message``, the line cut to ``limit`` characters (``...`` marks a
  cut): an exception from a library said in one line of a message of ours."""
  text = str(error).strip()
  line = text.splitlines()[0] if text else ""
  return f"{type(error).__name__}: {line[:limit]}{'...' if len(line) > limit else ''}"


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    rest = FLAGS(argv)
    config = FLAGS.config  # Loading happens lazily; force it here so errors surface now.
  except flags.Error as e:
    lines = [line for line in str(e).splitlines() if line.strip()]
    if "Traceback (most recent call last):" in lines and ConfigError.__name__ in lines[-1]:
      # get_config(arg) raised ConfigError: its message is the traceback's last line.
      _fail(f"{lines[0].split(': Error whilst')[0]}: {lines[-1].split(': ', 1)[-1]}")
    _fail(lines[0])
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    _fail(_explain_override_error(argv) or f"bad --config: {e}")
  if not isinstance(config, ml_collections.ConfigDict):
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
    _fail(f"--config: cannot load {spec!r} (a configs/*.py file with get_config() is expected)")
  return rest


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def run(main: Callable[[ml_collections.ConfigDict, str], Any]) -> None:
  """Runs ``main(config, workdir)`` as an absl program; a ConfigError (exit status 2) or a
  RunError (its ``exit_status``) becomes a one-line error."""

  def absl_main(argv):
    if len(argv) > 1:
      _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    global _OVERRIDES
    _OVERRIDES = tuple(config_flags.get_override_values(FLAGS["config"]))
    try:
      main(FLAGS.config, FLAGS.workdir)
    except ConfigError as e:
      _fail(str(e))
    except RunError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(e.exit_status)

  app.run(absl_main, flags_parser=_parse_flags)


def overrides() -> tuple[str, ...]:
  """The dotted keys this program's command line overrode (empty when called from Python)."""
  return _OVERRIDES


@contextlib.contextmanager
def recording() -> Iterator[set[str]]:
  """Collects the dotted key of every config lookup made through this module's checks."""
  global _READ_LOG
  outer, _READ_LOG = _READ_LOG, set()
  try:
    yield _READ_LOG
  finally:
    if outer is not None:
      outer |= _READ_LOG
    _READ_LOG = outer


def parse_words(arg: Optional[str], allowed: Iterable[str]) -> set[str]:
  """A config file's ``:arg``: ``"tiny"`` -> ``{"tiny"}``; an unknown word is a one-line error."""
  words = {w.strip() for w in (arg or "").split(",") if w.strip()}
  allowed = tuple(allowed)
  unknown = sorted(words - set(allowed))
  if unknown:
    raise ConfigError(f"unknown config argument(s) {', '.join(map(repr, unknown))}; the words "
                      "allowed after ':' are " + (", ".join(map(repr, allowed)) or "none"))
  return words


def check_choice(config: ml_collections.ConfigDict, key: str, allowed: Iterable[Any]) -> Any:
  """Returns ``config.<key>`` (dotted) if it is one of ``allowed``; otherwise a ConfigError."""
  value = get_path(config, key)
  allowed = list(allowed)
  if value not in allowed:
    raise ConfigError(f"config.{key}={value!r} is not allowed; choose one of "
                      + ", ".join(repr(a) for a in allowed))
  return value


def check_range(config: ml_collections.ConfigDict, key: str, *, low: float = None,
                high: float = None, allow_none: bool = False, positive: bool = False) -> Any:
  """Returns ``config.<key>`` if ``low <= value <= high`` (and ``> 0`` when ``positive``)."""
  value = get_path(config, key)
  if value is None and allow_none:
    return value
  ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  ok = ok and (low is None or value >= low) and (high is None or value <= high)
  ok = ok and (not positive or value > 0)
  if not ok:
    bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
    raise ConfigError(f"config.{key}={value!r} must be a "
                      + ("positive number" if positive else "number") + f" in {bounds}"
                      + (" or None" if allow_none else ""))
  return value


def check_int(config: ml_collections.ConfigDict, key: str, low: int,
              allow_none: bool = False) -> Optional[int]:
  """Returns ``config.<key>`` if it is an integer ``>= low`` (or None when allowed)."""
  value = get_path(config, key)
  if value is None and allow_none:
    return None
  if not isinstance(value, int) or isinstance(value, bool) or value < low:
    raise ConfigError(f"config.{key}={value!r} must be an integer >= {low}"
                      + (" or None" if allow_none else ""))
  return value


def check_words(config: ml_collections.ConfigDict, key: str, allowed: Optional[Iterable[Any]],
                *, nonempty: bool = True, distinct: bool = True) -> tuple:
  """A tuple of words, also given as ``--config.key=a,b``; stored back as a tuple.

  ``allowed=None`` accepts any word.
  """
  value = get_path(config, key)
  if isinstance(value, str):
    value = (value,)
  value = tuple(w.strip() if isinstance(w, str) else w
                for v in (value or ()) for w in (str(v).split(",") if isinstance(v, str) else (v,))
                if not isinstance(w, str) or w.strip())
  section, _, leaf = key.rpartition(".")
  node = get_path(config, section) if section else config
  node[leaf] = value
  allowed = None if allowed is None else tuple(allowed)
  bad = [v for v in value if allowed is not None and v not in allowed]
  if bad or (nonempty and not value) or (distinct and len(set(value)) != len(value)):
    what = ("values from " + ", ".join(repr(a) for a in allowed)) if allowed is not None \
        else "values"
    raise ConfigError(f"config.{key}={value!r} must be a tuple of "
                      + ("distinct " if distinct else "") + what)
  return value


def get_path(config: ml_collections.ConfigDict, key: str) -> Any:
  """``config.<key>`` for a dotted key; a missing key is a ConfigError naming what exists."""
  if _READ_LOG is not None:
    _READ_LOG.add(key)
  node = config
  for part in key.split("."):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
      has = ", ".join(sorted(node.keys())) if isinstance(node, (ml_collections.ConfigDict, dict)) \
          else "no keys"
      raise ConfigError(f"config.{key} is missing (has {has})")
    node = node[part]
  return node
