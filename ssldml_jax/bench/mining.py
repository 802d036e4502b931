"""Mining + triplet loss, forward and backward: this project vs pytorch-metric-learning vs a loop.

``python -m ssldml_jax.bench mining [--sizes=64,256,1024] [--dim=128] [--rounds=5] [--calls=10]
[--baseline_miners=FILE] [--step_rounds=3] [--no_train_step] [--quick] [--no_record]``

Each measured step takes embeddings ``(B, D)`` and returns the mean triplet loss (margin 0.2,
Euclidean distance on L2-normalised embeddings, mean over all mined triplets) and its gradient
with respect to the embeddings, for two miners:

- ``distance``: SSL-DML mining from a raw-signal distance matrix (nearest positive, random
  negative). This project: ``jax.jit(jax.value_and_grad(...))`` of ``miners.distance_miner`` +
  ``losses.triplet_loss`` (through ``losses.global_triplet_loss``). pytorch-metric-learning has no
  such miner, so its row is ``TripletMarginLoss`` on an indices tuple mined beforehand (the
  mining is not in its time). The loop is ``reference_loops.distance_triplet_loop``.
- ``batch_hard``: labels instead of raw distances. pytorch-metric-learning: ``BatchHardMiner`` +
  ``TripletMarginLoss``; the loop: ``reference_loops.batch_hard_triplet_loop``.

Before timing, the three implementations are run on the same data and must agree on the loss and
the gradient (the distance miner with ``neg_topk=1``, whose negative is deterministic, so all three
pick the same triplets); the timed runs draw random negatives (``neg_topk=None``, the paper's).
The raw-distance matrix is the Euclidean distance between random signals: mining cost does not
depend on where the distances came from (``bench dtw`` times computing them).

Share of the training step. What matters end to end is how much of a training step mining and the
loss take. The program times the paper-config training step (``bench train_step``'s program:
ResNet-18, 10 s at 250 Hz, 64 ECGs per device, forward, backward and AdamW) and, in the same run,
one device's mining + triplet loss at the paper's per-device batch of 64 anchors against a global
batch of 64 (one device) and 512 (eight devices), and prints the ratio. The step is slow on a CPU
(seconds), so it is timed over ``--step_rounds`` steps only. Raw-signal distances (DTW) are not
part of "mining" here: ``bench dtw`` times them.

Baseline miners. ``--baseline_miners=FILE`` loads another version of ``ssldml_jax/miners.py``
(for example ``git show main:ssldml_jax/miners.py > /tmp/baseline_miners.py``) and times it
against this one in the same run, inside the same loss: first both must mine the same triplets for
the deterministic miners (``distance`` with ``neg_topk=1``, ``batch_hard``), then the timed runs
are as above; the share table gets the baseline's share and the difference.

Threads: torch gets one intra-op thread unless ``--torch_threads`` says otherwise. On a 2-core
machine its OpenMP workers spin between operations on the core the next computation needs: with
torch's default of 2 threads, pytorch-metric-learning ran 4-14x slower here and, in the same
process, the JAX step 2.5-4x slower. The loop's tensors are too small for threads to matter.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import statistics
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ssldml_jax import distances, losses, miners
from ssldml_jax.bench import common, reference_loops, train_step

MINERS = ("distance", "batch_hard")
SIZES = (64, 256, 1024)
QUICK_SIZES = (16, 64)
MARGIN = 0.2
# Roughly eight examples per class, so that batch-hard finds positives at every batch size.
_PER_CLASS = 8
# Goals of the issue, at B = 256.
GOAL_B = 256
GOALS = {"pytorch-metric-learning": 3.0, "python loop": 100.0}
# The paper's per-device batch, mined against the global batch of one and of eight devices.
PAPER_B = 64
PAPER_DEVICES = (1, 8)


def make_inputs(b: int, dim: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Embeddings, a symmetric raw-distance matrix with a zero diagonal, and class labels."""
  rng = np.random.default_rng(seed)
  signals = rng.normal(size=(b, 64)).astype(np.float64)
  sq = np.sum(signals**2, 1)
  raw = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * signals @ signals.T, 0.0))
  np.fill_diagonal(raw, 0.0)
  return {"emb": rng.normal(size=(b, dim)).astype(np.float32),
          "raw": raw.astype(np.float32),
          "labels": rng.integers(0, max(2, b // _PER_CLASS), size=b).astype(np.int32)}


# --- The three implementations: callables that run one forward and backward step ---------------

@functools.lru_cache(maxsize=None)
def _jax_value_and_grad(miner: str, neg_topk: Optional[int]) -> Callable:
  def loss_fn(emb, raw, labels, key):
    if miner == "distance":
      value, triplets = losses.global_triplet_loss(emb, key, miner="distance", raw_dist_rows=raw,
                                                   neg_topk=neg_topk, margin=MARGIN,
                                                   distance="euclidean", axis_name=None)
    else:
      value, triplets = losses.global_triplet_loss(emb, miner="batch_hard", labels=labels,
                                                   margin=MARGIN, distance="euclidean",
                                                   axis_name=None)
    return value, triplets
  return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))


def _bind(fn: Callable, inputs: dict, seed: int) -> Callable[[], tuple]:
  """``fn`` on ``inputs`` as a no-argument callable returning (loss, triplets, grad).

  The arrays are placed on the device beforehand, so a call times the step alone.
  """
  args = (jnp.asarray(inputs["emb"]), jnp.asarray(inputs["raw"]), jnp.asarray(inputs["labels"]),
          jax.random.key(seed))

  def step():
    (loss, triplets), grad = jax.block_until_ready(fn(*args))
    return loss, triplets, grad
  return step


def jax_step(miner: str, inputs: dict, *, neg_topk: Optional[int] = None,
             seed: int = 0) -> Callable[[], tuple]:
  """This project's jitted miner + loss: a no-argument callable returning (loss, triplets, grad)."""
  return _bind(_jax_value_and_grad(miner, neg_topk), inputs, seed)


@functools.lru_cache(maxsize=None)
def _module_value_and_grad(module: Any, miner: str, rows: int,
                           neg_topk: Optional[int]) -> Callable:
  def loss_fn(emb, raw, labels, key):
    if miner == "distance":
      triplets = module.distance_miner(raw[:rows], key, neg_topk)
    else:
      unit = jax.lax.stop_gradient(distances.l2_normalize(emb))
      triplets = module.batch_hard_miner(distances.euclidean(unit[:rows], unit), labels)
    value = losses.triplet_loss(emb, *triplets, margin=MARGIN, distance="euclidean")
    return value, triplets
  return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))


