#!/usr/bin/env bash
# The CUDA backend's checks and benchmark, in one call on a GPU machine that has no Rust
# toolchain: prebuilt test and benchmark binaries do the work.
#
#   scripts/gpu-check.sh build   on a machine with the Rust toolchain (cargo): builds the release
#                                test and benchmark binaries and copies them, stripped, to
#                                target/gpu-bundle/{trainer_suite,cuda_step,eval_step,flash_attention,
#                                decode,redpack}
#                                (trainer_suite: the trainer's integration tests, one binary)
#   scripts/gpu-check.sh run     on the GPU machine, from the repository root, with
#                                target/gpu-bundle carried over; writes logs and results under
#                                /tmp/gpu-check-out/gpu-check ($GPU_CHECK_RESULTS/gpu-check) and,
#                                with $OUT set, packs them into $OUT/gpu-check.tar.gz after each step
#
# GPU_CHECK_STEPS=kernels,model,... runs only the named steps (kernels, model, generate,
# bench-decode, e2e, export, nccl, bench-bf16, bench-eval, bench-attention, ce, memcheck, torch,
# bench-1b, initcheck, experiments, ncu, bench-f32);
# GPU_CHECK_BUDGET caps the whole run in seconds.
#
# `run` goes through, each step with its own timeout and going on after a failure (the test
# steps run trainer_suite's modules by name filter, `cuda_kernels::` and so on):
#   1. the kernel parity tests (cuda_kernels: every kernel against the CPU, cuBLAS products,
#      dropout; cuda_attention: the masked softmax, packing and the fused attention in both
#      builds; cuda_adafactor: the multi-tensor Adafactor update),
#   2. the whole-model parity tests (cuda_model: one tiny step of each architecture, loss and
#      every gradient vs the CPU in f32; masks, dropout, 20-step loss tracking, bf16 with fused
#      attention, resident training vs the host loop), the bf16 step with the basic fused
#      attention build, the whole-step tests again with cuBLASLt (REDPACK_CUDA_BLAS=lt), the
#      training loop on the GPU against the CPU (cuda_train: checkpoints and a resume), and the
#      evaluation on the GPU against the CPU (eval_grid: every (L, k) pair in f32 and bf16;
#      train_validate: validation between steps leaves resident training alone),
#   2b. decoding (generate: the CUDA decoder against the CPU training forward at every step and
#      the CPU's greedy tokens, then decode tokens/s of the 150M models at batch 1 and 32),
#   3. the CLI end to end (build-corpus, then 20 steps of each tiny recipe on the GPU and CPU),
#      and the Hugging Face export of tiny checkpoints checked in PyTorch with transformers
#      (tests/python/check_hf_export.py --torch),
#      NCCL with world size 1 against the single-GPU path (same bits; step-time overhead),
#   4. training throughput of DecLLM-150M and RedLLM-150M at 2048 tokens per row (bf16), their
#      evaluation throughput beside a training forward + backward at L = 2048 and 16,384
#      (eval_step), the fused attention kernels alone, every build side by side (flash_attention), and the
#      fused cross-entropy beside the two kernels of the default,
#   5. compute-sanitizer memcheck on the fused attention and on tiny steps,
#   6. the same models in PyTorch (eager and torch.compile, bf16, and the whole training step),
#   7. the 1B models' throughput, then compute-sanitizer initcheck on tiny steps,
#   8. experiments (step name `experiments`): the throughput again with cuBLASLt's cached plans,
#      and with the fused attention's 4-warp pipelined and wide builds; Nsight Compute on the
#      fused attention kernels, where `ncu` is installed; the f32 mode's throughput,
#   9. a side-by-side table.
# The whole run stops at GPU_CHECK_BUDGET seconds (540), each step within its own timeout.
set -uo pipefail
cd "$(dirname "$0")/.."
BUNDLE=target/gpu-bundle

