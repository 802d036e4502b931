#!/usr/bin/env bash
# Downloads, on a machine with a package index, everything an offline host needs to install
# ssldml_jax: the project's wheel and the pinned wheels of every runtime dependency, for the
# host's Python and platform. jax, jaxlib and their CUDA/ROCm/TPU plugins are left out (the host
# keeps its own accelerator stack) unless --with-jax is given. Install there with
#   bash launch/setup.sh --offline DIR
#
# Usage: bash launch/wheelhouse.sh DIR [--python 3.12] [--platform manylinux_2_28_x86_64]
#                                      [--with-jax] [--exclude NAME,NAME,...]
#   --python     the host's Python version (default: this machine's)
#   --platform   the host's platform tag (default: this machine's); a manylinux_2_N tag also
#                accepts the wheels of every older manylinux
#   --with-jax   also take jax and jaxlib (CPU) at the tested versions, for a host without jax
#   --exclude    leave out these distributions too, e.g. large ones the host already has
# Uses ${PYTHON:-.venv/bin/python, else python3} to run pip (22.2 or newer).
set -euo pipefail
usage() { awk 'NR > 1 && !/^#( |$)/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0" >&2; exit 2; }
root="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || usage
dest="$1"; shift
pyver=""; platform=""; with_jax=0; exclude=""
while [ $# -gt 0 ]; do
  case "$1" in
    --python) [ $# -ge 2 ] || usage; pyver="$2"; shift 2 ;;
    --platform) [ $# -ge 2 ] || usage; platform="$2"; shift 2 ;;
    --with-jax) with_jax=1; shift ;;
    --exclude) [ $# -ge 2 ] || usage; exclude="$2"; shift 2 ;;
    *) echo "wheelhouse.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
if [ -n "$pyver" ] && ! [[ "$pyver" =~ ^3\.[0-9]+$ ]]; then
  echo "wheelhouse.sh: --python must look like 3.12, got '$pyver'" >&2; exit 2
fi
python="${PYTHON:-}"
if [ -z "$python" ]; then
  python=python3
  [ -x "$root/.venv/bin/python" ] && python="$root/.venv/bin/python"
fi
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/ssldml_wheelhouse.XXXXXX")"
trap 'rm -rf "$work"' EXIT
pip=("$python" -m pip --disable-pip-version-check)

# Target flags for pip. A manylinux_2_N tag is expanded to every manylinux_2_M, M <= N (and
# the legacy aliases): pip matches platform tags exactly.
target=()
[ -n "$pyver" ] && target+=(--python-version "$pyver" --implementation cp)
if [ -n "$platform" ]; then
  if [[ "$platform" =~ ^manylinux_2_([0-9]+)_(.+)$ ]]; then
    glibc="${BASH_REMATCH[1]}"; arch="${BASH_REMATCH[2]}"
    for ((m = glibc; m >= 5; m--)); do target+=(--platform "manylinux_2_${m}_${arch}"); done
    target+=(--platform "manylinux2014_${arch}" --platform "manylinux2010_${arch}"
             --platform "manylinux1_${arch}")
  else
    target+=(--platform "$platform")
  fi
fi

# 1. Pinned dependencies published only as source get a wheel built here; it must be pure
#    Python, since it was built for this machine, not the host.
"${pip[@]}" install --quiet --dry-run --ignore-installed --report "$work/here.json" \
  -r "$root/requirements.txt" -c "$root/constraints.txt"
"$python" - "$work/here.json" > "$work/sdists.txt" <<'EOF'
import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
  if not item["download_info"]["url"].endswith(".whl"):
    print(f'{item["metadata"]["name"]}=={item["metadata"]["version"]}')
EOF
if [ -s "$work/sdists.txt" ]; then
  "${pip[@]}" wheel --quiet --no-deps -w "$work/built" -r "$work/sdists.txt"
  for w in "$work"/built/*.whl; do
    case "$(basename "$w")" in
      *-none-any.whl) cp "$w" "$dest/" ;;
      *) echo "wheelhouse.sh: $(basename "$w") is not pure Python; build it on a machine like" \
              "the host" >&2; exit 1 ;;
    esac
  done
fi

# 2. The whole dependency closure for the host's Python and platform, binary wheels only.
"${pip[@]}" install --quiet --dry-run --ignore-installed --report "$work/host.json" \
  --only-binary=:all: --find-links "$dest" --target "$work/unused" "${target[@]}" \
  -r "$root/requirements.txt" -c "$root/constraints.txt"

# 3. Less what the host brings itself, then downloaded one by one (no resolution: the list is
#    complete). The project's own wheel comes last.
"$python" - "$work/host.json" "$with_jax" "$exclude" > "$work/wanted.txt" <<'EOF'
import json, re, sys
report, with_jax, exclude = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
skip = {norm(n) for n in exclude.split(",") if n.strip()}
accelerator = re.compile(r"^(jax-cuda.*|jax-rocm.*|jax-plugin.*|libtpu.*|nvidia-.*)$")
for item in json.load(open(report))["install"]:
  name, version = item["metadata"]["name"], item["metadata"]["version"]
  n = norm(name)
  if n in skip or accelerator.match(n) or (n in ("jax", "jaxlib") and not with_jax):
    continue
  print(f"{name}=={version}")
EOF
"${pip[@]}" download --quiet --no-deps --only-binary=:all: --find-links "$dest" -d "$dest" \
  "${target[@]}" -r "$work/wanted.txt"
# Built from a copy, so that the build leaves nothing in the checkout.
mkdir "$work/src"
cp -r "$root/pyproject.toml" "$root/README.md" "$root/LICENSE" "$root/ssldml_jax" "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
if ! "${pip[@]}" wheel --quiet --no-deps -w "$dest" "$work/src" > "$work/build.log" 2>&1; then
  cat "$work/build.log" >&2; exit 1
fi
count=$(ls "$dest"/*.whl | wc -l)
echo "wheelhouse $dest: $count wheels, $(du -sh "$dest" | cut -f1)" \
     "($([ "$with_jax" = 1 ] && echo "with" || echo "without") jax/jaxlib)"
