"""The launch scripts, run with stub ``python``/``gcloud``/``srun``/``sbatch``/``tar`` on the PATH.

Each stub records its arguments and the environment it was given (one JSON line per call) and
does no real work, so these tests check the exact commands and environment a script would run on
a TPU pod, a SLURM cluster or this machine, without either. ``srun`` and ``sbatch`` go on to run
what they were given (as SLURM would, on a node); the TPU workers' command is run by the test in
a fake home directory, so its quoting is checked by a real shell.
"""

import glob
import json
import os
import stat
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch")

# One script for every stub; it behaves by the name it is called under.
STUB = f"""#!{sys.executable}
import json, os, subprocess, sys

name = os.path.basename(sys.argv[0])
args = sys.argv[1:]
if name == "python" and args[:1] == ["-c"]:  # launch/multiprocess.sh asks for a free port.
  os.execv({sys.executable!r}, [{sys.executable!r}] + args)
env = {{k: v for k, v in os.environ.items()
       if k.startswith(("SSLDML_", "SLURM_")) or k in ("XLA_FLAGS", "JAX_PLATFORMS")}}
with open(os.environ["STUB_LOG"], "a") as log:
  log.write(json.dumps({{"tool": name, "args": args, "env": env, "cwd": os.getcwd()}}) + "\\n")
if name == "gcloud" and "describe" in args:
  state = os.environ.get("STUB_TPU_STATE", "")
  print(state)
  sys.exit(0 if state else 1)  # gcloud fails for a TPU that does not exist.
if name == "srun":  # Runs its command (the first argument that is not an option).
  command = next(i for i, a in enumerate(args) if not a.startswith("-"))
  sys.exit(subprocess.call(args[command:]))
if name == "sbatch":  # Runs the script on "a node" with the allocation's environment.
  script = next(i for i, a in enumerate(args) if not a.startswith("-"))
  gpus = [a.split("=", 1)[1] for a in args[:script] if a.startswith("--gpus-per-node=")]
  node_env = dict(os.environ, SLURM_SUBMIT_DIR=os.getcwd(),
                  SLURM_GPUS_ON_NODE=gpus[0] if gpus else "")
  sys.exit(subprocess.call(["bash"] + args[script:], env=node_env))
if name == "python" and os.environ.get("SSLDML_PROCESS_ID", "") == os.environ.get("STUB_FAIL_ID"):
  sys.exit(3)  # The process the test wants to fail.
"""


def _install_stub(directory, *names) -> None:
  os.makedirs(directory, exist_ok=True)
  for name in names:
    path = os.path.join(directory, name)
    with open(path, "w") as f:
      f.write(STUB)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


@pytest.fixture
def stubs(tmp_path):
  """Runs a launch script with the stubs first on the PATH; returns (result, calls)."""
  bin_dir = tmp_path / "bin"
  _install_stub(bin_dir, "python", "gcloud", "srun", "sbatch", "tar")
  log = tmp_path / "calls.jsonl"

  def run(command, *, cwd=REPO, **env):
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("SSLDML_", "SLURM_", "STUB_"))}
    full_env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", STUB_LOG=str(log), **env)
    if log.exists():
      log.unlink()
    result = subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True,
                            timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result, calls

  run.bin = str(bin_dir)
  return run


def test_every_launch_script_parses():
  scripts = sorted(glob.glob(os.path.join(LAUNCH, "*")))
  assert {os.path.basename(s) for s in scripts} >= {
      "local.sh", "multiprocess.sh", "setup.sh", "tpu_pod.sh", "slurm_gpu.sbatch"}
  for script in scripts:
    done = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
    assert done.returncode == 0, (script, done.stderr)


