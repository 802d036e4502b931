"""launch/wheelhouse.sh + launch/setup.sh --offline: an install with no index on a host that
brings its own jax stack (simulated: a virtual environment that sees only what a GPU image
typically has, jax, numpy, scipy, pandas, pyarrow, ..., taken from the test environment)."""

import glob
import os
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Distributions the simulated host has, with their import names (the large ones of the closure:
# the wheelhouse leaves them out, as a user would for a host that has them).
HOST_STACK = {"jax": ["jax"], "jaxlib": ["jaxlib"], "numpy": ["numpy"], "scipy": ["scipy"],
              "ml_dtypes": ["ml_dtypes"], "opt_einsum": ["opt_einsum"], "pyarrow": ["pyarrow"],
              "tensorstore": ["tensorstore"], "pandas": ["pandas"], "h5py": ["h5py"],
              "scikit_learn": ["sklearn"], "pillow": ["PIL"], "fonttools": ["fontTools"],
              "matplotlib": ["matplotlib", "mpl_toolkits", "pylab.py"],
              "contourpy": ["contourpy"], "kiwisolver": ["kiwisolver"]}


def _run(cmd, **kwargs):
  result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
  assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
  return result.stdout


def _host_with_jax_only(tmp_path) -> str:
  """A virtual environment whose only packages are the jax stack of this test environment."""
  host = tmp_path / "host"
  _run([os.path.join(sys.base_prefix, "bin", "python3"), "-m", "venv", str(host)])
  stack = tmp_path / "host_stack"
  stack.mkdir()
  site = sysconfig.get_paths()["purelib"]
  for dist, modules in HOST_STACK.items():
    # .libs: the shared libraries that manylinux wheels bundle.
    for pattern in modules + [f"{dist}.libs", f"{dist}-*.dist-info"]:
      for path in glob.glob(os.path.join(site, pattern)):
        os.symlink(path, stack / os.path.basename(path))
  host_site = _run([str(host / "bin" / "python"), "-c",
                    "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
  with open(os.path.join(host_site, "stack.pth"), "w", encoding="utf-8") as f:
    f.write(f"{stack}\n")
  return str(host / "bin" / "python")


def _offline_env() -> dict:
  """No pip configuration, no index that could be reached, nothing from this checkout."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
  env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/simple",
             PIP_NO_INPUT="1", JAX_PLATFORMS="cpu")
  env.pop("PYTHONPATH", None)
  return env


@pytest.mark.slow
def test_offline_install_from_wheelhouse_keeps_the_hosts_jax(tmp_path):
  wheelhouse = tmp_path / "wheelhouse"
  # Made with this environment's pip and the package index (as on a machine with internet);
  # the host stack is left out, as a user would for packages the host already has (jax and
  # jaxlib by default).
  exclude = ",".join(sorted(set(HOST_STACK) - {"jax", "jaxlib"}))
  out = _run(["bash", os.path.join(ROOT, "launch", "wheelhouse.sh"), str(wheelhouse),
              "--exclude", exclude], env=dict(os.environ, PYTHON=sys.executable))
  assert "without jax/jaxlib" in out
  wheels = {os.path.basename(w).split("-")[0].lower() for w in glob.glob(f"{wheelhouse}/*.whl")}
  assert {"ssldml_jax", "flax", "tensorflow_datasets", "grain", "promise"} <= wheels
  assert not wheels & set(HOST_STACK)

  host_python = _host_with_jax_only(tmp_path)
  checkout = tmp_path / "checkout"
  (checkout / "launch").mkdir(parents=True)
  with open(os.path.join(ROOT, "launch", "setup.sh"), encoding="utf-8") as f:
    (checkout / "launch" / "setup.sh").write_text(f.read())
  env = _offline_env()
  out = _run(["bash", str(checkout / "launch" / "setup.sh"), "--offline", str(wheelhouse)],
             env=dict(env, PYTHON=host_python))
  assert "ssldml_jax installed" in out

  venv_python = str(checkout / ".venv" / "bin" / "python")
  probe = ("import jax, numpy, ssldml_jax, flax, grain, tensorflow_datasets\n"
           "from ssldml_jax import dtw\n"
           "import numpy as np\n"
           "x = np.random.default_rng(0).normal(size=(3, 9, 12)).astype(np.float32)\n"
           "d = np.asarray(dtw.cross_dtw(x, x[::-1]))\n"
           "assert d.shape == (3, 3) and np.isfinite(d).all()\n"
           "print(jax.__version__, jax.__file__, numpy.__file__, ssldml_jax.__file__)")
  version, jax_file, numpy_file, package_file = _run([venv_python, "-c", probe], env=env,
                                                     cwd=str(tmp_path)).split()
  import jax  # pylint: disable=import-outside-toplevel
  assert version == jax.__version__
  # The host's jax and numpy, found through its environment, not reinstalled in .venv.
  assert os.path.realpath(jax_file) == os.path.realpath(jax.__file__)
  assert str(tmp_path / "host_stack") in jax_file and str(tmp_path / "host_stack") in numpy_file
  assert package_file.startswith(str(checkout / ".venv"))
  venv_site = _run([venv_python, "-c",
                    "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env).strip()
  assert not {n for n in os.listdir(venv_site) if n.split("-")[0].lower() in HOST_STACK}

  # A second run finds everything installed and does nothing.
  out = _run(["bash", str(checkout / "launch" / "setup.sh"), "--offline", str(wheelhouse)],
             env=dict(env, PYTHON=host_python))
  assert out == ""
