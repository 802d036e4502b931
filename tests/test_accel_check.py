"""launch/accel_check.sh --quick (every stage at toy sizes on CPU), and its summary arithmetic."""

import json
import os
import subprocess

import pytest

from ssldml_jax.bench import accel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quick_check_runs_every_stage(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  # One CPU device, as on a user's machine (the suite's 8 fake devices would slow it down).
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if "force_host_platform_device_count" not in f)
  result = subprocess.run(["bash", os.path.join(ROOT, "launch", "accel_check.sh"), "--quick",
                           "--out", str(tmp_path / "out"), "--data_dir", str(tmp_path / "data")],
                          capture_output=True, text=True, env=env, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  with open(tmp_path / "out" / "accel_check.json", encoding="utf-8") as f:
    got = json.load(f)
  assert got["failed"] == [] and got["env"]["backend"] == "cpu"
  assert [(r["batch"], r["length"], r["window"]) for r in got["dtw"]] == [(4, 21, None),
                                                                         (4, 21, 3)]
  assert all(r["max_rel_diff"] < 1e-5 and r["pallas_s"] > 0 and r["xla_s"] > 0
             for r in got["dtw"])
  assert [r["dtype"] for r in got["train_step"]] == ["float32", "bfloat16"]
  p = got["pretrain"]
  # Both are timed, each on its own: under load either may come out the larger.
  assert p["global_batch"] == 16 and p["mining_s"] > 0 and p["step_s"] > 0
  assert p["rows"] == 16 and p["length"] == 100   # tiny: 10 s at 50 Hz, decimated by 5
  assert [r["workers"] for r in got["input"]][0] == 0 and len(got["input"]) == 2
  assert set(got["epoch_seconds"]) == {"pretrain_ssl_dml_dtw", "train_step_bf16",
                                       "input_pipeline"}
  summary = result.stdout[result.stdout.index("== summary"):]
  for label in ("backend", "DTW 4x4, T=21", "train step bfloat16", "pretrain ssl_dml_dtw",
                "input pipeline, 0 workers", "epoch of 5.4 M ECGs"):
    assert label in summary


def test_projection_and_goals():
  step = {"batch": 64, "num_samples": 2500, "jax_s": 0.01, "mfu": 0.5}
  results = {"env": {"devices": 2},
             "train_step": [dict(step, dtype="bfloat16", jax_ecg_per_s=3000.0),
                            dict(step, dtype="bfloat16", jax_ecg_per_s=6000.0),
                            dict(step, dtype="float32", jax_ecg_per_s=9e9)],
             "pretrain": {"ecg_per_s": 1000.0, "step_s": 0.064, "global_batch": 64,
                          "mining_s": 0.016, "mining_share": 0.25, "encoder_s": 0.048},
             "input": [{"workers": 0, "ecg_per_s": 500.0}, {"workers": 8, "ecg_per_s": 2000.0}]}
  epoch = accel.projection(results)
  assert epoch == {"pretrain_ssl_dml_dtw": 5400.0, "train_step_bf16": 450.0,
                   "input_pipeline": 2700.0}   # best bf16 rate x 2 devices; best input rate
  results["epoch_seconds"] = epoch
  rows = {r[0]: r for r in accel.summary_rows(results, quick=False)}
  assert rows["pretrain ssl_dml_dtw, global batch 64"][3] == "mining <= 20%: NOT met"
  assert rows["epoch of 5.4 M ECGs (train_step_bf16)"][3] == "< 10 min: met"
  assert rows["epoch of 5.4 M ECGs (pretrain_ssl_dml_dtw)"][1] == "1.50 h"
  quick = {r[0]: r for r in accel.summary_rows(results, quick=True)}
  assert quick["epoch of 5.4 M ECGs (train_step_bf16)"][3] == "< 10 min: -"


def test_a_stage_that_fails_is_reported_and_the_rest_still_runs(tmp_path, capsys):
  # Every stage is stopped at once: each is named as failed, and the table and JSON still come.
  code = accel.main(["--quick", "--out", str(tmp_path), "--data_dir", str(tmp_path / "data"),
                     "--stage_timeout", "0.01"])
  assert code == 1
  with open(tmp_path / "accel_check.json", encoding="utf-8") as f:
    failed = json.load(f)["failed"]
  assert failed == ["backend, DTW kernel, train step (stopped after --stage_timeout=0.01 s)",
                    "pretraining ssl_dml_dtw (stopped after --stage_timeout=0.01 s)"]
  out = capsys.readouterr().out
  assert "== summary" in out and "FAILED: backend, DTW kernel" in out


def test_a_kernel_that_does_not_compile_is_reported_and_the_rest_is_measured(monkeypatch):
  def dtw_case(b, t, w, repeats):
    if w is not None:
      raise RuntimeError("Failed to parse Triton module\nmore lines")
    return {"batch": b, "length": t, "window": w, "pallas_s": 1e-3, "pallas_gcups": 1.0,
            "xla_s": 2e-3, "speedup": 2.0, "max_rel_diff": 1e-7}

  monkeypatch.setattr(accel, "dtw_case", dtw_case)
  monkeypatch.setattr(accel, "train_step_stage", lambda sizes, env: ["measured"])
  out = accel.measure_stage(accel.QUICK, tilings=False)
  assert [r["window"] for r in out["dtw"]] == [None]
  assert out["dtw_failed"] == [{"batch": 4, "length": 21, "window": 3,
                                "error": "RuntimeError: Failed to parse Triton module"}]
  assert out["train_step"] == ["measured"]
  rows = {r[0]: r for r in accel.summary_rows({"dtw_failed": out["dtw_failed"]}, quick=True)}
  assert rows["DTW 4x4, T=21, window 3"][1] == "kernel FAILED"
