"""The registry of pretraining methods: one name per method, and what each one declares.

A method's name is its config file (``configs/<name>.py``), its key in the main job's
``config.methods``, its output directory (``pretrain/<name>/``, ``probe/<name>/``) and its table
row (shown as its ``label``). A method module in this package (one file per family) builds a
``Method`` and calls ``register``; ``ssldml_jax.methods`` imports every module of the package, so
a new method is one new file (plus its ``configs/<name>.py``).

A method declares:

- ``target``: ``None`` for a self-supervised method (it trains on ``config.data.pretrain_split``),
  else the mPCWP target it is trained on, ``'binary'`` (> ``task.pcwp_threshold``) or
  ``'regression'``; such a method trains on the labeled ``config.data.train_split``.
- ``reads``: the config keys it reads beyond ``config_defaults.SHARED_SECTIONS`` (a section name
  stands for the whole section). Its pretraining config holds exactly these, and the main job
  refuses an override that no stage of the job reads.
- ``make_loss(config, models, axis_name)``: its per-device loss for the shared pure step
  (``ssldml_jax.steps``): ``loss(params, batch_stats, batch, mine_key, device_key, train) ->
  (share, (new_batch_stats, metrics))``, ``share`` this device's share of the global loss
  (``ssldml_jax.losses`` convention), ``metrics`` global scalars. ``None``: not trained (the
  random-encoder baseline).
- ``build_head(config, bn_axis_name)``: the module trained on top of the encoder, if any; heads
  are called as ``head(x, train=...)``.
- ``loss_params(config)``: trainable parameters of the loss (the margin loss's beta), if any.
- ``view_length(num_samples)``: samples per view the encoder sees.
- ``validate(config)``: checks the keys in ``reads`` (raises ``cli.ConfigError``).
- ``section``: defaults of a config section of its own (e.g. ``vicreg``), added to
  ``config_defaults.base_config()``.
- ``raw_distance``: for a method that mines its positives as nearest neighbours under a distance
  between the raw signals (SSL-DML), that distance (``'dtw'``, ``'euclidean'``); the main job
  measures how label-informative such positives are (``ssldml_jax.eval.premise``).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Optional

import ml_collections

from ssldml_jax import cli

TARGETS = ("binary", "regression")


def _no_head(config, bn_axis_name):
  del config, bn_axis_name
  return None


def _no_params(config) -> dict:
  del config
  return {}


def _no_check(config) -> None:
  del config


def _same_length(num_samples: int) -> int:
  return num_samples


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  label: str
  summary: str                       # what it learns from, one line (README, listings)
  target: Optional[str] = None
  reads: tuple[str, ...] = ()
  make_loss: Optional[Callable[..., Callable]] = None
  build_head: Callable[..., Any] = _no_head
  loss_params: Callable[[ml_collections.ConfigDict], dict] = _no_params
  view_length: Callable[[int], int] = _same_length
  validate: Callable[[ml_collections.ConfigDict], None] = _no_check
  section: Optional[tuple[str, dict]] = None
  raw_distance: Optional[str] = None

  @property
  def pretrains(self) -> bool:
    return self.make_loss is not None

  @property
  def uses_labels(self) -> bool:
    return self.target is not None


_METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
  if method.name in _METHODS:
    raise ValueError(f"method {method.name!r} is registered twice")
  if method.target not in (None,) + TARGETS:
    raise ValueError(f"method {method.name!r}: target {method.target!r} is not one of {TARGETS}")
  _METHODS[method.name] = method
  return method


# The untrained encoder of the same architecture: the baseline row of every table.
RANDOM = register(Method(name="random", label="Random encoder",
                         summary="nothing: the randomly initialised encoder (a baseline row)"))


def get(name: str) -> Method:
  if name not in _METHODS:
    raise cli.ConfigError(f"unknown method {name!r}; the registered methods are "
                          + ", ".join(repr(n) for n in names()))
  return _METHODS[name]


def names(*, pretrained_only: bool = False) -> tuple[str, ...]:
  """Registered names in registration order (the random baseline first)."""
  return tuple(n for n, m in _METHODS.items() if m.pretrains or not pretrained_only)


def config_sections() -> dict[str, ml_collections.ConfigDict]:
  """The methods' own config sections, by name."""
  return {m.section[0]: ml_collections.ConfigDict(m.section[1])
          for m in _METHODS.values() if m.section}


def stage_keys(method: Method) -> tuple[str, ...]:
  from ssldml_jax import config_defaults

  return config_defaults.SHARED_SECTIONS + method.reads


def project(config: ml_collections.ConfigDict, keys: tuple[str, ...]) -> ml_collections.ConfigDict:
  """A copy of ``config`` holding only ``keys`` (dotted; a section name keeps the section).

  A deep copy, so placeholders keep their types and overrides of them still parse.
  """
  out = copy.deepcopy(config)
  wanted = {}
  for key in keys:
    section, _, leaf = key.partition(".")
    if section not in config:
      raise cli.ConfigError(f"config.{key} is missing (has {', '.join(sorted(config.keys()))})")
    wanted.setdefault(section, set()).add(leaf)
  with out.unlocked():
    for section in list(out.keys()):
      leaves = wanted.get(section)
      if leaves is None:
        del out[section]
      elif "" not in leaves:
        node = out[section]
        for leaf in list(node.keys()):
          if leaf not in leaves:
            del node[leaf]
  return out


def stage_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The pretraining config of method ``name``: what it reads of ``config``, plus ``method``."""
  method = get(name)
  if not method.pretrains:
    raise cli.ConfigError(f"method {name!r} is not trained")
  out = project(config, stage_keys(method))
  with out.unlocked():
    out.method = name
  return out


def pretrain_config(name: str, arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """``configs/<name>.py``: the paper's settings for method ``name``; ``:tiny`` shrinks them."""
  from ssldml_jax import config_defaults

  words = cli.parse_words(arg, ("tiny",))
  c = config_defaults.base_config()
  if "tiny" in words:
    config_defaults.apply_tiny(c)
  return stage_config(c, name)