def miner_step(module: Any, miner: str, inputs: dict, *, rows: Optional[int] = None,
               neg_topk: Optional[int] = None, seed: int = 0) -> Callable[[], tuple]:
  """One device's step with the miners of ``module`` (``ssldml_jax.miners`` or another version).

  The device's anchors are the first ``rows`` (default: all) of the ``len(inputs["emb"])``
  candidates, offset 0, as a device mines its rows against the gathered batch; the loss is
  ``losses.triplet_loss`` and the gradient is w.r.t. every candidate's embedding (the transpose
  of the gather, which sends each device its rows, is communication and not timed).
  """
  fn = _module_value_and_grad(module, miner, rows or len(inputs["emb"]), neg_topk)
  return _bind(fn, inputs, seed)


def valid_triplets(triplets) -> np.ndarray:
  """A miner's ``Triplets`` as a ``(3, n_valid)`` array of indices (what pml is given)."""
  valid = np.asarray(triplets.valid)
  return np.stack([np.asarray(x)[valid] for x in triplets[:3]])


def pml_step(miner: str, inputs: dict, *, triplets: Optional[np.ndarray] = None
             ) -> Callable[[], tuple]:
  """pytorch-metric-learning on torch CPU: returns a callable that runs forward and backward."""
  import torch  # Optional peers (requirements-bench.txt).
  from pytorch_metric_learning import losses as pml_losses
  from pytorch_metric_learning import miners as pml_miners
  from pytorch_metric_learning import reducers

  # MeanReducer: the mean over every mined triplet, as losses.triplet_loss (pml's default
  # averages over the non-zero terms only).
  loss_fn = pml_losses.TripletMarginLoss(margin=MARGIN, reducer=reducers.MeanReducer())
  emb = torch.from_numpy(inputs["emb"])
  labels = torch.from_numpy(inputs["labels"].astype(np.int64))
  if miner == "distance":
    indices = tuple(torch.from_numpy(x.astype(np.int64)) for x in triplets)
  else:
    mine = pml_miners.BatchHardMiner()

  def step():
    leaf = emb.clone().requires_grad_(True)
    if miner == "distance":
      loss = loss_fn(leaf, None, indices)
    else:
      loss = loss_fn(leaf, labels, mine(leaf, labels))
    loss.backward()
    return float(loss.detach()), leaf.grad.numpy()
  return step


