#!/usr/bin/env bash
# Runs NUM_PROCESSES copies of an ssldml_jax program on this machine, joined by jax.distributed with CPU
# collectives (gloo): the multi-host code path (per-host data shards, global-batch mining, checkpoints
# written from every process) without a cluster. Used by the tests.
#
# Usage: bash launch/multiprocess.sh NUM_PROCESSES [--devices_per_process=K] -- MODULE ARGS...
#   bash launch/multiprocess.sh 2 --devices_per_process=2 -- pretrain --config=configs/ssl_dml_dtw.py:tiny --workdir=runs/mp
# Each process sees K fake CPU devices (default 1). Logs go to WORKDIR-less files logs/process_<i>.log under
# $SSLDML_LOG_DIR (default: a temporary directory, printed); process 0 also prints to the terminal.
set -euo pipefail
usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 3 ] || usage
num="$1"; shift
[[ "$num" =~ ^[1-9][0-9]*$ ]] || { echo "NUM_PROCESSES must be a positive integer, got '$num'" >&2; usage; }
devices=1
if [[ "${1:-}" == --devices_per_process=* ]]; then devices="${1#*=}"; shift; fi
[ "${1:-}" = "--" ] || usage
shift
module="$1"; shift
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
logs="${SSLDML_LOG_DIR:-$(mktemp -d)}"
mkdir -p "$logs"
echo "multiprocess: $num processes x $devices CPU device(s), coordinator 127.0.0.1:$port, logs in $logs"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
for ((i = 0; i < num; i++)); do
  env JAX_PLATFORMS=cpu \
      XLA_FLAGS="--xla_force_host_platform_device_count=$devices" \
      SSLDML_COORDINATOR="127.0.0.1:$port" SSLDML_NUM_PROCESSES="$num" SSLDML_PROCESS_ID="$i" \
      "$python" -m "ssldml_jax.$module" "$@" >"$logs/process_$i.log" 2>&1 &
  pids+=($!)
done
tail -n +1 -f "$logs/process_0.log" --pid "${pids[0]}" &
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    status=1
    echo "multiprocess: process $i failed; last lines of $logs/process_$i.log:" >&2
    tail -n 20 "$logs/process_$i.log" >&2
  fi
done
trap - EXIT
exit $status