build() {
    set -e
    mkdir -p "$BUNDLE"
    local json
    json=$(mktemp)
    cargo test -p redpack-trainer --release --no-run --test suite --message-format=json >"$json"
    cargo bench -p redpack-trainer --bench cuda_step --bench eval_step --bench flash_attention \
        --bench decode --no-run \
        --message-format=json >>"$json"
    python3 - "$json" "$BUNDLE" <<'PY'
import json, shutil, sys
# target name -> name in the bundle
WANTED = {"suite": "trainer_suite", "cuda_step": "cuda_step", "eval_step": "eval_step",
          "flash_attention": "flash_attention", "decode": "decode"}
found = {}
for line in open(sys.argv[1]):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
        name = msg["target"]["name"]
        if name in WANTED:
            found[name] = msg["executable"]
missing = WANTED - set(found)
if missing:
    sys.exit(f"not built: {sorted(missing)}")
for name, path in found.items():
    shutil.copy(path, f"{sys.argv[2]}/{WANTED[name]}")
    print(f"{sys.argv[2]}/{WANTED[name]} <- {path}")
PY
    rm -f "$json"
    cargo build --release --bin redpack
    cp target/release/redpack "$BUNDLE"/redpack
    strip "$BUNDLE"/trainer_suite "$BUNDLE"/cuda_step "$BUNDLE"/eval_step "$BUNDLE"/flash_attention \
        "$BUNDLE"/decode "$BUNDLE"/redpack
    ls -la "$BUNDLE"
    echo "carry target/gpu-bundle to the GPU machine and run: scripts/gpu-check.sh run"
}

