"""The probe targets: what a label is, which dataset feature it comes from, and its metrics.

A target (``Target``) is a dataset feature and a kind:

- ``binary``: ``feature > threshold`` (any number), or a 0/1 feature without a threshold; one
  probability per ECG; scored by ``metrics.CLASSIFICATION_METRICS`` (the thresholded ones at a
  head's validation threshold);
- ``regression``: the feature's value in its unit (mPCWP: mmHg); scored by
  ``metrics.REGRESSION_METRICS``;
- ``multilabel``: a multi-hot vector feature of K labels; one probability per label (one
  logistic probe per label); scored by ``label_metrics.multilabel_metric_fns`` (macro-AUROC,
  macro-AUPRC, AUROC per label);
- ``multiclass``: one class per ECG, from an integer feature (the classes are the values of the
  training split) or from a multi-hot feature whose row holds exactly one label (PTB-XL's
  "single-label" protocol); softmax probabilities, scored by
  ``label_metrics.multiclass_metric_fns``.

``config.probe.targets`` is a tuple of specs (``--config.probe.targets=binary,regression``):

- ``binary``: mPCWP > ``config.task.pcwp_threshold`` (the paper's target), named ``binary``;
- ``regression``: mPCWP in mmHg, named ``regression``;
- ``[NAME=]FEATURE:KIND[>THRESHOLD]``, e.g. ``diagnostic_superclass:multilabel`` or
  ``old=age:binary>65``; the name (default: the feature) labels the table rows and the columns
  of ``predictions.csv``.

Unknown labels: NaN for a float feature, a negative value for an integer one, any -1 in a
multi-hot row. A multi-hot row with no label of the set is unknown too (PTB-XL's benchmark
leaves such records out). A probe keeps the ECGs whose label is known for every target
(``subsets.labeled``, which says how many it leaves out).

Every user of a target's labels (the heads, the statistics, ``predictions.csv``, ``predict``,
the cohort table) takes them from ``values``; a target is defined here and nowhere else. A split
is a dict of arrays with one row per ECG (``pipeline.read_split``, ``embed`` arrays,
``reader.read_labels``) holding the target's feature.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Mapping, Optional, Sequence

import numpy as np

from ssldml_jax.eval import label_metrics, metrics as metrics_lib

KINDS = ("binary", "regression", "multilabel", "multiclass")
# The paper's targets, named by their kind for the tables: mPCWP > threshold and mPCWP.
MPCWP = "pcwp"
DEFAULT_SPECS = ("binary", "regression")
_SPEC = re.compile(r"^(?:(?P<name>[A-Za-z_][\w-]*)=)?(?P<feature>[A-Za-z_]\w*):(?P<kind>[a-z]+)"
                   r"(?:>(?P<threshold>[-+0-9.eE]+))?$")
SPEC_HELP = ("binary, regression (mPCWP), or [NAME=]FEATURE:KIND[>THRESHOLD] with KIND one of "
             + ", ".join(KINDS) + " (e.g. diagnostic_superclass:multilabel, old=age:binary>65)")


@dataclasses.dataclass(frozen=True)
class Target:
  """One probe target; ``classes`` (label or class names) are set by ``resolve``."""
  name: str
  feature: str
  kind: str
  threshold: Optional[float] = None   # binary: positive when feature > threshold
  classes: tuple = ()                 # multilabel / multiclass
  multi_hot: bool = False             # multiclass read from a multi-hot feature

  @property
  def width(self) -> int:
    """Scores per ECG: 1, or one per label / class."""
    return len(self.classes) if self.kind in ("multilabel", "multiclass") else 1

  @property
  def higher_is_better(self) -> bool:
    """Of ``primary_metric`` (validation criterion of the trained heads)."""
    return self.kind != "regression"

  def describe(self) -> str:
    if self.kind == "binary" and self.threshold is not None:
      return f"{self.feature} > {self.threshold:g}"
    if self.kind in ("multilabel", "multiclass") and self.classes:
      return f"{self.feature} ({self.kind}: {', '.join(self.classes)})"
    return f"{self.feature} ({self.kind})"

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, data: Mapping) -> "Target":
    return cls(**{**data, "classes": tuple(data.get("classes", ()))})


def parse(spec: str, pcwp_threshold: float) -> Target:
  """The target of one spec (module docstring); ``ValueError`` says what is wrong with it."""
  spec = str(spec).strip()
  if spec == "binary":
    return Target(name="binary", feature=MPCWP, kind="binary", threshold=float(pcwp_threshold))
  if spec == "regression":
    return Target(name="regression", feature=MPCWP, kind="regression")
  m = _SPEC.match(spec)
  if not m:
    raise ValueError(f"{spec!r} is not a target; write {SPEC_HELP}")
  kind, threshold = m["kind"], m["threshold"]
  if kind not in KINDS:
    raise ValueError(f"{spec!r}: kind {kind!r} is not one of {', '.join(KINDS)}")
  if threshold is not None:
    if kind != "binary":
      raise ValueError(f"{spec!r}: only a binary target takes a threshold ('>...')")
    try:
      value = float(threshold)
    except ValueError:
      raise ValueError(f"{spec!r}: threshold {threshold!r} is not a number") from None
    if not math.isfinite(value):
      raise ValueError(f"{spec!r}: threshold must be finite")
  return Target(name=m["name"] or m["feature"], feature=m["feature"], kind=kind,
                threshold=None if threshold is None else float(threshold))


def parse_all(specs: Sequence[str], pcwp_threshold: float) -> list[Target]:
  """Targets of ``specs`` in order; distinct names required (``ValueError`` otherwise)."""
  out = [parse(s, pcwp_threshold) for s in specs]
  names = [t.name for t in out]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise ValueError(f"target name(s) {', '.join(map(repr, repeated))} used twice; name them "
                     "apart with NAME=FEATURE:KIND")
  return out


def from_config(config) -> list[Target]:
  """The targets of ``config.probe.targets`` (not yet resolved against a dataset)."""
  return parse_all(tuple(config.probe.targets), float(config.task.pcwp_threshold))


def by_name(targets: Sequence[Target]) -> dict[str, Target]:
  return {t.name: t for t in targets}


# ------------------------------------------------------------------------ against a dataset


@dataclasses.dataclass(frozen=True)
class Feature:
  """A dataset feature that can hold labels: its per-ECG shape and dtype, and names of its
  entries when the dataset gives them (``reader.label_features``)."""
  shape: tuple
  dtype: np.dtype
  names: tuple = ()


def needs_train(target: Target, features: Mapping[str, Feature]) -> bool:
  """Whether ``resolve`` reads ``target``'s feature from the training split: the classes of an
  integer multi-class feature, the 0/1 check of a binary one without threshold."""
  f = features.get(target.feature)
  return (f is not None and not f.shape
          and (target.kind == "multiclass" or (target.kind == "binary"
                                               and target.threshold is None)))


def resolve(targets: Sequence[Target], features: Mapping[str, Feature], dataset: str,
            train: Mapping[str, np.ndarray]) -> list[Target]:
  """Checks that each target's feature exists and suits its kind; sets ``classes``.

  ``train``: the training split's arrays with the features of the targets that ``needs_train``
  (the classes of an integer multi-class feature, the 0/1 check of a binary one without
  threshold). ``ValueError`` names the target, its feature and what the dataset has.
  """
  have = ", ".join(sorted(features)) or "none"
  out = []
  for t in targets:
    where = f"target {t.name!r}"
    if t.feature not in features:
      raise ValueError(f"{where}: {dataset} has no feature {t.feature!r} (label features: "
                       f"{have})")
    f = features[t.feature]
    rank, integer = len(f.shape), np.issubdtype(f.dtype, np.integer) or f.dtype == bool
    shape = "x".join(map(str, f.shape)) or "scalar"
    wrong = f"{where}: feature {t.feature!r} of {dataset} ({shape}, {np.dtype(f.dtype).name})"
    if t.kind in ("binary", "regression") and rank != 0:
      raise ValueError(f"{wrong} is not one number per ECG, as a {t.kind} target needs; "
                       f"try {t.feature}:multilabel")
    if t.kind == "multilabel" and not (rank == 1 and integer):
      raise ValueError(f"{wrong} is not a multi-hot vector, as a multilabel target needs")
    if t.kind == "multiclass" and not (integer and rank in (0, 1)):
      raise ValueError(f"{wrong} is neither an integer class nor a multi-hot vector, as a "
                       "multiclass target needs")
    if rank == 1:
      names = tuple(str(n) for n in f.names) or tuple(str(i) for i in range(f.shape[0]))
      t = dataclasses.replace(t, classes=names, multi_hot=t.kind == "multiclass")
    elif t.kind == "multiclass":
      values = np.asarray(train[t.feature])
      seen = np.unique(values[values >= 0])
      if seen.size < 2:
        raise ValueError(f"{wrong}: the training split holds {seen.size} class(es); a "
                         "multiclass target needs two or more")
      t = dataclasses.replace(t, classes=tuple(str(int(v)) for v in seen))
    elif t.kind == "binary" and t.threshold is None:
      x = _numbers(np.asarray(train[t.feature]))
      odd = x[np.isfinite(x) & (x != 0) & (x != 1)]
      if odd.size:
        raise ValueError(f"{wrong} holds values other than 0/1 (e.g. {odd[0]:g}); give a "
                         f"threshold: {t.name}={t.feature}:binary>T")
    out.append(t)
  return out


# ------------------------------------------------------------------------------ labels


def _feature(split: Mapping[str, np.ndarray], target: Target) -> np.ndarray:
  if target.feature not in split:
    raise KeyError(f"target {target.name!r}: the split has no {target.feature!r} column "
                   f"(has {', '.join(sorted(split))})")
  return np.asarray(split[target.feature])


def _numbers(x: np.ndarray) -> np.ndarray:
  """A scalar feature as float64 with its unknowns (a negative integer) as NaN."""
  out = x.astype(np.float64)
  if np.issubdtype(x.dtype, np.integer):
    out[x < 0] = np.nan
  return out


def values(split: Mapping[str, np.ndarray], target: Target) -> np.ndarray:
  """The labels of ``target`` for every row of ``split``.

  binary: bool (n,) (an unknown value gives False: mask it with ``known``); regression: float64
  (n,), NaN unknown; multilabel: bool (n, K); multiclass: int64 class index (n,), -1 unknown.
  A binary threshold is compared in the precision of the stored feature (float32: NumPy rounds
  the threshold to it), so a label recorded as the threshold itself is not above it.
  """
  x = _feature(split, target)
  if target.kind == "binary":
    return x > target.threshold if target.threshold is not None else x == 1
  if target.kind == "regression":
    return _numbers(x)
  if target.kind == "multilabel":
    return x == 1
  if target.multi_hot:
    single = (x == 1).sum(axis=1) == 1
    return np.where(single, np.argmax(x == 1, axis=1), -1).astype(np.int64)
  index = {int(c): i for i, c in enumerate(target.classes)}
  return np.array([index.get(int(v), -1) for v in x.tolist()], np.int64)


def known(split: Mapping[str, np.ndarray], target: Target) -> np.ndarray:
  """Rows whose label of ``target`` is known (module docstring)."""
  x = _feature(split, target)
  if target.kind in ("binary", "regression"):
    return np.isfinite(_numbers(x))
  if target.kind == "multilabel":
    return (x >= 0).all(axis=1) & (x == 1).any(axis=1)
  return values(split, target) >= 0


def unknown_classes(split: Mapping[str, np.ndarray], target: Target) -> np.ndarray:
  """Rows of an integer multiclass target whose value is not a class of the training split."""
  if target.kind != "multiclass" or target.multi_hot:
    return np.zeros(len(_feature(split, target)), bool)
  x = _feature(split, target)
  return (x >= 0) & (values(split, target) < 0)


def columns(target: Target) -> list[str]:
  """The column name of each score of ``target``: its name, or ``name.label`` per label."""
  if target.width == 1 and target.kind in ("binary", "regression"):
    return [target.name]
  return [f"{target.name}.{c}" for c in target.classes]


def as_columns(target: Target, array: np.ndarray) -> list[np.ndarray]:
  """Labels (``values``) or scores of ``target`` as one 1-D array per ``columns`` entry
  (a multiclass label becomes one-hot)."""
  array = np.asarray(array)
  if target.kind == "multiclass" and array.ndim == 1:
    array = array[:, None] == np.arange(target.width)[None]
  if array.ndim == 1:
    return [array]
  return [array[:, k] for k in range(array.shape[1])]


# ------------------------------------------------------------------------------ metrics


def metric_names(target: Target) -> tuple[str, ...]:
  if target.kind == "binary":
    return metrics_lib.CLASSIFICATION_METRICS
  if target.kind == "regression":
    return metrics_lib.REGRESSION_METRICS
  if target.kind == "multilabel":
    return label_metrics.multilabel_names(target.classes)
  return label_metrics.multiclass_names(target.classes)


def primary_metric(target: Target) -> str:
  """The metric of the label-fraction table and of early stopping."""
  return {"binary": "auroc", "regression": "rmse"}.get(target.kind, "macro_auroc")


def metric_fns(target: Target, threshold=None,
               names: Optional[Sequence[str]] = None) -> dict[str, metrics_lib.MetricFn]:
  """Metric functions of ``target`` by name (all of ``metric_names`` unless ``names``), each
  ``(y, score, weights) -> (R,)`` with ``y`` from ``values``; ``threshold`` is the decision
  threshold on a binary head's scores (unused by the other kinds)."""
  names = metric_names(target) if names is None else tuple(names)
  if target.kind == "binary":
    return metrics_lib.classification_metrics(threshold, names)
  if target.kind == "regression":
    return metrics_lib.regression_metrics(names)
  if target.kind == "multilabel":
    return label_metrics.multilabel_metric_fns(target.classes, names)
  return label_metrics.multiclass_metric_fns(target.classes, names)
