"""The installed package runs the main job, and every documented override reaches its stages.

A wheel of the checkout is built and installed (not editable) into a temporary folder; the main
job runs from another directory with only that folder on the path for ``ssldml_jax`` (its
dependencies come from the test environment), with the overrides the README documents. Each
stage's saved ``config.json`` must hold each override that the stage reads, and no other stage
may hold the key.
"""

import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The overrides of the README's "Configs" section: key -> value given.
OVERRIDES = {
    "task.pcwp_threshold": 15.0,
    "mining.decimate": 2,
    "loss.margin": 0.3,
    "model.width": 6,
    "optim.learning_rate": 0.002,
    "train.num_steps": 3,
    "vicreg.expander_dim": 12,
    "augment.noise_std": 0.02,
    "probe.n_bootstrap": 20,
    "probe.limited_validation": "full",
}
METHODS = ("ssl_dml_euclidean", "supervised", "vicreg", "random")


def _get(config: dict, key: str):
  node = config
  for part in key.split("."):
    if not isinstance(node, dict) or part not in node:
      return None
    node = node[part]
  return node


def test_readme_documents_the_overrides():
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    text = f.read()
  section = text.split("## Configs", 1)[1].split("\n## ", 1)[0]
  documented = set(re.findall(r"^\| `--config\.([a-z_.]+)=", section, re.MULTILINE))
  assert documented == set(OVERRIDES)


@pytest.mark.slow
def test_installed_wheel_runs_the_main_job_with_every_override(tmp_path, ecg_synth_tiny, data_dir):
  wheels, target, elsewhere = (tmp_path / d for d in ("wheels", "site", "elsewhere"))
  elsewhere.mkdir()
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                  "--no-build-isolation", "--wheel-dir", str(wheels), REPO],
                 check=True, cwd=str(tmp_path), capture_output=True)
  (wheel,) = list(wheels.glob("ssldml_jax-*.whl"))
  subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                  "--no-compile", "--target", str(target), str(wheel)],
                 check=True, capture_output=True)
  env = dict(os.environ, PYTHONPATH=str(target), SSLDML_DATA_DIR=data_dir)
  where = subprocess.run([sys.executable, "-c", "import ssldml_jax; print(ssldml_jax.__file__)"],
                         cwd=str(elsewhere), env=env, capture_output=True, text=True, check=True)
  assert where.stdout.strip().startswith(str(target)), where.stdout

  workdir = tmp_path / "job"
  flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
  run = subprocess.run(
      [sys.executable, "-m", "ssldml_jax.reproduce",
       f"--config={os.path.join(REPO, 'configs', 'quickstart.py')}:tiny",
       f"--workdir={workdir}", f"--config.methods={','.join(METHODS)}",
       "--config.pretrain_seeds=0", *flags],
      cwd=str(elsewhere), env=env, capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

  stages = {}
  for path in workdir.glob("*/*/**/config.json"):
    where = path.parent.relative_to(workdir).as_posix()
    if where.split("/")[0] in ("pretrain", "probe"):
      stages[where] = json.loads(path.read_text())
  # The supervised method also on each label row's patients (one pretraining and probe seed).
  rows = [f"supervised/labels_{r}/seed0_draw0" for r in ("1pct", "10pct", "n40")]
  pretrained = [f"pretrain/{m}/seed0" for m in METHODS if m != "random"]
  pretrained += [f"pretrain/{r}" for r in rows]
  probes = [f"probe/{m}/seed0" for m in METHODS] + [f"probe/{r}" for r in rows]
  assert sorted(stages) == sorted(pretrained + probes)
  readers = {key: [s for s, c in stages.items() if _get(c, key) is not None] for key in OVERRIDES}
  for key, value in OVERRIDES.items():
    assert readers[key], f"{key}: read by no stage"
    want = pytest.approx(value) if isinstance(value, (int, float)) else value
    for stage in readers[key]:
      assert _get(stages[stage], key) == want, (key, stage)
  # Who reads what: each method's stage holds exactly the keys it reads.
  assert readers["mining.decimate"] == ["pretrain/ssl_dml_euclidean/seed0"]
  assert readers["vicreg.expander_dim"] == ["pretrain/vicreg/seed0"]
  assert sorted(readers["augment.noise_std"]) == ["pretrain/vicreg/seed0"]
  assert sorted(readers["task.pcwp_threshold"]) == sorted(
      [s for s in pretrained if "/supervised/" in s] + probes)
  assert sorted(readers["probe.limited_validation"]) == sorted(probes)
  assert len(readers["model.width"]) == len(stages)
  # The cohort table and the tables' captions use the threshold too.
  cohort = (workdir / "tables" / "cohort.md").read_text()
  assert "mPCWP > 15" in cohort
  assert "(> 15 mmHg)" in (workdir / "tables" / "classification.md").read_text()