def loop_step(miner: str, inputs: dict, *, neg_topk: Optional[int] = None,
              seed: int = 0) -> Callable[[], tuple]:
  """The per-anchor Python loop of the reference code (``reference_loops``)."""
  if miner == "distance":
    rng = np.random.default_rng(seed)
    return lambda: reference_loops.distance_triplet_loop(
        inputs["emb"], inputs["raw"], margin=MARGIN, neg_topk=neg_topk, rng=rng)
  return lambda: reference_loops.batch_hard_triplet_loop(inputs["emb"], inputs["labels"],
                                                          margin=MARGIN)


# --- Agreement check --------------------------------------------------------------------------

def check_agreement(miner: str, b: int, dim: int, *, seed: int = 0, rtol: float = 1e-5,
                    atol: float = 1e-6) -> dict[str, float]:
  """Runs the three implementations on the same data; raises AssertionError if they differ.

  Returns the loss of each. The distance miner uses ``neg_topk=1`` (deterministic negative).
  """
  inputs = make_inputs(b, dim, seed)
  neg_topk = 1 if miner == "distance" else None
  loss, triplets, grad = jax_step(miner, inputs, neg_topk=neg_topk, seed=seed)()
  triplets = valid_triplets(triplets)
  results = {"ssldml_jax": (float(loss), np.asarray(grad)),
             "pytorch-metric-learning": pml_step(miner, inputs, triplets=triplets)(),
             "python loop": loop_step(miner, inputs, neg_topk=neg_topk, seed=seed)()}
  ours = results["ssldml_jax"]
  for name, (peer_loss, peer_grad) in results.items():
    if not np.isclose(peer_loss, ours[0], rtol=rtol, atol=atol):
      raise AssertionError(f"mining {miner} B={b}: {name} loss {peer_loss:.8g} != "
                           f"ssldml_jax {ours[0]:.8g}")
    err = float(np.max(np.abs(peer_grad - ours[1])))
    if err > atol + rtol * float(np.max(np.abs(ours[1]))):
      raise AssertionError(f"mining {miner} B={b}: {name} gradient differs from ssldml_jax's by "
                           f"up to {err:.3g}")
  return {name: value[0] for name, value in results.items()}


# --- Timing -----------------------------------------------------------------------------------

def time_alternating(fns: dict[str, Callable[[], Any]], *, rounds: int, calls: dict[str, int],
                     settle: int = 2) -> dict[str, float]:
  """Median seconds per call of each function; they take turns in blocks, round after round.

  A block is ``settle`` untimed calls then ``calls[name]`` timed ones. Alternating spreads a
  shared machine's changing load over all of them; the untimed calls let the previous library's
  threads wind down and this one's wake up, which would otherwise add a millisecond to the first
  call of every block (``common.time_interleaved`` times whole blocks, so it would count it).
  """
  times: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      for _ in range(settle):
        jax.block_until_ready(fn())
      for _ in range(calls[name]):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def time_size(b: int, dim: int, *, rounds: int, calls: int, seed: int = 0) -> list[dict]:
  """Checks agreement at batch ``b``, then times each miner's three implementations.

  They take turns (``rounds`` rounds of ``calls`` calls each, one call of the loop), so that the
  load of a shared machine weighs on all of them alike.
  """
  rows = []
  for miner in MINERS:
    found = check_agreement(miner, b, dim, seed=seed)
    print(f"  B={b} {miner}: losses agree: "
          + ", ".join(f"{name} {value:.7f}" for name, value in found.items()), flush=True)
    inputs = make_inputs(b, dim, seed)
    ours = jax_step(miner, inputs, seed=seed)
    triplets = valid_triplets(ours()[1]) if miner == "distance" else None
    steps = {"ssldml_jax": ours,
             "pytorch-metric-learning": pml_step(miner, inputs, triplets=triplets),
             "python loop": loop_step(miner, inputs, seed=seed)}
    seconds = time_alternating(steps, rounds=rounds, calls={
        "ssldml_jax": calls, "pytorch-metric-learning": calls, "python loop": 1})
    for peer in ("pytorch-metric-learning", "python loop"):
      rows.append({"benchmark": "mining", "case": f"{miner} B={b} D={dim}",
                   "ours_s": seconds["ssldml_jax"], "peer": peer, "peer_s": seconds[peer],
                   "ratio": seconds[peer] / seconds["ssldml_jax"]})
      if miner == "distance" and peer != "python loop":
        rows[-1]["note"] = "loss on our triplets (pml has no such miner)"
  return rows


