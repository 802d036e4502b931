#!/usr/bin/env bash
# One-command acceptance check of a GPU/TPU host: backend and devices, the Pallas DTW kernel
# against the XLA program, the encoder train step in float32 and bfloat16 (ECG/s, MFU), a
# 200-step ssl_dml_dtw pretraining at paper size with its step split between encoder and
# mining, input pipeline ECG/s, and the projected time of an epoch of 5.4 M ECGs. Prints one
# summary table at the end; every figure goes to OUT/accel_check.json.
#
# Usage: bash launch/accel_check.sh [--quick] [--out DIR] [--data_dir DIR] [--tilings]
#   --quick      the same stages at toy sizes (seconds; what the test suite runs on CPU)
#   --out        default runs/accel_check
#   --tilings    also time every tiling of the DTW kernel (to tune a new GPU)
# Uses .venv (made by launch/setup.sh) when present, else ${PYTHON:-python3}.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
cd "$root"
exec "$python" -m ssldml_jax.bench.accel "$@"
