"""1-D ResNet ECG encoders (the paper's ResNet-18 and a ResNet-34 variant).

Layout follows torchvision's ResNet with 1-D convolutions, as in the paper's encoder: a stem
convolution (kernel 15, stride 2) with BatchNorm, ReLU and a max-pool (3, stride 2); four stages
of basic blocks (kernel 7; widths w, 2w, 4w, 8w; the first block of stages 2-4 halves the time
axis and uses a 1x1 projection shortcut); dropout between the two convolutions of each block;
global average pooling over time; a linear layer to the embedding. Convolutions pad k // 2 on
both sides like PyTorch's ``padding=k//2``, so output lengths match the PyTorch model.

Parameters are float32; ``dtype`` sets the compute dtype (bfloat16 halves activation memory on
GPU/TPU; BatchNorm statistics are still reduced in float32). With ``bn_axis_name`` set, BatchNorm
averages its batch statistics over that mapped axis (pmap / shard_map), so every device
normalises with the global batch's statistics and keeps identical running averages.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

STAGE_SIZES = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
# PyTorch's BatchNorm1d defaults (momentum 0.1 there is 0.9 here: flax weights the old average).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str) -> nn.Conv:
  pad = kernel // 2
  return nn.Conv(features, (kernel,), strides=(stride,), padding=((pad, pad),), use_bias=False,
                 dtype=dtype, param_dtype=jnp.float32, name=name)


class BasicBlock1D(nn.Module):
  """conv-BN-ReLU-dropout-conv-BN, plus the (projected) input, then ReLU."""
  features: int
  stride: int = 1
  kernel_size: int = 7
  dropout: float = 0.2
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = lambda name, **kw: nn.BatchNorm(  # noqa: E731
        use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
        dtype=self.dtype, param_dtype=jnp.float32, axis_name=self.bn_axis_name, name=name, **kw)
    y = _conv(self.features, self.kernel_size, self.stride, self.dtype, "conv1")(x)
    y = nn.relu(norm("bn1")(y))
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    y = _conv(self.features, self.kernel_size, 1, self.dtype, "conv2")(y)
    y = norm("bn2")(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = _conv(self.features, 1, self.stride, self.dtype, "shortcut_conv")(x)
      x = norm("shortcut_bn")(x)
    return nn.relu(y + x)


class ResNet1D(nn.Module):
  """ECG ``(B, T, C)`` float32 -> embedding ``(B, embedding_dim)`` (float32).

  ``__call__(x, train, return_features=False)``: with ``return_features`` it returns
  ``(embedding, pooled)`` where ``pooled`` ``(B, 8 * width)`` is the global-average-pooled output
  of the last stage. ``train`` turns on dropout and batch statistics (pass ``mutable=
  ['batch_stats']`` and a ``'dropout'`` rng to ``apply``).
  """
  width: int = 64
  stem_kernel: int = 15
  kernel_size: int = 7
  stage_sizes: Sequence[int] = STAGE_SIZES["resnet18"]   # blocks per stage
  dropout: float = 0.2
  embedding_dim: int = 128
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
    if x.ndim != 3:
      raise ValueError(f"encoder input must be (batch, time, leads), got shape {x.shape}")
    x = jnp.asarray(x, self.dtype)
    x = _conv(self.width, self.stem_kernel, 2, self.dtype, "stem_conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                     dtype=self.dtype, param_dtype=jnp.float32, axis_name=self.bn_axis_name,
                     name="stem_bn")(x)
    x = nn.relu(x)
    x = nn.max_pool(x, (3,), strides=(2,), padding=((1, 1),))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        x = BasicBlock1D(self.width * 2 ** stage, stride=2 if stage > 0 and block == 0 else 1,
                         kernel_size=self.kernel_size, dropout=self.dropout, dtype=self.dtype,
                         bn_axis_name=self.bn_axis_name, name=f"stage{stage + 1}_block{block + 1}")(
                             x, train)
    pooled = jnp.mean(x.astype(jnp.float32), axis=1)
    emb = nn.Dense(self.embedding_dim, dtype=self.dtype, param_dtype=jnp.float32,
                   name="embedding")(pooled).astype(jnp.float32)
    return (emb, pooled) if return_features else emb
