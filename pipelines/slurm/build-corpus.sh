#!/usr/bin/env bash
# Submits a RedPajama V1 build as one Slurm job per stage, chained with dependencies:
#   plan (1 task) -> scan (array of N) -> dedup (array of N) -> tokenize (array of N) -> finish (1 task)
# Every task runs the same `redpack build-corpus` command with `--stage`; array tasks take their
# worker index from SLURM_ARRAY_TASK_ID (minus SLURM_ARRAY_TASK_MIN) and the worker count from
# SLURM_ARRAY_TASK_COUNT. OUT must be on a filesystem every node sees (NFS, Lustre, GPFS).
# A stage refuses to start while the previous one is incomplete, and a failed array task can
# simply be resubmitted: finished input files and partitions are skipped.
#
# Usage: pipelines/slurm/build-corpus.sh DATA_ROOT OUT [WORKERS]
set -euo pipefail

DATA_ROOT=${1:?usage: build-corpus.sh DATA_ROOT OUT [WORKERS]}
OUT=${2:?usage: build-corpus.sh DATA_ROOT OUT [WORKERS]}
WORKERS=${3:-32}
REDPACK=${REDPACK:-redpack}
CPUS=${CPUS:-16}
# Every stage must see the same settings: they are checked against the plan.
BUILD=("$REDPACK" build-corpus
  --pipeline pipelines/redpajama-v1.toml
  --data-manifest data-manifests/redpajama-v1.toml --data-root "$DATA_ROOT"
  --tokenizer "${TOKENIZER:-tokenizer.json}"
  --out "$OUT" --memory-limit "${MEMORY_LIMIT:-24GiB}")

submit() { # submit NAME DEPENDENCY ARRAY -- command...
  local name=$1 dependency=$2 array=$3
  shift 4
  local args=(--parsable --job-name "redpack-$name" --cpus-per-task "$CPUS"
    --mem "${MEM:-32G}" --time "${TIME:-24:00:00}" --output "slurm-%x-%A_%a.out")
  [[ -n $dependency ]] && args+=(--dependency "afterok:$dependency")
  [[ -n $array ]] && args+=(--array "$array")
  sbatch "${args[@]}" --wrap "$(printf '%q ' "$@")"
}

plan=$(submit plan "" "" -- "${BUILD[@]}" --stage plan)
scan=$(submit scan "$plan" "0-$((WORKERS - 1))" -- "${BUILD[@]}" --stage scan)
dedup=$(submit dedup "$scan" "0-$((WORKERS - 1))" -- "${BUILD[@]}" --stage dedup)
tokenize=$(submit tokenize "$dedup" "0-$((WORKERS - 1))" -- "${BUILD[@]}" --stage tokenize)
finish=$(submit finish "$tokenize" "" -- "${BUILD[@]}" --stage finish)
echo "submitted: plan $plan, scan $scan, dedup $dedup, tokenize $tokenize, finish $finish"