# Folders holding libnvrtc.so.13 and libcublas.so.13 (CUDA toolkit or the pip wheels PyTorch
# brings), for LD_LIBRARY_PATH.
library_path() {
    local dirs=""
    for lib in libnvrtc.so.13 libcublas.so.13 libcublasLt.so.13; do
        local hit
        hit=$( (ls -d /usr/local/cuda/lib64/"$lib" /usr/local/cuda*/targets/*/lib/"$lib" \
            2>/dev/null; python3 - "$lib" <<'PY'
import glob, os, sys
for base in sys.path:
    for hit in glob.glob(os.path.join(base, "nvidia", "**", sys.argv[1]), recursive=True):
        print(hit)
PY
        ) 2>/dev/null | head -1)
        if [ -n "$hit" ]; then
            dirs="$dirs:$(dirname "$hit")"
        else
            echo "warning: $lib not found" >&2
        fi
    done
    echo "${dirs#:}"
}

step() {
    # step NAME SECONDS COMMAND...: runs with a timeout (cut to what is left of the whole run's
    # budget, GPU_CHECK_BUDGET seconds), logs to $RESULTS/NAME.log
    local name=$1 seconds=$2
    shift 2
    local left=$((DEADLINE - SECONDS))
    if [ "$left" -lt 30 ]; then
        echo "=== $name skipped: ${left}s left of the budget" | tee -a "$RESULTS/summary.txt"
        return 0
    fi
    [ "$seconds" -gt "$left" ] && seconds=$left
    echo "=== $name (timeout ${seconds}s): $*"
    local start=$SECONDS
    timeout --kill-after=10 "$seconds" "$@" >"$RESULTS/$name.log" 2>&1
    local rc=$?
    echo "    rc=$rc in $((SECONDS - start))s"
    tail -n 40 "$RESULTS/$name.log" | sed 's/^/    /'
    echo "$name rc=$rc seconds=$((SECONDS - start))" >>"$RESULTS/summary.txt"
    pack
    return 0
}

# The device tool brings back at most 8 files: every log travels in one archive, remade after
# each step so that a run cut short still returns what it did.
pack() {
    [ -n "${OUT:-}" ] && tar -czf "$OUT/gpu-check.tar.gz" -C "$(dirname "$RESULTS")" gpu-check
    return 0
}

# wanted NAME: whether GPU_CHECK_STEPS (comma-separated; all steps when unset) names the step
wanted() {
    [ -z "${GPU_CHECK_STEPS:-}" ] && return 0
    case ",$GPU_CHECK_STEPS," in *",$1,"*) return 0 ;; esac
    return 1
}

# The CLI end to end: the built-in default corpus, then 20 steps of each tiny recipe on the GPU
# and on the CPU, whose final losses the log shows side by side.
e2e() {
    set -e
    local dir=/tmp/redpack-e2e
    rm -rf "$dir"
    "$BUNDLE/redpack" build-corpus --out "$dir" >/dev/null
    for recipe in decllm-tiny-pretrain:packed redllm-tiny-pretrain:packed \
        decllm-tiny-finetune:examples redllm-tiny-finetune:examples; do
        local name=${recipe%%:*} data=${recipe##*:}
        for device in cuda cpu; do
            "$BUNDLE/redpack" train --config "trainer/configs/$name.toml" --data "$dir/$data" \
                --out "$dir/run-$name-$device" --steps 20 --device "$device" --json \
                >"$dir/$name-$device.json"
            python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(sys.argv[2], "first_loss", d["first_loss"], "last_loss", d["last_loss"])' \
                "$dir/$name-$device.json" "$name $device"
        done
    done
}

# The Hugging Face export in PyTorch: tiny DecLLM, RedLLM and DecLLM + BiAttn checkpoints (3 CPU
# steps each), exported with the CPU backend's reference log-probabilities, loaded with
# transformers (trust_remote_code) and compared, greedy generate included; then run through the
# lm-evaluation-harness where it is installed.
export_check() {
    set -e
    local dir=/tmp/redpack-export
    rm -rf "$dir"
    "$BUNDLE/redpack" build-corpus --out "$dir/corpus" --seq-len 64 >/dev/null
    for recipe in decllm-tiny-pretrain:packed:dec redllm-tiny-pretrain:packed:red \
        decllm-tiny-finetune:examples:biattn; do
        local config=${recipe%%:*} rest=${recipe#*:}
        local data=${rest%%:*} name=${rest##*:} extra=""
        [ "$name" = biattn ] && extra=--bidirectional-prefix
        "$BUNDLE/redpack" train --config "trainer/configs/$config.toml" --data "$dir/corpus/$data" \
            --out "$dir/run-$name" --steps 3 --batch 2 --device cpu $extra >/dev/null
        "$BUNDLE/redpack" export --checkpoint "$dir/run-$name" --format hf --out "$dir/$name-hf" \
            --reference "$dir/$name-reference.json"
        python3 tests/python/check_hf_export.py "$dir/$name-hf" "$dir/$name-reference.json"
        python3 tests/python/check_hf_export.py "$dir/$name-hf" "$dir/$name-reference.json" --torch
        if python3 -c 'import lm_eval, accelerate' 2>/dev/null; then
            python3 tests/python/check_lm_eval.py "$dir/$name-hf"
        else
            echo "lm_eval or accelerate not importable: the lm-evaluation-harness check is not run"
        fi
    done
}

# NCCL on one GPU: a tiny run trained plainly and as world size 1 of a torchrun-style job must
# give the same losses and checkpoint bits; then DecLLM-150M's mean step time (steps 3 to 8 of
# metrics.jsonl) without and with the NCCL path (the gradient all-reduce in buckets and the loss
# sums), side by side. libnccl.so.2 comes from the system or the nvidia-nccl-cu13 wheel.
nccl() {
    set -e
    local dir=/tmp/redpack-nccl lib
    rm -rf "$dir"
    lib=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null || true)
    [ -n "$lib" ] && export LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"
    "$BUNDLE/redpack" build-corpus --out "$dir" >/dev/null
    train() { # NAME CONFIG STEPS [env...]; 8 rows a step in one micro-batch
        local name=$1 config=$2 steps=$3
        shift 3
        env "$@" "$BUNDLE/redpack" train --config "trainer/configs/$config.toml" \
            --data "$dir/packed" --out "$dir/$name" --steps "$steps" --checkpoint-every "$steps" \
            --batch 8 --accum 1 --device cuda --json >"$dir/$name.json"
    }
    local job=(WORLD_SIZE=1 RANK=0 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29517)
    train tiny-plain decllm-tiny-pretrain 20
    train tiny-nccl decllm-tiny-pretrain 20 "${job[@]}"
    train 150m-plain decllm-150m-pretrain 8
    train 150m-nccl decllm-150m-pretrain 8 "${job[@]}"
    python3 - "$dir" <<'PY'
import hashlib, json, sys
d = sys.argv[1]
def losses(run):
    return [json.loads(l)["loss"] for l in open(f"{d}/{run}/metrics.jsonl")]
def weights(run):
    ckpt = json.load(open(f"{d}/{run}.json"))["checkpoint"]
    return hashlib.sha256(open(f"{ckpt}/model.safetensors", "rb").read()).hexdigest()
same = losses("tiny-plain") == losses("tiny-nccl") and weights("tiny-plain") == weights("tiny-nccl")
print("world size 1 over NCCL equals the single-GPU run (losses, checkpoint bits):", same)
def step_s(run):
    s = [json.loads(l)["elapsed_s"] for l in open(f"{d}/{run}/metrics.jsonl")][2:]
    return sum(s) / len(s)
plain, nccl = step_s("150m-plain"), step_s("150m-nccl")
print(f"decllm-150m step: plain {plain:.4f} s, NCCL world 1 {nccl:.4f} s, overhead {100 * (nccl / plain - 1):+.2f}%")
sys.exit(0 if same else 1)
PY
}

run() {
    RESULTS=${GPU_CHECK_RESULTS:-/tmp/gpu-check-out}/gpu-check
    DEADLINE=$((SECONDS + ${GPU_CHECK_BUDGET:-540}))
    mkdir -p "$RESULTS"
    : >"$RESULTS/summary.txt"
    for bin in trainer_suite cuda_step eval_step flash_attention decode redpack; do
        [ -x "$BUNDLE/$bin" ] || { echo "missing $BUNDLE/$bin: run 'scripts/gpu-check.sh build' first and carry target/gpu-bundle" >&2; exit 2; }
    done
    local libs
    libs=$(library_path)
    export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/redpack-cache}
    # Test processes share compiled kernels too (each would compile all of them otherwise).
    export REDPACK_TEST_KERNEL_CACHE=$XDG_CACHE_HOME/redpack-test-kernels
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$RESULTS/gpu.txt"

    # Most important first; the budget cuts the tail if the machine is slow.
    export RUST_BACKTRACE=1
    # (Compiling every kernel for sm_90 and sm_80 needs no GPU: CI does it, so it is skipped here.)
    local suite=$BUNDLE/trainer_suite
    wanted kernels && step kernels 120 "$suite" cuda_kernels:: --test-threads=1 \
        --skip every_kernel_compiles_for_sm90_and_sm80
    wanted kernels && step attention 120 "$suite" cuda_attention:: --test-threads=1
    wanted kernels && step adafactor 60 "$suite" cuda_adafactor:: --test-threads=1
    # (The steps under AddressSanitizer run on the CPU emulation, built with a C++ compiler: CI
    # runs them; on the GPU, compute-sanitizer's memcheck below covers the same steps.)
    wanted model && step model 240 "$suite" cuda_model:: --test-threads=1 \
        --skip steps_stay_inside_their_buffers_under_addresssanitizer
    # The bf16 model step with the pipelined fused-attention kernels (the kernel test covers both).
    wanted model && step model-basic 60 env REDPACK_CUDA_FLASH=basic "$suite" \
        --exact cuda_model::bf16_step_is_close_to_cpu --test-threads=1
    # Whole steps with the products through cuBLASLt (the kernel test checks each product).
    wanted model && step model-lt 90 env REDPACK_CUDA_BLAS=lt "$suite" --exact \
        cuda_model::decllm_tiny_step_matches_cpu cuda_model::redllm_tiny_step_matches_cpu \
        cuda_model::bf16_step_is_close_to_cpu cuda_model::resident_training_matches_the_host_loop \
        --test-threads=1
    # The bf16 step with the fused cross-entropy (the kernel test checks its bits).
    wanted model && step model-ce-fused 60 env REDPACK_CUDA_CE=fused "$suite" \
        --exact cuda_model::bf16_step_is_close_to_cpu --test-threads=1
    wanted model && step train 90 "$suite" cuda_train:: --test-threads=1
    # Evaluation on the GPU: the (L, k) grid against the CPU, and validation between resident
    # training steps.
    wanted model && step eval-grid 90 "$suite" --exact \
        eval_grid::cuda_grid_matches_the_cpu_at_every_pair \
        train_validate::validation_on_cuda_leaves_resident_training_alone --test-threads=1
    # Health checks on the GPU: the kernels keep NaN and overflow visible (norm, softmax,
    # cross-entropy, Adafactor), a diverging run stops, the free-memory check.
    wanted model && step health 120 "$suite" --exact \
        train_health::non_finite_values_are_not_squashed_by_the_cuda_norm \
        train_health::a_diverging_run_stops_on_the_cuda_backend_too \
        train_health::a_device_run_is_checked_against_the_devices_free_memory --test-threads=1
    wanted generate && step generate 90 "$suite" generate_cuda:: --test-threads=1
    wanted generate && step bench-decode 120 env BENCH_DEVICE=cuda BENCH_SIZE=150m "$BUNDLE/decode"
    wanted e2e && step e2e 90 bash -c "$(declare -f e2e); BUNDLE=$BUNDLE e2e"
    wanted export && step export 120 bash -c "$(declare -f export_check); BUNDLE=$BUNDLE export_check"
    wanted nccl && step nccl 150 bash -c "$(declare -f nccl); BUNDLE=$BUNDLE nccl"
    wanted bench-bf16 && step bench-bf16 150 env BENCH_PRECISION=bf16 BENCH_STEPS=10 "$BUNDLE/cuda_step"
    # Evaluation tokens/s beside a training forward + backward of the same 150M models, at
    # L = 2048 and 16,384, 4 rows each, on the GPU alone (BENCH_JSON: one JSON object per line).
    wanted bench-eval && step bench-eval 120 env BENCH_DEVICE=cuda BENCH_SIZE=150m BENCH_ROWS=4 \
        BENCH_LENGTHS=2048,16384 BENCH_PRECISION=bf16 BENCH_JSON=1 "$BUNDLE/eval_step"
    wanted bench-attention && step bench-attention 90 "$BUNDLE/flash_attention"
    # The fused cross-entropy (REDPACK_CUDA_CE=fused) beside the default two kernels, DecLLM
    # alone, with the kernel profile.
    wanted ce && step bench-ce-fused 60 env REDPACK_CUDA_CE=fused BENCH_PRECISION=bf16 \
        BENCH_ARCHS=dec BENCH_STEPS=10 BENCH_TRAIN_STEPS=0 BENCH_PROFILE=1 "$BUNDLE/cuda_step"
    local sanitizer=""
    command -v compute-sanitizer >/dev/null && sanitizer=compute-sanitizer
    [ -z "$sanitizer" ] && [ -x /usr/local/cuda/bin/compute-sanitizer ] &&
        sanitizer=/usr/local/cuda/bin/compute-sanitizer
    if [ -z "$sanitizer" ]; then
        echo "compute-sanitizer not found: memcheck skipped" | tee -a "$RESULTS/summary.txt"
    fi
    # memcheck: the fused attention (both variants, every mask and head dim), then whole tiny
    # steps (f32 both architectures, bf16 with fused attention) and resident training (Adafactor).
    [ -n "$sanitizer" ] && wanted memcheck && step memcheck-model 120 "$sanitizer" --tool memcheck \
        --error-exitcode 99 "$suite" --exact cuda_model::decllm_tiny_step_matches_cpu \
        cuda_model::redllm_tiny_step_matches_cpu cuda_model::bf16_step_is_close_to_cpu \
        cuda_model::resident_training_matches_the_host_loop --test-threads=1
    [ -n "$sanitizer" ] && wanted memcheck && step memcheck-kernels 120 "$sanitizer" --tool memcheck \
        --error-exitcode 99 "$suite" --exact \
        cuda_attention::flash_attention_matches_cpu_for_every_mask_and_head_dim --test-threads=1
    wanted torch && step torch 240 python3 trainer/benches/torch_ref.py --arch dec,red --modes eager,compile
    wanted bench-1b && step bench-1b 150 env BENCH_SIZE=1b BENCH_PRECISION=bf16 BENCH_STEPS=3 \
        BENCH_WARMUP=1 BENCH_TRAIN_STEPS=0 BENCH_PROFILE=0 "$BUNDLE/cuda_step"
    # initcheck: no kernel or product reads device memory nothing wrote (the step's outputs that
    # a kernel or a beta-0 product fills are allocated without zeroing). With bulk copies
    # tracked: without that, the values cuBLAS writes through the copy engine look unwritten.
    [ -n "$sanitizer" ] && wanted initcheck && step initcheck-model 90 "$sanitizer" --tool initcheck \
        --check-bulk-copy yes --print-limit 20 --error-exitcode 99 "$suite" --exact \
        cuda_model::decllm_tiny_step_matches_cpu cuda_model::redllm_tiny_step_matches_cpu \
        cuda_model::bf16_step_is_close_to_cpu --test-threads=1
    # Experiments, after the checks: the products through cuBLASLt's cached plans in place of
    # cublasGemmEx (REDPACK_CUDA_BLAS=lt), and the fused attention's 4-warp pipelined build (three
    # forward blocks per SM) and wide forward (32 queries per warp), each beside bench-bf16's
    # default. The attention builds on DecLLM alone (its causal rows are where attention weighs
    # most), forward and backward only, to keep them short; each with its kernel profile, so
    # that the forward, dK/dV and dQ kernels of every build can be compared one by one.
    wanted experiments && step bench-lt 150 env REDPACK_CUDA_BLAS=lt BENCH_PRECISION=bf16 \
        BENCH_STEPS=10 "$BUNDLE/cuda_step"
    wanted experiments && step bench-w4 90 env REDPACK_CUDA_FLASH=pipelined-w4 BENCH_PRECISION=bf16 \
        BENCH_ARCHS=dec BENCH_STEPS=10 BENCH_TRAIN_STEPS=0 BENCH_PROFILE=1 "$BUNDLE/cuda_step"
    wanted experiments && step bench-wide 90 env REDPACK_CUDA_FLASH=wide BENCH_PRECISION=bf16 \
        BENCH_ARCHS=dec BENCH_STEPS=10 BENCH_TRAIN_STEPS=0 BENCH_PROFILE=1 "$BUNDLE/cuda_step"
    # Every kernel in the build that timed fastest (REDPACK_CUDA_FLASH=auto), both
    # architectures: its JSON lists each pick with the times it was made on.
    wanted experiments && step bench-auto 120 env REDPACK_CUDA_FLASH=auto BENCH_PRECISION=bf16 \
        BENCH_STEPS=10 BENCH_TRAIN_STEPS=0 BENCH_PROFILE=0 "$BUNDLE/cuda_step"
    # Nsight Compute on the fused attention (one forward, dK/dV and dQ launch of DecLLM-150M's
    # shape): where the kernels' time goes (issue stalls, pipe use, occupancy), for tuning them.
    local ncu=""
    for c in ncu /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu; do
        command -v "$c" >/dev/null 2>&1 && { ncu=$(command -v "$c"); break; }
    done
    if [ -n "$ncu" ]; then
        wanted ncu && step ncu-attention 150 "$ncu" --clock-control none --kernel-name regex:flash_ --launch-count 3 \
            --section SpeedOfLight --section Occupancy --section WarpStateStats \
            --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
            env BENCH_ARCHS=dec BENCH_STEPS=1 BENCH_WARMUP=0 BENCH_TRAIN_STEPS=0 "$BUNDLE/cuda_step"
    else
        echo "ncu not found: the attention profile is skipped" | tee -a "$RESULTS/summary.txt"
    fi
    wanted bench-f32 && step bench-f32 90 env BENCH_PRECISION=f32 BENCH_STEPS=3 BENCH_WARMUP=1 \
        BENCH_TRAIN_STEPS=0 "$BUNDLE/cuda_step"
    grep -h '^{' "$RESULTS"/bench-bf16.log "$RESULTS"/bench-lt.log "$RESULTS"/bench-w4.log \
        "$RESULTS"/bench-wide.log "$RESULTS"/bench-auto.log "$RESULTS"/bench-ce-fused.log \
        "$RESULTS"/bench-1b.log "$RESULTS"/bench-f32.log "$RESULTS"/torch.log \
        >"$RESULTS/throughput.jsonl" 2>/dev/null
    python3 - "$RESULTS/throughput.jsonl" <<'PY' | tee "$RESULTS/table.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ok = [r for r in rows if "error" not in r]
for r in rows:
    if "error" in r:
        print("error:", r)
print(f"{'arch':5} {'impl':8} {'mode':29} {'tokens/s':>10} {'step s':>8} {'TFLOP/s':>8} {'MFU':>6} {'peak GiB':>9} {'vs torch compile':>17} {'train step s':>13} {'update s':>9}")
for arch in ("dec", "red"):
    ref = next((r for r in ok if r["arch"] == arch and r["impl"] == "torch" and r["mode"].startswith("compile")), None)
    for r in (r for r in ok if r["arch"] == arch):
        ratio = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if ref else "-"
        mode = r["mode"] + ("/" + r["attention"] if "attention" in r else "") + ("/" + r["blas"] if "blas" in r else "") + ("/ce-fused" if r.get("ce") == "fused" else "")
        print(f"{arch:5} {r['impl']:8} {mode:29} {r['tokens_per_s']:10.0f} {r['step_s']:8.3f} "
              f"{r['tflops']:8.1f} {100 * r['mfu']:5.1f}% {r['peak_bytes'] / 2**30:9.2f} {ratio:>17} "
              f"{r['train_step_s'] if 'train_step_s' in r else float('nan'):13.3f} "
              f"{r['update_s'] if 'update_s' in r else float('nan'):9.4f}")
PY
    grep -h '^{' "$RESULTS"/bench-attention.log >"$RESULTS/attention.jsonl" 2>/dev/null
    python3 - "$RESULTS/attention.jsonl" <<'PY' | tee "$RESULTS/attention-table.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{'case':18} {'build':13} {'fwd ms':>8} {'fwd TFLOP/s':>12} {'bwd ms':>8} {'bwd TFLOP/s':>12}")
for r in rows:
    print(f"{r['case']:18} {r['build']:13} {r['forward_ms']:8.3f} {r['forward_tflops']:12.1f} "
          f"{r['backward_ms']:8.3f} {r['backward_tflops']:12.1f}")
PY
    grep -h '^auto picked' "$RESULTS"/bench-attention.log 2>/dev/null
    echo "=== summary"
    cat "$RESULTS/summary.txt"
    pack
}

case "${1:-}" in
build) build ;;
run) run ;;
*)
    echo "usage: $0 build|run" >&2
    exit 2
    ;;
esac
