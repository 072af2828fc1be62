#!/usr/bin/env bash
# The GPU check (issue 15): on a machine with one GPU and no internet, in under 8 minutes, with the project installed
# (a cluster image: Python 3.12, torch 2.11, transformers 5.17, peft; or `pip install -e '.[dev]'`):
#   0. name the machine (no usable GPU: stop there);
#   1. the tests marked gpu, then the fast tests, on that machine;
#   2. a short main job on CUDA (MiniLM, SST-2, r=8, 2,000 examples, one epoch); every run must end COMPLETE;
#   3. the training-step benchmark in bf16: lorakit vs PEFT vs full fine-tuning, RoBERTa-base-shaped model and MiniLM,
#      batch 32 x 128, with the RoBERTa-base LoRA step's model FLOPs utilisation (MFU).
# Results go to files under OUT_DIR: summary.md (each step's status and time, the machine), the logs, pytest's JUnit
# XML, the main job's sweep folder and the benchmark's JSON/Markdown (copy those to results/benchmarks/).
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--out DIR] [OVERRIDE ...]
#
# OUT_DIR: --out, else $OUT (the device runner's folder), else results/gpu_check. OVERRIDEs are appended to the main
# job's (e.g. execution.data_dir=/data/glue). --dry-run prints every command and checks it without a GPU: the imports,
# the gpu tests' collection, the main job's overrides against the config (Hydra's --cfg job), the benchmark's
# arguments; it writes nothing. $PYTHON picks the interpreter (default: python).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
OUT_DIR=${OUT:-results/gpu_check}
EXTRA=()
while (($#)); do
    case $1 in
        --dry-run) DRY_RUN=1 ;;
        --out) OUT_DIR=${2:?--out needs a folder}; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        -*) echo "gpu_check: unknown option $1 (accepted: --dry-run, --out DIR, then main-job overrides)" >&2; exit 2 ;;
        *) EXTRA+=("$1") ;;
    esac
    shift
done

PY=${PYTHON:-python}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline WANDB_SILENT=true TOKENIZERS_PARALLELISM=false
OUT_DIR=$(realpath -m "$OUT_DIR")

MAIN_JOB=(rank=8 train.max_train_samples=2000 train.epochs=1 execution.device=cuda "hydra.sweep.dir=$OUT_DIR/main_job"
          "${EXTRA[@]}")
BENCH=(--device cuda --dtype bf16 --models roberta-base,minilm --batch 32 --seq-len 128 --out "$OUT_DIR/benchmarks")

# name|time limit (s)|command. The limits add up to 7 min 50 s.
STEPS=(
    "machine|30|$PY -m benchmarks.gpu_check machine"
    "gpu_tests|60|$PY -m pytest -q -p no:cacheprovider -m gpu --junitxml=${OUT_DIR@Q}/gpu_tests.xml"
    "fast_tests|100|$PY -m pytest -q -p no:cacheprovider -m 'not slow and not gpu' --junitxml=${OUT_DIR@Q}/fast_tests.xml"
    "main_job|90|$PY -m experiments.sweep ${MAIN_JOB[*]@Q} && $PY -m benchmarks.gpu_check runs ${OUT_DIR@Q}/main_job"
    "train_step_bf16|190|$PY -m benchmarks.train_step ${BENCH[*]@Q} && $PY -m benchmarks.run_all --readme-only --out ${OUT_DIR@Q}/benchmarks"
)

if ((DRY_RUN)); then
    failed=0
    log=$(mktemp)
    check() {  # a description, then the command that checks it
        local what=$1; shift
        if "$@" >"$log" 2>&1; then echo "  ok: $what"; else
            echo "  FAILED: $what"; tail -15 "$log" | sed 's/^/    /'; failed=1; fi
    }
    echo "gpu_check --dry-run: would write to $OUT_DIR and run, in order:"
    for step in "${STEPS[@]}"; do
        IFS='|' read -r name limit command <<<"$step"
        echo "  [$name, at most $limit s] $command"
    done
    echo "checks:"
    check "imports and the benchmark's arguments" "$PY" -m benchmarks.gpu_check bench-args "${BENCH[@]}"
    # Collecting only the files that use the marker keeps the dry run quick; the real step selects from every file.
    mapfile -t marked < <(grep -l 'mark\.gpu' tests/*.py)
    check "tests marked gpu are collected (pytest exit 5: none)" \
        "$PY" -m pytest -q -p no:cacheprovider --collect-only -m gpu "${marked[@]}"
    check "main job overrides compose (Hydra --cfg job)" "$PY" -m experiments.sweep "${MAIN_JOB[@]}" --cfg job
    rm -f "$log"
    exit $failed
fi

mkdir -p "$OUT_DIR"
SUMMARY=$OUT_DIR/summary.md
{
    echo "# GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), host $(hostname)"
    echo
    echo "Commands: benchmarks/gpu_check.sh; each step's output is in <step>.log."
    echo
    echo "| step | status | seconds | log |"
    echo "|---|---|---:|---|"
} >"$SUMMARY"
failed=0
for step in "${STEPS[@]}"; do
    IFS='|' read -r name limit command <<<"$step"
    echo "== $name (at most ${limit} s): $command"
    start=$SECONDS
    timeout --kill-after=10 "$limit" bash -c "$command" 2>&1 | tee "$OUT_DIR/$name.log"
    status=${PIPESTATUS[0]}
    case $status in
        0) verdict=ok ;;
        124|137) verdict="**timed out** (${limit} s)" ;;
        5) verdict="**failed**: pytest collected no tests (exit 5)" ;;
        *) verdict="**failed** (exit $status)" ;;
    esac
    ((status == 0)) || failed=1
    echo "| $name | $verdict | $((SECONDS - start)) | $name.log |" >>"$SUMMARY"
    if [[ $name == machine && $status != 0 ]]; then
        echo "| (the rest) | not run: the machine step failed | | |" >>"$SUMMARY"; break
    fi
done
{ echo; echo "Machine: $(tail -1 "$OUT_DIR/machine.log")"; } >>"$SUMMARY"
echo; cat "$SUMMARY"
exit $failed
