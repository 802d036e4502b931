"""Test setup: 8 fake CPU devices, so that pmap and the collectives run for real."""

import os

# Must happen before jax is imported anywhere in the test process.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A throw-away SSLDML_DATA_DIR shared by the tests of one process."""
  path = tmp_path_factory.mktemp("ssldml_data")
  os.environ["SSLDML_DATA_DIR"] = str(path)
  return str(path)


@pytest.fixture(scope="session")
def ecg_synth_tiny(data_dir):
  """``ecg_synth/tiny`` built once per test process into ``data_dir``; returns its builder."""
  import tensorflow_datasets as tfds
  from ssldml_jax.data import build
  tfds.disable_progress_bar()
  return build.ensure_built("ecg_synth/tiny", data_dir)
