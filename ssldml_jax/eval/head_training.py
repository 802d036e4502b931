"""What the trained heads share (``mlp_probe`` on embeddings, ``finetune`` on raw ECGs).

- Settings: ``HeadSettings``, the optimiser and early stopping both heads take.
- Targets (a probe target's kind, ``TASKS``): 0/1 labels for ``task='binary'``, mmHg for
  ``'regression'``, (n, K) multi-hot labels for ``'multilabel'``, class indices for
  ``'multiclass'`` (``check_targets``). The loss sees the labels (BCE on logits; softmax
  cross-entropy for classes) or the standardised mmHg (MSE); the outputs map back to
  probabilities or mmHg with an ``OutputMap`` (``loss_targets``), which a saved probe keeps.
- Minibatches: rows from consecutive seeded shuffles of the training rows (``index_stream``), so
  every batch has one shape and a small label fraction simply repeats rows.
- Early stopping on a validation criterion, AUROC (higher is better) or RMSE in mmHg (lower):
  ``Stopper`` remembers the best step; the caller copies the parameters to host memory at that
  moment (``host_copy``), never keeping a reference to a state that trains on.
- ``head_result``: scores of the best parameters, with the decision threshold chosen on the
  validation scores (``metrics.choose_threshold``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Optional, TypeVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ssldml_jax.eval import metrics as metrics_lib

TASKS = ("binary", "regression", "multilabel", "multiclass")
_Settings = TypeVar("_Settings", bound="HeadSettings")


@dataclasses.dataclass(frozen=True)
class HeadSettings:
  """How a head is trained: AdamW with ``learning_rate`` and ``weight_decay``, the head's
  ``dropout``, and a validation pass after every ``eval_every_steps`` steps, stopping after
  ``patience`` passes without improvement or at ``max_steps`` (rounded up to whole blocks of
  ``eval_every_steps``). The defaults are the MLP probe's; each head's settings add its own."""
  learning_rate: float = 1e-3
  weight_decay: float = 1e-4
  dropout: float = 0.3
  max_steps: int = 3000
  eval_every_steps: int = 50
  patience: int = 10

  @classmethod
  def from_config(cls: type[_Settings], c: ml_collections.ConfigDict) -> _Settings:
    """From the head's section of ``config.probe``; keys that are not fields are not read."""
    return cls(**{f.name: c[f.name] for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class OutputMap:
  """From a head's outputs to scores: sigmoid (binary, multilabel), softmax (multiclass), or
  ``out * scale + shift`` (regression: back to mmHg)."""
  task: str
  shift: float = 0.0
  scale: float = 1.0

  def __call__(self, out: np.ndarray) -> np.ndarray:
    out = np.asarray(out, np.float64)
    if self.task in ("binary", "multilabel"):
      return 1.0 / (1.0 + np.exp(-out))
    if self.task == "multiclass":
      e = np.exp(out - out.max(axis=-1, keepdims=True))
      return e / e.sum(axis=-1, keepdims=True)
    return out * self.scale + self.shift


@dataclasses.dataclass(frozen=True)
class HeadResult:
  """A trained head (MLP or fine-tuned model) with its predictions from the best checkpoint."""
  task: str                         # one of TASKS
  val_scores: np.ndarray            # probabilities (binary) or mmHg (regression); (n, K) multi
  test_scores: Optional[np.ndarray]
  threshold: Any                    # binary: chosen on validation; multilabel: one per label
  best_step: int                    # training steps behind the kept parameters
  steps_run: int
  history: tuple                    # (step, validation criterion) after every block
  best_variables: Any               # host copy taken at best_step
  final_variables: Any              # the live state when training stopped (host)
  n_train: int
  output: Optional[OutputMap] = None          # outputs of best_variables -> scores
  standardizer: Any = None                    # of the embeddings (MLP head), else None


def check_task(task: str) -> None:
  if task not in TASKS:
    raise ValueError(f"task={task!r} is not allowed; choose one of {', '.join(TASKS)}")


def out_dim(task: str, width: int) -> int:
  """Outputs of the head: one, or one per label / class."""
  return width if task in ("multilabel", "multiclass") else 1


def check_targets(task: str, name: str, y, n: int, width: int = 1) -> np.ndarray:
  """``y`` as bool labels with both classes (binary; per label for multilabel, ``(n, width)``),
  finite mmHg (regression) or class indices with every one of ``width`` classes
  (multiclass), ``n`` long."""
  if task == "binary":
    y = metrics_lib.check_binary(name, y, n)
    if y.all() or not y.any():
      raise ValueError(f"{name}: only one class among {y.size} labels; the head needs both (too "
                       "small a label fraction?)")
    return y
  if task == "multilabel":
    y = np.asarray(y)
    if y.shape != (n, width):
      raise ValueError(f"{name}: expected multi-hot labels of shape ({n}, {width}), got {y.shape}")
    y = metrics_lib.check_binary(name, y.reshape(-1)).reshape(y.shape)
    one = np.flatnonzero(y.all(axis=0) | ~y.any(axis=0))
    if one.size:
      raise ValueError(f"{name}: label {one[0]} has one class only among {n} rows; the head needs "
                       "both (too small a label fraction?)")
    return y
  if task == "multiclass":
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
      raise ValueError(f"{name}: expected {n} class indices, got {y.dtype} {y.shape}")
    absent = [k for k in range(width) if not np.any(y == k)]
    if absent or np.any((y < 0) | (y >= width)):
      raise ValueError(f"{name}: class(es) {absent} absent, or indices outside 0..{width - 1}; "
                       "the head needs every class (too small a label fraction?)")
    return y
  return metrics_lib.check_scores(name, y, n)


def loss_targets(task: str, y_train: np.ndarray) -> tuple[np.ndarray, OutputMap]:
  """(training targets of the loss, the map from head outputs to scores).

  Binary and multi-label: the 0/1 labels (float32), and the sigmoid of the logits. Multi-class:
  the class indices (int32), and the softmax. Regression: mmHg standardised with the training
  mean and standard deviation (1 if constant), and its inverse.
  """
  if task in ("binary", "multilabel"):
    return y_train.astype(np.float32), OutputMap(task)
  if task == "multiclass":
    return y_train.astype(np.int32), OutputMap(task)
  mean, scale = float(y_train.mean()), float(y_train.std()) or 1.0
  return ((y_train - mean) / scale).astype(np.float32), OutputMap(task, mean, scale)


def task_loss(task: str, out: jax.Array, y: jax.Array) -> jax.Array:
  """Mean BCE on logits (binary, every label of multilabel), softmax cross-entropy
  (multiclass) or MSE on standardised targets (regression); ``out`` is (n, out_dim)."""
  if task == "multilabel":
    return jnp.mean(optax.sigmoid_binary_cross_entropy(out, y))
  if task == "multiclass":
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, y))
  out = out.reshape(-1)
  if task == "binary":
    return jnp.mean(optax.sigmoid_binary_cross_entropy(out, y))
  return jnp.mean(jnp.square(out - y))


