#!/usr/bin/env bash
# Runs NUM_PROCESSES copies of an ssldml_jax program on this machine, joined by jax.distributed with CPU
# collectives (gloo): the multi-host code path (per-host data shards, global-batch mining, checkpoints
# written from every process) without a cluster. Used by the tests.
#
# Usage: bash launch/multiprocess.sh NUM_PROCESSES [--devices_per_process=K] -- MODULE ARGS...
#   bash launch/multiprocess.sh 2 --devices_per_process=2 -- pretrain --config=configs/ssl_dml_dtw.py:tiny --workdir=runs/mp
# MODULE is one of pretrain, probe, reproduce. Each process sees K fake CPU devices (default 1). Process i
# logs to process_<i>.log in $SSLDML_LOG_DIR (default: a new temporary directory, printed); process 0's log
# is also shown here. When one process fails the others are killed (they would wait for it in a collective)
# and the exit status is 1. SIGTERM to this script reaches every process (a preemption notice: they save a
# checkpoint and stop together, exit status 143).
set -euo pipefail
usage() { awk 'NR > 1 && !/^#( |$)/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0" >&2; exit 2; }
[ $# -ge 3 ] || usage
num="$1"; shift
[[ "$num" =~ ^[1-9][0-9]*$ ]] || { echo "NUM_PROCESSES must be a positive integer, got '$num'" >&2; usage; }
devices=1
if [[ "${1:-}" == --devices_per_process=* ]]; then devices="${1#*=}"; shift; fi
[[ "$devices" =~ ^[1-9][0-9]*$ ]] ||
  { echo "--devices_per_process must be a positive integer, got '$devices'" >&2; usage; }
[ "${1:-}" = "--" ] && [ $# -ge 2 ] || usage
shift
module="$1"; shift
case "$module" in pretrain|probe|reproduce) ;; *) echo "unknown module '$module'" >&2; usage ;; esac
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
logs="${SSLDML_LOG_DIR:-$(mktemp -d)}"
mkdir -p "$logs"
echo "multiprocess: $num processes x $devices CPU device(s), coordinator 127.0.0.1:$port, logs in $logs"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "-${1:-TERM}" "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
for ((i = 0; i < num; i++)); do
  env JAX_PLATFORMS=cpu \
      XLA_FLAGS="--xla_force_host_platform_device_count=$devices" \
      SSLDML_COORDINATOR="127.0.0.1:$port" SSLDML_NUM_PROCESSES="$num" SSLDML_PROCESS_ID="$i" \
      "$python" -m "ssldml_jax.$module" "$@" >"$logs/process_$i.log" 2>&1 &
  pids+=($!)
done
tail -n +1 -f "$logs/process_0.log" --pid "${pids[0]}" &
tail_pid=$!
# Wait for the processes in the order they end: the survivors of a failed process would otherwise
# wait for it in a collective until the coordination service times out.
status=0
running=("${pids[@]}")
while [ ${#running[@]} -gt 0 ]; do
  rc=0
  wait -n -p ended "${running[@]}" || rc=$?
  still=()
  for p in "${running[@]}"; do [ "$p" = "$ended" ] || still+=("$p"); done
  running=("${still[@]}")
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
    for i in "${!pids[@]}"; do [ "${pids[$i]}" = "$ended" ] && failed=$i; done
    echo "multiprocess: process $failed failed (exit status $rc); last lines of" \
         "$logs/process_$failed.log:" >&2
    tail -n 20 "$logs/process_$failed.log" >&2
    if [ "$rc" -eq 143 ]; then
      status=143  # Stopped on a preemption notice, together with the others, which end by themselves.
    else
      status=1
      cleanup KILL
    fi
  fi
done
wait "$tail_pid" 2>/dev/null || true
trap - EXIT
exit $status