def test_local_runs_the_module_with_every_argument(stubs):
  result, calls = stubs(["bash", "launch/local.sh", "probe", "--", "--config=configs/probe.py",
                         "--workdir=runs/a b", "--config.probe.heads=linear"],
                        PYTHON=os.path.join(stubs.bin, "python"))
  assert result.returncode == 0, result.stderr
  assert [(c["tool"], c["args"]) for c in calls] == [
      ("python", ["-m", "ssldml_jax.probe", "--config=configs/probe.py", "--workdir=runs/a b",
                  "--config.probe.heads=linear"])]
  result, calls = stubs(["bash", "launch/local.sh", "train", "--", "--config=x"],
                        PYTHON=os.path.join(stubs.bin, "python"))
  assert result.returncode == 2 and "unknown module 'train'" in result.stderr and not calls


def test_multiprocess_starts_joined_processes(stubs, tmp_path):
  python = os.path.join(stubs.bin, "python")
  logs = tmp_path / "logs"
  result, calls = stubs(["bash", "launch/multiprocess.sh", "3", "--devices_per_process=2", "--",
                         "pretrain", "--config=configs/ssl_dml_dtw.py:tiny", "--workdir=runs/mp"],
                        PYTHON=python, SSLDML_LOG_DIR=str(logs))
  assert result.returncode == 0, result.stderr
  assert sorted(c["env"]["SSLDML_PROCESS_ID"] for c in calls) == ["0", "1", "2"]
  coordinators = {c["env"]["SSLDML_COORDINATOR"] for c in calls}
  assert len(coordinators) == 1
  host, port = coordinators.pop().split(":")
  assert host == "127.0.0.1" and 1024 <= int(port) < 65536
  assert f"coordinator 127.0.0.1:{port}" in result.stdout
  for call in calls:
    assert call["args"] == ["-m", "ssldml_jax.pretrain", "--config=configs/ssl_dml_dtw.py:tiny",
                            "--workdir=runs/mp"]
    assert call["env"]["SSLDML_NUM_PROCESSES"] == "3" and call["env"]["JAX_PLATFORMS"] == "cpu"
    assert call["env"]["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
  assert sorted(os.listdir(logs)) == ["process_0.log", "process_1.log", "process_2.log"]

  result, _ = stubs(["bash", "launch/multiprocess.sh", "2", "--", "probe", "--workdir=w"],
                    PYTHON=python, SSLDML_LOG_DIR=str(logs), STUB_FAIL_ID="1")
  assert result.returncode == 1
  assert "process 1 failed (exit status 3)" in result.stderr
  result, calls = stubs(["bash", "launch/multiprocess.sh", "0", "--", "pretrain", "--x"],
                        PYTHON=python)
  assert result.returncode == 2 and "positive integer, got '0'" in result.stderr and not calls


def _tpu_env(**extra):
  return dict(PROJECT="my-project", ZONE="us-central2-b", ACCELERATOR="v4-32",
              BUCKET="gs://my-bucket", USER="alice", **extra)


def test_tpu_pod_creates_installs_runs_and_deletes(stubs, tmp_path):
  result, calls = stubs(["bash", "launch/tpu_pod.sh", "configs/paper.py",
                         "--config.train.num_steps=10", "--config.probe.name=two words"],
                        **_tpu_env())
  assert result.returncode == 0, result.stderr
  tpu = ["compute", "tpus", "tpu-vm", "--project=my-project", "--zone=us-central2-b"]
  gcloud = [c["args"] for c in calls if c["tool"] == "gcloud"]
  assert [a[:len(tpu)] for a in gcloud] == [tpu] * len(gcloud)
  verbs = [a[len(tpu):] for a in gcloud]
  assert verbs[0] == ["describe", "ssldml-alice", "--format=value(state)"]
  assert verbs[1] == ["create", "ssldml-alice", "--accelerator-type=v4-32",
                      "--version=tpu-ubuntu2204-base"]
  assert verbs[2] == ["scp", "/tmp/ssldml_jax.tgz", "ssldml-alice:~/", "--worker=all"]
  assert [v[:3] for v in verbs[3:5]] == [["ssh", "ssldml-alice", "--worker=all"]] * 2
  assert verbs[5] == ["delete", "ssldml-alice", "--quiet"] and len(verbs) == 6
  assert [c["args"] for c in calls if c["tool"] == "tar"] == [
      ["-C", REPO, "--exclude=.venv", "--exclude=runs", "-czf", "/tmp/ssldml_jax.tgz", "."]]
  install, run = (v[3].removeprefix("--command=") for v in verbs[3:5])
  assert "gcsfuse --implicit-dirs --rename-dir-limit=1000000 my-bucket $HOME/ssldml_bucket" in \
      install and "'jax[tpu]==" in install and "-c constraints.txt" in install
  for command in (install, run):
    assert subprocess.run(["bash", "-n", "-c", command]).returncode == 0

  # What every worker runs, in a worker's shell: the unpacked checkout and its environment.
  home = tmp_path / "home"
  _install_stub(home / "ssldml_jax" / ".venv" / "bin", "python")
  result, calls = stubs(["bash", "-c", run], HOME=str(home))
  assert result.returncode == 0, result.stderr
  [worker] = calls
  assert worker["cwd"] == str(home / "ssldml_jax") and worker["env"]["SSLDML_MULTIHOST"] == "1"
  assert worker["args"] == [
      "-m", "ssldml_jax.pretrain", "--config=configs/paper.py",
      f"--workdir={home}/ssldml_bucket/runs/paper",
      f"--config.data.data_dir={home}/ssldml_bucket/ssldml_data",
      "--config.train.num_steps=10", "--config.probe.name=two words"]


@pytest.mark.parametrize("state,keep,expected", [
    ("READY", "1", ["describe", "scp", "ssh", "ssh"]),
    ("PREEMPTED", "0", ["describe", "delete", "create", "scp", "ssh", "ssh", "delete"])])
def test_tpu_pod_reuses_or_recreates_the_slice(stubs, state, keep, expected):
  result, calls = stubs(["bash", "launch/tpu_pod.sh", "configs/paper.py"],
                        **_tpu_env(STUB_TPU_STATE=state, KEEP=keep))
  assert result.returncode == 0, result.stderr
  assert [c["args"][5] for c in calls if c["tool"] == "gcloud"] == expected


def test_tpu_pod_refuses_a_missing_setting(stubs):
  env = _tpu_env()
  del env["BUCKET"]
  result, calls = stubs(["bash", "launch/tpu_pod.sh", "configs/paper.py"], **env)
  assert result.returncode == 2 and "set BUCKET" in result.stderr and not calls
  result, calls = stubs(["bash", "launch/tpu_pod.sh", "configs/paper.py"],
                        **dict(env, BUCKET="gs://my-bucket/runs"))
  assert result.returncode == 2 and "BUCKET must be gs://NAME" in result.stderr and not calls


def test_slurm_runs_one_process_per_node_on_all_its_gpus(stubs, tmp_path):
  script = os.path.join(LAUNCH, "slurm_gpu.sbatch")
  with open(script) as f:
    assert "#SBATCH --ntasks-per-node=1\n" in f.read()
  submit = tmp_path / "submit"
  _install_stub(submit / ".venv" / "bin", "python")
  result, calls = stubs(["sbatch", "--nodes=2", "--gpus-per-node=4", script, "configs/paper.py",
                         "/shared/runs/paper", "--config.data.data_dir=/shared/data"],
                        cwd=str(submit))
  assert result.returncode == 0, result.stderr
  assert [c["tool"] for c in calls] == ["sbatch", "srun", "python"]
  srun, python = calls[1], calls[2]
  assert srun["args"][0] == "--kill-on-bad-exit=1" and srun["cwd"] == str(submit)
  assert python["env"]["SSLDML_MULTIHOST"] == "1"
  assert python["env"]["SSLDML_LOCAL_DEVICE_IDS"] == "0,1,2,3"
  assert python["args"] == ["-m", "ssldml_jax.pretrain", "--config=configs/paper.py",
                            "--workdir=/shared/runs/paper", "--config.data.data_dir=/shared/data"]

  result, calls = stubs(["sbatch", "--nodes=1", script, "configs/paper.py", "/shared/runs/p"],
                        cwd=str(submit))
  assert result.returncode == 2 and "no GPUs in this allocation" in result.stderr
  assert [c["tool"] for c in calls] == ["sbatch"]
