#!/usr/bin/env bash
# Creates .venv in the repository root and installs the pinned dependencies.
# Usage: bash launch/setup.sh [--test|--bench]
# Skips the install when .venv already holds exactly these requirement files.
set -euo pipefail
cd "$(dirname "$0")/.."
extra=""
case "${1:-}" in
  --test) extra="requirements-test.txt" ;;
  --bench) extra="requirements-bench.txt" ;;
  "") ;;
  *) echo "usage: bash launch/setup.sh [--test|--bench]" >&2; exit 2 ;;
esac
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=".venv/.ssldml_installed_${extra:-runtime}"
want=$(cat requirements.txt constraints.txt pyproject.toml ${extra} | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r "${extra:-requirements.txt}" -c constraints.txt
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
