"""Pretraining methods, one module per family, looked up by name (see ``registry``).

Importing this package imports every module in it, so each method registers itself::

    from ssldml_jax import methods
    methods.get("ssl_dml_dtw")            # its Method: label, target, reads, make_loss, ...
    methods.names(pretrained_only=True)   # every trainable method
"""

import importlib
import pkgutil

from ssldml_jax.methods.registry import (RANDOM, TARGETS, Method, config_sections, get, names,
                                         pretrain_config, project, register, stage_config,
                                         stage_keys)

__all__ = ["RANDOM", "TARGETS", "Method", "config_sections", "get", "names", "pretrain_config",
           "project", "register", "stage_config", "stage_keys"]

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
  if _module.name not in ("registry", "common"):
    importlib.import_module(f"{__name__}.{_module.name}")
