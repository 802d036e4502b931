"""What the trained heads share (``mlp_probe`` on embeddings, ``finetune`` on raw ECGs).

- Targets: 0/1 labels for ``task='binary'``, mmHg for ``'regression'`` (``check_targets``); the
  loss sees the labels (BCE on logits) or the standardised mmHg (MSE), and the outputs map back
  to probabilities or mmHg (``loss_targets``).
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
from typing import Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssldml_jax.eval import metrics as metrics_lib

TASKS = ("binary", "regression")


@dataclasses.dataclass(frozen=True)
class HeadResult:
  """A trained head (MLP or fine-tuned model) with its predictions from the best checkpoint."""
  task: str                         # 'binary' | 'regression'
  val_scores: np.ndarray            # probabilities (binary) or mmHg (regression)
  test_scores: Optional[np.ndarray]
  threshold: Optional[float]        # binary: chosen on validation
  best_step: int                    # training steps behind the kept parameters
  steps_run: int
  history: tuple                    # (step, validation criterion) after every block
  best_variables: Any               # host copy taken at best_step
  final_variables: Any              # the live state when training stopped (host)
  n_train: int


def check_task(task: str) -> None:
  if task not in TASKS:
    raise ValueError(f"task={task!r} is not allowed; choose 'binary' or 'regression'")


def check_targets(task: str, name: str, y, n: int) -> np.ndarray:
  """``y`` as bool labels with both classes (binary) or finite mmHg (regression), ``n`` long."""
  if task == "binary":
    y = metrics_lib.check_binary(name, y, n)
    if y.all() or not y.any():
      raise ValueError(f"{name}: only one class among {y.size} labels; the head needs both (too "
                       "small a label fraction?)")
    return y
  return metrics_lib.check_scores(name, y, n)


def loss_targets(task: str, y_train: np.ndarray) -> tuple[np.ndarray, Callable]:
  """(float32 training targets of the loss, map from head outputs to scores).

  Binary: the 0/1 labels, and the sigmoid of the logits. Regression: mmHg standardised with the
  training mean and standard deviation (1 if constant), and its inverse.
  """
  if task == "binary":
    return y_train.astype(np.float32), lambda out: 1.0 / (1.0 + np.exp(-out))
  mean, scale = float(y_train.mean()), float(y_train.std()) or 1.0
  return ((y_train - mean) / scale).astype(np.float32), lambda out: out * scale + mean


def task_loss(task: str, out: jax.Array, y: jax.Array) -> jax.Array:
  """Mean BCE on logits (binary) or MSE on standardised targets (regression)."""
  out = out.reshape(-1)
  if task == "binary":
    return jnp.mean(optax.sigmoid_binary_cross_entropy(out, y))
  return jnp.mean(jnp.square(out - y))


def validation_criterion(task: str, y, score) -> float:
  """AUROC (binary) or RMSE (regression) of validation predictions."""
  return metrics_lib.auroc(y, score) if task == "binary" else metrics_lib.rmse(y, score)


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
                best: tuple, final: tuple, n_train: int,
                threshold_criterion: str) -> HeadResult:
  """The ``HeadResult`` of a finished run; ``best`` / ``final`` are host ``(params, stats)``."""
  threshold = (metrics_lib.choose_threshold(y_val, val_scores, threshold_criterion)
               if task == "binary" else None)
  return HeadResult(task=task, val_scores=val_scores, test_scores=test_scores,
                    threshold=threshold, best_step=stopper.best_step, steps_run=steps_run,
                    history=tuple(stopper.history),
                    best_variables={"params": best[0], "batch_stats": best[1]},
                    final_variables={"params": final[0], "batch_stats": final[1]},
                    n_train=int(n_train))