# --- Another version of the miners -------------------------------------------------------------

def load_miners(path: str) -> Any:
  """Another version of ``ssldml_jax/miners.py``, loaded from ``path`` as a module of its own."""
  if not os.path.isfile(path):
    raise ValueError(f"--baseline_miners={path}: no such file")
  spec = importlib.util.spec_from_file_location("baseline_miners", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  missing = [f"{m}_miner" for m in MINERS if not hasattr(module, f"{m}_miner")]
  if missing:
    raise ValueError(f"--baseline_miners={path} defines no {', '.join(missing)}")
  return module


def check_baseline(baseline: Any, b: int, dim: int, *, seed: int = 0) -> None:
  """Raises AssertionError unless ``baseline`` mines this project's triplets at batch ``b``
  where the choice is deterministic (``distance`` with ``neg_topk=1``, ``batch_hard``)."""
  inputs = make_inputs(b, dim, seed)
  for miner in MINERS:
    fixed = 1 if miner == "distance" else None
    ours, theirs = (miner_step(m, miner, inputs, neg_topk=fixed, seed=seed)()[1]
                    for m in (miners, baseline))
    for name, a, c in zip(miners.Triplets._fields, ours, theirs):
      if not np.array_equal(np.asarray(a), np.asarray(c)):
        raise AssertionError(f"mining {miner} B={b}: the baseline miners pick other {name}")


def time_baseline(baseline: Any, b: int, dim: int, *, rounds: int, calls: int,
                  seed: int = 0) -> list[dict]:
  """This project's miners against ``baseline``'s inside the same loss, at batch ``b``.

  First ``check_baseline``; the timed runs then draw random negatives as in ``time_size``.
  """
  check_baseline(baseline, b, dim, seed=seed)
  rows = []
  inputs = make_inputs(b, dim, seed)
  for miner in MINERS:
    steps = {"ssldml_jax": miner_step(miners, miner, inputs, seed=seed),
             "baseline": miner_step(baseline, miner, inputs, seed=seed)}
    seconds = time_alternating(steps, rounds=rounds, calls={name: calls for name in steps})
    ratio = seconds["baseline"] / seconds["ssldml_jax"]
    rows.append({"benchmark": "mining", "case": f"{miner} B={b} D={dim}",
                 "ours_s": seconds["ssldml_jax"], "peer": "baseline miners",
                 "peer_s": seconds["baseline"], "ratio": ratio,
                 "note": "same loss; same triplets with neg_topk=1"})
  return rows


# --- Share of the training step ------------------------------------------------------------------

def train_step_share(*, dim: int, rounds: int, calls: int, step_rounds: int, quick: bool,
                     baseline: Any = None) -> dict:
  """Mining + triplet loss of one device as a share of the paper-config training step.

  The step is ``bench train_step``'s program (``train_step.run``) on the default device: float32
  on a CPU, bfloat16 on a GPU (as the GPU rows of ``bench train_step``). ``quick``: the small
  model and batch of ``bench train_step --quick`` instead, for a smoke run.
  """
  width, rate, batch = (16, 100, 8) if quick else (64, 250, PAPER_B)
  dtype = "bfloat16" if jax.default_backend() == "gpu" else "float32"
  step = train_step.run(batch=batch, rate=rate, num_steps=step_rounds, warmup=1, width=width,
                        with_torch=False, dtype=dtype)
  model = f"ResNet-18 w{width}, {batch} ECGs of {step['num_samples']} samples, {dtype}"
  print(f"  training step ({model}): {common.seconds(step['jax_s'])} "
        f"(median of {step_rounds})", flush=True)
  rows = []
  for devices in PAPER_DEVICES:
    inputs = make_inputs(batch * devices, dim)
    fns = {"ssldml_jax": miner_step(miners, "distance", inputs, rows=batch)}
    if baseline is not None:
      fns["baseline"] = miner_step(baseline, "distance", inputs, rows=batch)
    seconds = time_alternating(fns, rounds=rounds, calls={name: calls for name in fns})
    row = {"case": f"distance, {batch} x {batch * devices} ({devices} device"
                   f"{'s' if devices > 1 else ''})",
           "mining_s": seconds["ssldml_jax"], "step_s": step["jax_s"],
           "share": seconds["ssldml_jax"] / step["jax_s"]}
    if baseline is not None:
      row.update(baseline_s=seconds["baseline"], baseline_share=seconds["baseline"] / step["jax_s"],
                 saving=(seconds["baseline"] - seconds["ssldml_jax"]) / step["jax_s"])
    rows.append(row)
  headers = ["anchors x candidates", "mining + loss", "training step", "share"]
  if baseline is not None:
    headers += ["baseline miners", "baseline share", "saved by baseline"]
  body = [[r["case"], common.seconds(r["mining_s"]), common.seconds(r["step_s"]),
           f"{100 * r['share']:.3g}%"]
          + ([common.seconds(r["baseline_s"]), f"{100 * r['baseline_share']:.3g}%",
              f"{-100 * r['saving']:.3g}%"] if baseline is not None else []) for r in rows]
  print(f"\nmining + triplet loss (forward, backward) as a share of the training step ({model})\n"
        + common.table(headers, body), flush=True)
  return {"model": model, "step_s": step["jax_s"], "step_rounds": step_rounds, "rows": rows}


def main(args: Optional[Sequence[str]] = None) -> dict:
  parser = common.arg_parser("mining", __doc__)
  parser.add_argument("--sizes", type=common.int_list("--sizes", 3), default=SIZES,
                      help="batch sizes, e.g. 64,256,1024")
  parser.add_argument("--dim", type=int, default=128, help="embedding dimension")
  parser.add_argument("--rounds", type=int, default=5,
                      help="timing rounds; each calls the loop once, the others --calls times")
  parser.add_argument("--calls", type=int, default=10, help="calls per round of ssldml_jax, pml")
  parser.add_argument("--torch_threads", type=int, default=1,
                      help="torch intra-op threads (0: torch's default); see the module doc")
  parser.add_argument("--baseline_miners", default=None,
                      help="another version of ssldml_jax/miners.py to time against this one")
  parser.add_argument("--step_rounds", type=int, default=3,
                      help="timed training steps for the share of the step (seconds each on CPU)")
  parser.add_argument("--no_train_step", action="store_true",
                      help="skip the share of the training step (and its compilation)")
  a = common.parse_args(parser, args, quick=f"sizes {QUICK_SIZES}, few repeats",
                        positive=("dim", "rounds", "calls", "step_rounds"),
                        at_least={"torch_threads": 0})
  try:
    baseline = None if a.baseline_miners is None else load_miners(a.baseline_miners)
  except (ValueError, SyntaxError, ImportError) as e:
    parser.error(str(e))
  sizes, rounds, calls, step_rounds = ((QUICK_SIZES, 1, 3, 1) if a.quick else
                                       (a.sizes, a.rounds, a.calls, a.step_rounds))
  print(common.machine_line(["torch", "pytorch-metric-learning"]), flush=True)
  import torch
  default_threads = torch.get_num_threads()
  threads = a.torch_threads or default_threads
  print(f"{common.load_line()}; torch intra-op threads: {threads}", flush=True)
  rows = []
  torch.set_num_threads(threads)
  try:
    for b in sizes:
      rows += time_size(b, a.dim, rounds=rounds, calls=calls)
      if baseline is not None:
        rows += time_baseline(baseline, b, a.dim, rounds=rounds, calls=calls)
  finally:
    torch.set_num_threads(default_threads)
  for r in rows:
    if r["case"].endswith(f"B={GOAL_B} D=128") and r["peer"] in GOALS:
      goal = GOALS[r["peer"]]
      r["goal"] = f">= {goal:g}x: {'met' if r['ratio'] >= goal else 'NOT met'}"
  common.print_comparison(rows, "mining + triplet loss, forward and backward (time per step)")
  print(common.load_line(), flush=True)
  result = {"rows": rows}
  if not a.no_train_step:
    result["train_step_share"] = train_step_share(dim=a.dim, rounds=rounds, calls=calls,
                                                  step_rounds=step_rounds, quick=a.quick,
                                                  baseline=baseline)
    print(common.load_line(), flush=True)
  if not (a.quick or a.no_record):
    common.record("mining", result)
  return result
