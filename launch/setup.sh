#!/usr/bin/env bash
# Creates .venv in the repository root and installs the pinned dependencies.
# Usage: bash launch/setup.sh [--test|--bench|--offline DIR]
#   --test, --bench   also the test / benchmark dependencies
#   --offline DIR     no index: install ssldml_jax from a wheelhouse made by launch/wheelhouse.sh,
#                     on top of this host's own packages (its jax/CUDA stack is kept: .venv sees
#                     them, and pip adds only what is missing or older than pyproject's floors)
# Skips the install when .venv already holds exactly these requirement files (or wheelhouse).
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { echo "usage: bash launch/setup.sh [--test|--bench|--offline DIR]" >&2; exit 2; }
extra=""; wheelhouse=""
case "${1:-}" in
  --test) extra="requirements-test.txt" ;;
  --bench) extra="requirements-bench.txt" ;;
  --offline) [ $# -ge 2 ] || usage; wheelhouse="$2" ;;
  "") ;;
  *) usage ;;
esac
python="${PYTHON:-python3}"

if [ -n "$wheelhouse" ]; then
  if ! ls "$wheelhouse"/ssldml_jax-*.whl > /dev/null 2>&1; then
    echo "setup.sh --offline: no ssldml_jax wheel in '$wheelhouse' (make one with" \
         "bash launch/wheelhouse.sh DIR on a machine with a package index)" >&2
    exit 1
  fi
  if [ ! -x .venv/bin/python ]; then
    "$python" -m venv --system-site-packages .venv
    # A Python that itself runs in a virtual environment (as on many GPU images) keeps its
    # packages there, not in the "system" site: let .venv see those as well (addsitedir also
    # reads their .pth files).
    host_sites=$("$python" -c 'import site, sys
if sys.prefix != sys.base_prefix:
  for d in site.getsitepackages(): print(f"import site; site.addsitedir({d!r})")')
    if [ -n "$host_sites" ]; then
      venv_site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
      echo "$host_sites" > "$venv_site/ssldml_host_packages.pth"
    fi
  fi
  stamp=".venv/.ssldml_installed_offline"
  want=$(ls "$wheelhouse" | sort | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
  fi
  pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-index)
  if ! "${pip[@]}" --find-links "$wheelhouse" ssldml_jax; then
    echo "setup.sh --offline: pip could not install from '$wheelhouse' with this host's" \
         "packages (above: which requirement is missing; a wheelhouse made without --with-jax" \
         "needs the host's own jax >= 0.10.2)" >&2
    exit 1
  fi
  # The wheelhouse's ssldml_jax, even where the host had one of the same version.
  "${pip[@]}" --no-deps --force-reinstall "$wheelhouse"/ssldml_jax-*.whl
  echo "$want" > "$stamp"
  .venv/bin/python -c 'import jax, ssldml_jax; print(f"ssldml_jax installed; jax {jax.__version__}" f" ({jax.default_backend()}, {jax.device_count()} device(s)) from {jax.__file__}")'
  exit 0
fi

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
