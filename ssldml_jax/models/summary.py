"""Parameter counts and FLOPs per ECG of an encoder, from two independent sources.

``flops_counted`` walks the traced inference program and counts ``2 * multiply-adds`` of every
convolution and matrix product from their shapes; elementwise work (BatchNorm, ReLU, pooling,
residual adds) is left out, and loops would be counted once (the encoders have none).
``flops_xla`` is what XLA's ``cost_analysis()`` reports for the compiled program on the current
backend; it includes elementwise work but its conventions vary by backend (None if unavailable).
Both are for one ECG in inference mode.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class ModelSummary:
  input_shape: tuple[int, ...]          # one ECG, (T, C)
  params: int                           # trainable parameters
  batch_stats: int                      # BatchNorm running averages (not trained)
  params_by_module: dict[str, int]      # top-level submodule -> trainable parameters
  flops_counted: int                    # 2 * MACs of convs and dense layers, per ECG
  flops_xla: Optional[float]            # XLA cost_analysis() 'flops', per ECG

  def format(self) -> str:
    lines = [f"input {self.input_shape}: {self.params:,} parameters "
             f"(+{self.batch_stats:,} BatchNorm statistics)"]
    lines += [f"  {name:<24} {count:>12,}" for name, count in self.params_by_module.items()]
    lines.append(f"FLOPs per ECG, counted (convolutions + dense, 2 x MACs): "
                 f"{self.flops_counted / 1e9:.3f} G")
    xla = "n/a" if self.flops_xla is None else f"{self.flops_xla / 1e9:.3f} G"
    lines.append(f"FLOPs per ECG, XLA cost_analysis on {jax.default_backend()}: {xla}")
    return "\n".join(lines)


def count(tree: Any) -> int:
  return int(sum(np.prod(np.shape(x), dtype=np.int64) for x in jax.tree.leaves(tree)))


def _matmul_flops(jaxpr: jex.core.Jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      out, kernel = eqn.outvars[0].aval.shape, eqn.invars[1].aval.shape
      out_features = kernel[eqn.params["dimension_numbers"].rhs_spec[0]]
      # Each output element is a dot product over kernel.size / out_features inputs.
      total += 2 * math.prod(out) * (math.prod(kernel) // out_features)
    elif name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
    for sub in jex.core.jaxprs_in_params(eqn.params):
      total += _matmul_flops(sub)
  return total


def _layer_order(name: str) -> tuple[int, str]:
  # Input-to-output order for the summary table: stem, stages, then whatever comes last.
  rank = 0 if name.startswith("stem") else 1 if name.startswith("stage") else 2
  return rank, name


def _xla_flops(fn, *args) -> Optional[float]:
  try:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  except Exception:  # Some backends do not implement cost analysis.
    return None
  if isinstance(cost, (list, tuple)):  # Older jax returned one dict per computation.
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return None if flops is None or flops < 0 else float(flops)


def summarize(model: nn.Module, input_shape: Sequence[int] = (2500, 12),
              variables: Optional[Any] = None) -> ModelSummary:
  """Counts ``model``'s parameters and per-ECG FLOPs for ECGs of shape ``input_shape``."""
  x = jnp.zeros((1, *input_shape), jnp.float32)
  if variables is None:
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
  params = variables["params"]

  def forward(v, x):
    return model.apply(v, x, train=False)

  shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), variables)
  jaxpr = jax.make_jaxpr(forward)(shapes, x)
  return ModelSummary(
      input_shape=tuple(input_shape),
      params=count(params),
      batch_stats=count(variables.get("batch_stats", {})),
      params_by_module={name: count(params[name]) for name in sorted(params, key=_layer_order)},
      flops_counted=_matmul_flops(jaxpr.jaxpr),
      flops_xla=_xla_flops(forward, shapes, x),
  )


def print_summary(model: nn.Module, input_shape: Sequence[int] = (2500, 12)) -> ModelSummary:
  summary = summarize(model, input_shape)
  print(summary.format())
  return summary
