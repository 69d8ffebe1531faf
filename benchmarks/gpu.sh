#!/usr/bin/env bash
# The GPU figures in one go, within 8 minutes on one H100: the gpu-marked tests, then the CUDA rows (fp32 and bf16)
# of the segmentation, statistics-pass and text benchmarks for RN50x16 (random weights), every figure printed.
#
#   bash benchmarks/gpu.sh            # from anywhere; PYTHON=/path/to/python to pick the interpreter
#
# Each step has its own time limit (timeout; 445 s in all, model loads included) and the script goes on after a
# step that fails or runs out of time; the last lines summarise every step's exit status and seconds. Figures to
# read: segment.py's "images / s" column (RN50x16 segmentation, fp32 and bf16 autocast), throughput.py's
# "statistics img/s" (the statistics pass of `calibrate`), text.py's "text_speedup".
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export SEGCLIP_CACHE="${SEGCLIP_CACHE:-$(mktemp -d)}"
MODEL=${MODEL:-RN50x16}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "benchmarks/gpu.sh: $PY has no torch with a CUDA device (set PYTHON=...); nothing to measure." >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, open_clip; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'open_clip', open_clip.__version__)"

summary=()
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo
    echo "=== $name (limit ${limit} s): $*"
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    [ "$rc" -eq 124 ] && echo "=== $name: ran out of its ${limit} s"
    summary+=("$name: exit $rc, $((SECONDS - start)) s")
}

step "gpu tests" 75 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests
step "segmentation $MODEL fp32 + bf16" 140 \
    "$PY" benchmarks/segment.py --model "$MODEL" --devices cuda --rounds 3 --images 8 --batch-size 24
step "statistics pass $MODEL fp32 + bf16" 140 \
    "$PY" benchmarks/throughput.py --model "$MODEL" --devices cuda --images 64 --batch-size 64 --repeats 2 --workers 8
for precision in fp32 bf16; do
    step "text $MODEL $precision" 45 \
        "$PY" benchmarks/text.py --model "$MODEL" --device cuda --precision "$precision" --prompts 1600 \
        --batch-size 1024 --rounds 3
done

echo
echo "=== summary ($SECONDS s in all)"
printf '%s\n' "${summary[@]}"
