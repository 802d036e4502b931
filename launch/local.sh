#!/usr/bin/env bash
# Runs one ssldml_jax program on this machine's devices (all local CPUs, GPUs or TPU chips) in one process.
#
# Usage: bash launch/local.sh MODULE -- ARGS...
#   bash launch/local.sh pretrain -- --config=configs/ssl_dml_dtw.py --workdir=runs/ssl_dml_dtw
#   bash launch/local.sh probe -- --config=configs/probe.py --workdir=runs/probe --config.encoder_workdir=runs/ssl_dml_dtw
# MODULE is one of pretrain, probe, reproduce, bench. Uses .venv (made by launch/setup.sh) when present.
set -euo pipefail
usage() { awk 'NR > 1 && !/^#( |$)/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0" >&2; exit 2; }
[ $# -ge 2 ] && [ "$2" = "--" ] || usage
module="$1"; shift 2
case "$module" in pretrain|probe|reproduce|bench) ;; *) echo "unknown module '$module'" >&2; usage ;; esac
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
exec "$python" -m "ssldml_jax.$module" "$@"