def scores_of(out: np.ndarray) -> np.ndarray:
  """Head outputs (n, out_dim) as the scores' shape: (n,) for one output, else (n, K)."""
  out = np.asarray(out)
  return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out


def validation_criterion(task: str, y, score) -> float:
  """AUROC (binary), RMSE (regression) or macro-AUROC (multilabel, multiclass) of validation
  predictions."""
  if task == "binary":
    return metrics_lib.auroc(y, score)
  if task == "regression":
    return metrics_lib.rmse(y, score)
  from ssldml_jax.eval import label_metrics

  width = np.shape(score)[1]
  names = tuple(str(k) for k in range(width))
  make = (label_metrics.multilabel_metric_fns if task == "multilabel"
          else label_metrics.multiclass_metric_fns)
  return float(make(names, ("macro_auroc",))["macro_auroc"](y, score, None)[0])


def choose_thresholds(task: str, y_val, val_scores, criterion: str) -> Any:
  """Decision thresholds on validation scores: one (binary), one per label (multilabel), or
  None (regression: no rule; multiclass: the highest score wins)."""
  if task == "binary":
    return metrics_lib.choose_threshold(y_val, val_scores, criterion)
  if task == "multilabel":
    return tuple(metrics_lib.choose_threshold(y_val[:, k], val_scores[:, k], criterion)
                 for k in range(np.shape(val_scores)[1]))
  return None


def index_stream(n: int, seed: int) -> Iterator[int]:
  """Row indices from consecutive seeded shuffles of ``range(n)``."""
  rng = np.random.default_rng(seed)
  while True:
    yield from rng.permutation(n).tolist()


def take_indices(stream: Iterator[int], shape: tuple) -> np.ndarray:
  """The next ``prod(shape)`` indices of ``stream``, as an int64 array of ``shape``."""
  return np.fromiter(stream, np.int64, count=int(np.prod(shape))).reshape(shape)


def host_copy(tree: Any) -> Any:
  """Every leaf as a fresh host array that shares no memory with any device buffer.

  (``np.asarray`` of a CPU array can be a zero-copy view of a buffer that a donated step will
  overwrite; a checkpoint must own its memory.)
  """
  return jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(tree))


class Stopper:
  """Early stopping on a validation criterion; remembers the best step."""

  def __init__(self, higher_is_better: bool, patience: int):
    self.sign = 1.0 if higher_is_better else -1.0
    self.patience = patience
    self.best = -np.inf
    self.best_step = 0
    self.waited = 0
    self.history: list[tuple[int, float]] = []

  def update(self, step: int, value: float) -> bool:
    """Records ``value`` at ``step``; True when it is a new best (the caller copies then)."""
    self.history.append((int(step), float(value)))
    score = self.sign * value if np.isfinite(value) else -np.inf
    if score > self.best or not self.history[:-1]:
      self.best, self.best_step, self.waited = score, int(step), 0
      return True
    self.waited += 1
    return False

  @property
  def done(self) -> bool:
    return self.waited >= self.patience

  @property
  def best_value(self) -> float:
    return self.sign * self.best


def head_result(task: str, *, y_val: np.ndarray, val_scores: np.ndarray,
                test_scores: Optional[np.ndarray], stopper: Stopper, steps_run: int,
                best: tuple, final: tuple, n_train: int, threshold_criterion: str,
                output: Optional[OutputMap] = None, standardizer: Any = None) -> HeadResult:
  """The ``HeadResult`` of a finished run; ``best`` / ``final`` are host ``(params, stats)``."""
  return HeadResult(task=task, val_scores=val_scores, test_scores=test_scores,
                    threshold=choose_thresholds(task, y_val, val_scores, threshold_criterion),
                    best_step=stopper.best_step, steps_run=steps_run,
                    history=tuple(stopper.history),
                    best_variables={"params": best[0], "batch_stats": best[1]},
                    final_variables={"params": final[0], "batch_stats": final[1]},
                    n_train=int(n_train), output=output, standardizer=standardizer)
