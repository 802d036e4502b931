#!/usr/bin/env bash
# Pretrains on a Cloud TPU VM pod slice: create the slice, install on every worker, run the same program on
# all workers (jax.distributed auto-detects the pod), copy the results to the bucket, delete the slice.
#
# Usage: bash launch/tpu_pod.sh CONFIG [--config.key=value ...]
#   PROJECT=my-gcp-project ZONE=us-central2-b ACCELERATOR=v4-32 BUCKET=gs://my-bucket \
#     bash launch/tpu_pod.sh configs/paper.py
# Required environment: PROJECT, ZONE, ACCELERATOR (e.g. v4-32, v5litepod-64), BUCKET (gs://...).
# Optional: NAME (TPU name, default ssldml-<user>), RUNTIME (default tpu-ubuntu2204-base),
#   RUN (run name, default the config's file name), DATA (default $BUCKET/ssldml_data),
#   KEEP=1 to keep the slice after the run.
# Data: build it once (python -m ssldml_jax.data.build ... --data_dir=$DATA); every worker reads its own
# shard of the array_record files from the bucket. The workdir ($BUCKET/runs/$RUN) holds the checkpoints,
# so re-running this script after a preemption resumes the run.
set -euo pipefail
usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
for v in PROJECT ZONE ACCELERATOR BUCKET; do
  [ -n "${!v:-}" ] || { echo "tpu_pod.sh: set $v (see usage)" >&2; usage; }
done
config="$1"; shift
name="${NAME:-ssldml-${USER:-user}}"
runtime="${RUNTIME:-tpu-ubuntu2204-base}"
run="${RUN:-$(basename "${config%%:*}" .py)}"
data="${DATA:-$BUCKET/ssldml_data}"
workdir="$BUCKET/runs/$run"
repo="$(cd "$(dirname "$0")/.." && pwd)"
tpu=(gcloud compute tpus tpu-vm --project="$PROJECT" --zone="$ZONE")

if ! "${tpu[@]}" describe "$name" >/dev/null 2>&1; then
  "${tpu[@]}" create "$name" --accelerator-type="$ACCELERATOR" --version="$runtime"
fi
# Ship the checkout (without the local virtual environment) to every worker.
tar -C "$repo" --exclude=.venv --exclude=runs -czf /tmp/ssldml_jax.tgz .
"${tpu[@]}" scp /tmp/ssldml_jax.tgz "$name":~/ --worker=all
"${tpu[@]}" ssh "$name" --worker=all --command="
  set -e; mkdir -p ~/ssldml_jax && tar -C ~/ssldml_jax -xzf ~/ssldml_jax.tgz && cd ~/ssldml_jax &&
  bash launch/setup.sh && .venv/bin/pip install --quiet 'jax[tpu]==0.10.2' -c constraints.txt"
"${tpu[@]}" ssh "$name" --worker=all --command="
  cd ~/ssldml_jax && SSLDML_MULTIHOST=1 .venv/bin/python -m ssldml_jax.pretrain \
    --config=$config --workdir=$workdir --config.data.data_dir=$data $*"
echo "tpu_pod.sh: results in $workdir"
[ "${KEEP:-0}" = 1 ] || "${tpu[@]}" delete "$name" --quiet
