"""Encoder training step: this project's compiled ResNet-18 step vs the same network, PyTorch eager.

``python -m ssldml_jax.bench train_step [--batch=64] [--rate=250] [--steps=5] [--quick]``

The step is the ``supervised`` method's (``ssldml_jax.steps``): ResNet-18 encoder, the paper's
MLP head, BCE on mPCWP > 18, AdamW; forward, backward and update, on one device. The PyTorch peer
is the same architecture written with ``torch.nn`` (``TorchResNet1D``), loaded with the same
initial weights and checked to give the same embeddings before anything is timed; it runs eager
(no ``torch.compile``), as the reference code did. Both see the same batch of 10 s ECGs.

Reported: median seconds per step of each, their ratio, ECG/s, the model FLOPs per step (3 x the
analytic forward count of convolutions and dense layers; XLA's own count beside it) and the
achieved FLOP/s against the machine's measured matmul peak (float32 on CPU). On a GPU the step
also runs with bfloat16 compute at per-device batch 64 and 256 (no PyTorch row there).
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssldml_jax import config_defaults, steps
from ssldml_jax.bench import common

GPU_BATCHES = (64, 256)


# --- The two programs -----------------------------------------------------------------------------

def make_config(*, width: int = 64, stage_sizes: Optional[tuple] = None, rate: int = 250,
                dtype: str = "float32") -> ml_collections.ConfigDict:
  c = config_defaults.base_config()
  c.method = "supervised"
  c.model.width = width
  c.model.stage_sizes = stage_sizes
  c.model.dtype = dtype
  c.data.sampling_rate = rate
  return c


def make_batch(batch: int, num_samples: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {"ecg": rng.normal(0.0, 0.3, (batch, num_samples, 12)).astype(np.float32),
          "pcwp": rng.uniform(5.0, 35.0, batch).astype(np.float32),
          "age": np.full(batch, 60.0, np.float32), "sex": np.zeros(batch, np.int32),
          "mask": np.ones(batch, bool), "patient_key": np.arange(batch, dtype=np.int32)}


def jax_program(config: ml_collections.ConfigDict, num_samples: int):
  """(initial state, compiled one-device step, XLA's FLOP count of one step)."""
  mods = steps.build_models(config, bn_axis_name=None)
  tx, schedule = steps.make_optimizer(config, 1000)
  fast = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
  state = jax.jit(functools.partial(steps.init_state, config, mods, tx), static_argnums=(1,),
                  compiler_options=fast)(jax.random.PRNGKey(0), num_samples)
  step = jax.jit(steps.make_train_step(config, mods, tx, schedule, axis_name=None),
                 donate_argnums=(0,))
  return mods, state, step


def xla_flops(compiled) -> float:
  """XLA's FLOP count of a compiled step (NaN where the backend reports none)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # Not every backend reports a cost.
    return float("nan")
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))


def model_flops(config: ml_collections.ConfigDict, num_samples: int, batch: int) -> float:
  """3 x forward multiply-adds x 2 of the convolutions and dense layers (the usual MFU count)."""
  from ssldml_jax.models import STAGE_SIZES
  m = config.model
  stages = m.stage_sizes or STAGE_SIZES[m.name]
  length = (num_samples + 2 * (m.stem_kernel // 2) - m.stem_kernel) // 2 + 1
  macs = length * 12 * m.width * m.stem_kernel
  length = (length + 2 - 3) // 2 + 1  # max-pool 3, stride 2, pad 1
  channels = m.width
  for stage, blocks in enumerate(stages):
    width = m.width * 2**stage
    for block in range(blocks):
      stride = 2 if stage > 0 and block == 0 else 1
      out_len = (length + 2 * (m.kernel_size // 2) - m.kernel_size) // stride + 1
      macs += out_len * channels * width * m.kernel_size + out_len * width * width * m.kernel_size
      if stride != 1 or channels != width:
        macs += out_len * channels * width
      length, channels = out_len, width
  macs += channels * m.embedding_dim + m.embedding_dim * 128 + 128  # embedding + probe head
  return 3.0 * 2.0 * macs * batch


def torch_model(config: ml_collections.ConfigDict):
  """``TorchResNet1D``: the encoder and probe head of ``ssldml_jax.models`` in ``torch.nn``."""
  import torch
  from torch import nn

  m = config.model

  def conv(cin, cout, k, stride):
    return nn.Conv1d(cin, cout, k, stride=stride, padding=k // 2, bias=False)

  def bn(c):
    return nn.BatchNorm1d(c, eps=1e-5, momentum=0.1)

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1, self.bn1 = conv(cin, cout, m.kernel_size, stride), bn(cout)
      self.drop = nn.Dropout(m.dropout)
      self.conv2, self.bn2 = conv(cout, cout, m.kernel_size, 1), bn(cout)
      self.shortcut = (nn.Sequential(conv(cin, cout, 1, stride), bn(cout))
                       if stride != 1 or cin != cout else None)

    def forward(self, x):
      y = self.drop(torch.relu(self.bn1(self.conv1(x))))
      y = self.bn2(self.conv2(y))
      return torch.relu(y + (x if self.shortcut is None else self.shortcut(x)))

  class TorchResNet1D(nn.Module):
    def __init__(self):
      super().__init__()
      from ssldml_jax.models import STAGE_SIZES
      stages = m.stage_sizes or STAGE_SIZES[m.name]
      self.stem = nn.Sequential(conv(12, m.width, m.stem_kernel, 2), bn(m.width), nn.ReLU(),
                                nn.MaxPool1d(3, 2, padding=1))
      blocks, cin = [], m.width
      for stage, n in enumerate(stages):
        for block in range(n):
          cout = m.width * 2**stage
          blocks.append(Block(cin, cout, 2 if stage > 0 and block == 0 else 1))
          cin = cout
      self.blocks = nn.Sequential(*blocks)
      self.embedding = nn.Linear(cin, m.embedding_dim)
      self.head = nn.Sequential(nn.Linear(m.embedding_dim, 128), bn(128), nn.ReLU(),
                                nn.Dropout(0.3), nn.Linear(128, 1))

    def embed(self, x):  # x: (B, T, 12), as the JAX model takes it.
      h = self.blocks(self.stem(x.transpose(1, 2)))
      return self.embedding(h.mean(dim=2))

    def forward(self, x):
      return self.head(self.embed(x))[:, 0]

  return TorchResNet1D()


def load_jax_weights(model, params: dict, stats: dict) -> None:
  """Copies the flax variables into the torch model (kernels transposed to torch's layout)."""
  import torch

  def tensor(x):  # A writable float32 copy: torch must own what it trains.
    return torch.from_numpy(np.array(x, np.float32, copy=True, order="C"))

  def conv(module, p):
    module.weight.data = tensor(np.transpose(p["kernel"], (2, 1, 0)))

  def dense(module, p):
    module.weight.data = tensor(np.asarray(p["kernel"]).T)
    module.bias.data = tensor(p["bias"])

  def norm(module, p, s):
    module.weight.data, module.bias.data = tensor(p["scale"]), tensor(p["bias"])
    module.running_mean.data, module.running_var.data = tensor(s["mean"]), tensor(s["var"])

  enc, enc_stats = params["encoder"], stats["encoder"]
  conv(model.stem[0], enc["stem_conv"])
  norm(model.stem[1], enc["stem_bn"], enc_stats["stem_bn"])
  names = sorted((k for k in enc if k.startswith("stage")),
                 key=lambda k: tuple(int(s) for s in k.replace("stage", "").split("_block")))
  for block, name in zip(model.blocks, names):
    p, s = enc[name], enc_stats[name]
    conv(block.conv1, p["conv1"]); norm(block.bn1, p["bn1"], s["bn1"])  # noqa: E702
    conv(block.conv2, p["conv2"]); norm(block.bn2, p["bn2"], s["bn2"])  # noqa: E702
    if block.shortcut is not None:
      conv(block.shortcut[0], p["shortcut_conv"])
      norm(block.shortcut[1], p["shortcut_bn"], s["shortcut_bn"])
  dense(model.embedding, enc["embedding"])
  head, head_stats = params["head"], stats["head"]
  dense(model.head[0], head["hidden"])
  norm(model.head[1], head["bn"], head_stats["bn"])
  dense(model.head[4], head["out"])


def check_same_network(config, mods, state, batch: dict) -> float:
  """Largest relative difference of the embeddings (eval mode) of the two models; raises if
  above 1e-4, i.e. if they are not the same network."""
  import torch

  model = torch_model(config)
  load_jax_weights(model, jax.device_get(state.params), jax.device_get(state.batch_stats))
  model.eval()
  with torch.no_grad():
    theirs = model.embed(torch.from_numpy(batch["ecg"])).numpy()
  embed = jax.jit(lambda v, x: mods.encoder.apply(v, x, train=False))
  ours = np.asarray(embed({"params": state.params["encoder"],
                           "batch_stats": state.batch_stats["encoder"]}, batch["ecg"]))
  err = float(np.max(np.abs(ours - theirs)) / max(np.max(np.abs(ours)), 1e-12))
  if err > 1e-4:
    raise AssertionError(f"the PyTorch model is not the same network: embeddings differ by "
                         f"{err:.3g} (relative)")
  return err


def torch_step(config, state, batch: dict) -> Callable[[], float]:
  import torch

  model = torch_model(config)
  load_jax_weights(model, jax.device_get(state.params), jax.device_get(state.batch_stats))
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=config.optim.learning_rate,
                          weight_decay=config.optim.weight_decay)
  x = torch.from_numpy(batch["ecg"])
  y = torch.from_numpy((batch["pcwp"] > config.task.pcwp_threshold).astype(np.float32))
  loss_fn = torch.nn.BCEWithLogitsLoss()

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    return float(loss.detach())
  return step


def jax_step(step_fn, state, batch: dict) -> Callable[[], float]:
  holder = {"state": state}
  batch = jax.device_put(batch)
  rng = jax.random.PRNGKey(1)

  def step():
    holder["state"], metrics = step_fn(holder["state"], batch, rng)
    return float(metrics["loss"])  # Waits for the step.
  return step


# --- Measurement ----------------------------------------------------------------------------------

def matmul_peak(device: jax.Device, dtype=jnp.float32, sizes: Optional[Sequence[int]] = None,
                repeats: int = 10) -> tuple[float, str]:
  """The practical peak FLOP/s of ``device``: the best large square matmul of XLA and, on CPU,
  of PyTorch (its BLAS can beat XLA's CPU dot). Returns (FLOP/s, which one)."""
  cpu = device.platform == "cpu"
  sizes = sizes or ((1024, 2048, 3072) if cpu else (8192,))
  best, who = 0.0, ""
  f = jax.jit(lambda a: a @ a)
  for n in sizes:
    a = jax.device_put(jnp.ones((n, n), dtype), device)
    t = min(common.timings(lambda: f(a), repeats=repeats, warmup=1))
    if 2.0 * n**3 / t > best:
      best, who = 2.0 * n**3 / t, f"XLA {n}x{n}"
  if cpu and dtype == jnp.float32:
    try:
      import torch
    except ImportError:
      return best, who
    for n in sizes:
      a = torch.ones((n, n))
      t = min(common.timings(lambda: torch.mm(a, a), repeats=repeats, warmup=1))
      if 2.0 * n**3 / t > best:
        best, who = 2.0 * n**3 / t, f"torch {n}x{n}"
  return best, who


def run(*, batch: int, rate: int, num_steps: int, warmup: int, width: int = 64,
        stage_sizes: Optional[tuple] = None, with_torch: bool = True,
        dtype: str = "float32", device: Optional[jax.Device] = None) -> dict:
  """One comparison at one batch size on ``device`` (default: the first local device)."""
  with jax.default_device(device or jax.local_devices()[0]):
    return _run(batch=batch, rate=rate, num_steps=num_steps, warmup=warmup, width=width,
                stage_sizes=stage_sizes, with_torch=with_torch, dtype=dtype)


def _run(*, batch: int, rate: int, num_steps: int, warmup: int, width: int,
         stage_sizes: Optional[tuple], with_torch: bool, dtype: str) -> dict:
  config = make_config(width=width, stage_sizes=stage_sizes, rate=rate, dtype=dtype)
  num_samples = 10 * rate
  data = make_batch(batch, num_samples)
  mods, state, step_fn = jax_program(config, num_samples)
  # Compiled once, ahead of time: the FLOP count and the timed calls share the executable.
  step_fn = step_fn.lower(state, jax.device_put(data), jax.random.PRNGKey(1)).compile()
  out = {"batch": batch, "num_samples": num_samples, "dtype": dtype,
         "xla_flops": xla_flops(step_fn), "model_flops": model_flops(config, num_samples, batch)}
  host_state = jax.device_get(state)  # The JAX step donates ``state``; torch needs a copy.
  if with_torch:
    out["max_rel_embedding_diff"] = check_same_network(config, mods, host_state, data)
  fns = {"jax": jax_step(step_fn, state, data)}
  if with_torch:
    fns["torch"] = torch_step(config, host_state, data)
  # In alternation, so that a shared machine's varying load weighs on both alike.
  times = common.time_interleaved(fns, rounds=num_steps, warmup=warmup)
  out["jax_s"] = times["jax"]
  if with_torch:
    out["torch_s"] = times["torch"]
    out["speedup_vs_torch"] = out["torch_s"] / out["jax_s"]
  out["jax_ecg_per_s"] = batch / out["jax_s"]
  out["achieved_flops"] = out["model_flops"] / out["jax_s"]
  return out


def main(args: Optional[Sequence[str]] = None) -> dict:
  parser = common.arg_parser("train_step", __doc__)
  parser.add_argument("--batch", type=int, default=64, help="ECGs per step (the PyTorch row)")
  parser.add_argument("--rate", type=int, default=250, help="sampling rate, Hz (10 s ECGs)")
  parser.add_argument("--steps", type=int, default=5, help="timed steps of each, alternating")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compile)")
  a = common.parse_args(parser, args, quick="batch 8, width 16, 100 Hz: seconds, for a smoke test",
                        positive=("batch", "rate", "steps"), at_least={"warmup": 0})
  width, rate, batch = (16, 100, 8) if a.quick else (64, a.rate, a.batch)
  backend = jax.default_backend()
  print(common.machine_line(["torch"]), flush=True)
  # The PyTorch comparison is on the CPU, for both, whatever accelerator the machine has.
  host = jax.local_devices(backend="cpu")[0]
  peak, who = matmul_peak(host)
  cpu = run(batch=batch, rate=rate, num_steps=a.steps, warmup=a.warmup, width=width,
            device=host)
  # Measured again after the step: on a shared machine one measurement can land in a slow spell.
  peak, who = max((peak, who), matmul_peak(host))
  print(f"matmul peak (cpu, float32): {peak / 1e9:.1f} GFLOP/s ({who}; best of before "
        "and after)", flush=True)
  cpu["mfu"] = cpu["achieved_flops"] / peak
  case = f"ResNet-18 w{width} B={batch} T={cpu['num_samples']}"
  rows = [{"benchmark": "train_step", "case": case, "ours_s": cpu["jax_s"],
           "peer": "PyTorch eager", "peer_s": cpu["torch_s"], "ratio": cpu["speedup_vs_torch"],
           "note": f"{cpu['jax_ecg_per_s']:.0f} ECG/s, {cpu['achieved_flops'] / 1e9:.0f} GFLOP/s "
                   f"= {100 * cpu['mfu']:.0f}% of matmul peak"}]
  common.print_comparison(rows, "encoder train step: forward, backward, AdamW (time per step)")
  print(f"model FLOPs per step {cpu['model_flops'] / 1e9:.2f} G (XLA counts "
        f"{cpu['xla_flops'] / 1e9:.2f} G); same network: embeddings agree to "
        f"{cpu['max_rel_embedding_diff']:.1e} (relative)", flush=True)
  print(common.load_line(), flush=True)
  result = {"matmul_peak_flops": peak, "matmul_peak_by": who, "cpu": cpu, "rows": rows,
            "gpu_bf16": []}
  if backend == "gpu":
    bf16_peak, who = matmul_peak(jax.local_devices()[0], jnp.bfloat16)
    print(f"matmul peak (gpu, bfloat16): {bf16_peak / 1e12:.1f} TFLOP/s ({who})", flush=True)
    for b in GPU_BATCHES:
      r = run(batch=b, rate=rate, num_steps=a.steps, warmup=a.warmup, width=width,
              with_torch=False, dtype="bfloat16")
      r["mfu"] = r["achieved_flops"] / bf16_peak
      result["gpu_bf16"].append(r)
      print(f"bf16 train step, per-device batch {b}: {r['jax_s'] * 1e3:.2f} ms, "
            f"{r['jax_ecg_per_s']:.0f} ECG/s, MFU {100 * r['mfu']:.1f}% of the bf16 matmul peak",
            flush=True)
  if not (a.quick or a.no_record):
    common.record("train_step", result)
  return result
