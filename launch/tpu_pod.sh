#!/usr/bin/env bash
# Pretrains on a Cloud TPU VM pod slice: create the slice (or recreate a preempted one), mount the bucket on
# every worker, install, run the same program on all workers (jax.distributed auto-detects the pod), and
# delete the slice. Checkpoints, logs and the data live in the bucket, so nothing is lost with the slice.
#
# Usage: bash launch/tpu_pod.sh CONFIG [--config.key=value ...]
#   PROJECT=my-gcp-project ZONE=us-central2-b ACCELERATOR=v4-32 BUCKET=gs://my-bucket \
#     bash launch/tpu_pod.sh configs/paper.py
# Required environment: PROJECT, ZONE, ACCELERATOR (e.g. v4-32, v5p-64), BUCKET (gs://NAME, a bucket in
#   the slice's region that the TPU service account can write).
# Optional: NAME (TPU name, default ssldml-<user>), RUNTIME (TPU software version, default
#   tpu-ubuntu2204-base; v5e needs v2-alpha-tpuv5-lite, v6e v2-alpha-tpuv6e), RUN (run name, default the
#   config's file name), DATA (default $BUCKET/ssldml_data), CREATE_FLAGS (extra flags for
#   'tpu-vm create', e.g. --spot), KEEP=1 to keep the slice after the run.
# The bucket is mounted with Cloud Storage FUSE at ~/ssldml_bucket on every worker: the workdir is
# $BUCKET/runs/$RUN, the data dir $DATA. Build the data once on any machine and copy it there, e.g.
#   python -m ssldml_jax.data.build ecg_synth/large --data_dir=/tmp/d
#   gcloud storage cp -r /tmp/d/* $BUCKET/ssldml_data/
# Every worker reads its own part of each global batch from the array_record files. After a preemption,
# run the same command again: it recreates the slice and resumes from the newest checkpoint.
set -euo pipefail
usage() { awk 'NR > 1 && !/^#( |$)/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
for v in PROJECT ZONE ACCELERATOR BUCKET; do
  [ -n "${!v:-}" ] || { echo "tpu_pod.sh: set $v (see usage)" >&2; usage; }
done
[[ "$BUCKET" =~ ^gs://[a-z0-9][-a-z0-9_.]*$ ]] ||
  { echo "tpu_pod.sh: BUCKET must be gs://NAME (no path), got '$BUCKET'" >&2; exit 2; }
config="$1"; shift
name="${NAME:-ssldml-${USER:-user}}"
runtime="${RUNTIME:-tpu-ubuntu2204-base}"
run="${RUN:-$(basename "${config%%:*}" .py)}"
data="${DATA:-$BUCKET/ssldml_data}"
[[ "$data" == "$BUCKET"/* ]] || { echo "tpu_pod.sh: DATA must lie in $BUCKET, got '$data'" >&2; exit 2; }
mount='$HOME/ssldml_bucket'  # Expanded on the workers.
workdir="$mount/runs/$run"
data_dir="$mount/${data#"$BUCKET"/}"
extra=""
[ $# -eq 0 ] || extra=$(printf '%q ' "$@")  # Quoted for the workers' shell.
repo="$(cd "$(dirname "$0")/.." && pwd)"
tpu=(gcloud compute tpus tpu-vm --project="$PROJECT" --zone="$ZONE")

state=$("${tpu[@]}" describe "$name" --format='value(state)' 2>/dev/null || true)
case "$state" in
  READY) ;;
  "") "${tpu[@]}" create "$name" --accelerator-type="$ACCELERATOR" --version="$runtime" ${CREATE_FLAGS:-} ;;
  *) echo "tpu_pod.sh: $name is $state; deleting and recreating it"
     "${tpu[@]}" delete "$name" --quiet
     "${tpu[@]}" create "$name" --accelerator-type="$ACCELERATOR" --version="$runtime" ${CREATE_FLAGS:-} ;;
esac
# Ship the checkout (without the local virtual environment) to every worker.
tar -C "$repo" --exclude=.venv --exclude=runs -czf /tmp/ssldml_jax.tgz .
"${tpu[@]}" scp /tmp/ssldml_jax.tgz "$name":~/ --worker=all
# The pinned packages need Python >= 3.11 (python3.11 from Ubuntu's archive); gcsfuse comes from Google's
# apt repository. --rename-dir-limit lets orbax rename a finished checkpoint directory into place.
"${tpu[@]}" ssh "$name" --worker=all --command="
  set -e
  sudo apt-get update -qq && sudo apt-get install -y -qq python3.11 python3.11-venv curl lsb-release
  if ! command -v gcsfuse >/dev/null; then
    curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg |
      sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
    echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc]\" \
      \"https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" |
      sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
    sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse
  fi
  mkdir -p $mount && (mountpoint -q $mount ||
    gcsfuse --implicit-dirs --rename-dir-limit=1000000 ${BUCKET#gs://} $mount)
  mkdir -p ~/ssldml_jax && tar -C ~/ssldml_jax -xzf ~/ssldml_jax.tgz && cd ~/ssldml_jax &&
  PYTHON=python3.11 bash launch/setup.sh && .venv/bin/pip install --quiet 'jax[tpu]==0.10.2' -c constraints.txt"
"${tpu[@]}" ssh "$name" --worker=all --command="
  cd ~/ssldml_jax && SSLDML_MULTIHOST=1 .venv/bin/python -m ssldml_jax.pretrain \
    --config=$(printf '%q' "$config") --workdir=$workdir --config.data.data_dir=$data_dir $extra"
echo "tpu_pod.sh: results in $BUCKET/runs/$run"
[ "${KEEP:-0}" = 1 ] || "${tpu[@]}" delete "$name" --quiet
