#!/usr/bin/env bash
# Runs the build's stages in order as Indexed Jobs (build-corpus.yaml), waiting for each.
# Usage: IMAGE=registry/redpack:TAG pipelines/kubernetes/run.sh [WORKERS]
set -euo pipefail
export IMAGE=${IMAGE:?set IMAGE to a redpack container image}
WORKERS=${1:-32}
here=$(dirname "$0")
for STAGE in plan scan dedup tokenize finish; do
  export STAGE
  case $STAGE in
    plan | finish) export WORKERS_STAGE=1 ;;
    *) export WORKERS_STAGE=$WORKERS ;;
  esac
  WORKERS=$WORKERS_STAGE PARALLELISM=$WORKERS_STAGE envsubst < "$here/build-corpus.yaml" | kubectl apply -f -
  kubectl wait --for=condition=complete --timeout=72h "job/redpack-$STAGE"
done
