"""Every cross-device helper of the project, over one named axis.

All per-device code (train steps, global-batch miners and losses) is written against the axis
name ``AXIS`` so that the same function runs under ``jax.pmap(..., axis_name=AXIS)`` or
``jax.shard_map`` over a mesh whose single axis is called ``AXIS``. Outside any mapped context
(``axis_name=None``) the helpers reduce to the identity, which is what single-device tests use.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

AXIS = "batch"


def gather_global(x: jax.Array, axis_name: Optional[str] = AXIS) -> jax.Array:
  """Concatenates the per-device leading dimension into the global batch (device-major order).

  The transpose of ``all_gather`` is a reduce-scatter, so gradients of a loss over the global
  batch flow back to the device that owns each row.
  """
  if axis_name is None:
    return x
  return lax.all_gather(x, axis_name, axis=0, tiled=True)


def global_offset(local_size: int, axis_name: Optional[str] = AXIS) -> jax.Array:
  """Index in the global batch of this device's first local row."""
  if axis_name is None:
    return jnp.zeros((), jnp.int32)
  return lax.axis_index(axis_name) * local_size


def pmean(tree: Any, axis_name: Optional[str] = AXIS) -> Any:
  if axis_name is None:
    return tree
  return lax.pmean(tree, axis_name)


def psum(tree: Any, axis_name: Optional[str] = AXIS) -> Any:
  if axis_name is None:
    return tree
  return lax.psum(tree, axis_name)


def device_key(key: jax.Array, step: jax.Array | int, axis_name: Optional[str] = AXIS) -> jax.Array:
  """One key per (step, device): the run key folded with the step, then with the device index."""
  key = jax.random.fold_in(key, step)
  if axis_name is None:
    return key
  return jax.random.fold_in(key, lax.axis_index(axis_name))


def local_device_count() -> int:
  return jax.local_device_count()


def local_mesh() -> jax.sharding.Mesh:
  """A one-axis mesh over this process's devices, named ``AXIS``."""
  return jax.sharding.Mesh(np.array(jax.local_devices()), (AXIS,))


def device_sharding() -> jax.sharding.NamedSharding:
  """Leading axis split over the local devices: the layout ``pmap`` expects for its inputs."""
  return jax.sharding.NamedSharding(local_mesh(), jax.sharding.PartitionSpec(AXIS))


def replicate(tree: Any) -> Any:
  """Places a copy of ``tree`` on every local device, with a leading device axis (pmap layout)."""
  n = jax.local_device_count()
  sharding = device_sharding()
  return jax.tree.map(
      lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), sharding),
      tree)


def unreplicate(tree: Any) -> Any:
  """Takes device 0's copy of a replicated tree (moved to host memory)."""
  return jax.tree.map(lambda x: np.asarray(x[0]), tree)


def shard_batch(batch: dict, num_devices: Optional[int] = None) -> dict:
  """Reshapes ``[global_local_batch, ...]`` host arrays to ``[devices, per_device, ...]``."""
  n = num_devices or jax.local_device_count()

  def reshape(x):
    x = np.asarray(x)
    if x.shape[0] % n:
      raise ValueError(f"batch of {x.shape[0]} does not split over {n} devices")
    return x.reshape((n, x.shape[0] // n) + x.shape[1:])

  return jax.tree.map(reshape, batch)


# Environment variables through which launch/multiprocess.sh (and any custom launcher) tells a process
# where the coordinator is. TPU VM pods and SLURM need none of them: jax.distributed auto-detects those.
ENV_COORDINATOR = "SSLDML_COORDINATOR"
ENV_NUM_PROCESSES = "SSLDML_NUM_PROCESSES"
ENV_PROCESS_ID = "SSLDML_PROCESS_ID"
ENV_MULTIHOST = "SSLDML_MULTIHOST"  # "1": call jax.distributed.initialize() with auto-detection.
# "0,1,...": the local devices one process drives (launch/slurm_gpu.sbatch: all of its node's GPUs).
# Without it, JAX gives each SLURM process only the GPU numbered by its SLURM_LOCALID.
ENV_LOCAL_DEVICE_IDS = "SSLDML_LOCAL_DEVICE_IDS"


def initialize_distributed() -> None:
  """Joins a multi-process run when the launcher asked for one; a no-op for a single process.

  Must run before any other JAX call. On CPU the cross-process collectives go through gloo.
  """
  import os  # Local: the rest of the module has no business with the environment.

  coordinator = os.environ.get(ENV_COORDINATOR)
  if coordinator:
    # Only CPU collectives read this; asking for the backend here would initialise it too early.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=int(os.environ[ENV_NUM_PROCESSES]),
        process_id=int(os.environ[ENV_PROCESS_ID]))
  elif os.environ.get(ENV_MULTIHOST) == "1":
    ids = os.environ.get(ENV_LOCAL_DEVICE_IDS)
    jax.distributed.initialize(local_device_ids=[int(i) for i in ids.split(",")] if ids else None)
