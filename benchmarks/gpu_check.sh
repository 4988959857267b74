#!/usr/bin/env bash
# The one command for a session with a CUDA GPU (under 8 minutes on one GPU), from the repository root:
#     bash benchmarks/gpu_check.sh
# 1. benchmarks/gpu_check.py: correctness (bf16 vs fp32, compiled vs eager, flash vs math SDPA, DDP/FSDP2
#    on a 1-rank group, `torchrun -m mupd train` with ddp and fsdp) -> results/gpu_check_<device>.json
# 2. benchmarks/gpu.py: training images/s + MFU (S/2, B/2, XL/2 vs diffusers DiT, 0 and 3 modalities),
#    512 px 50-step Heun sampling, peak memory -> results/gpu_<device>.json
# Both always run (a failed check does not hide the benchmark); the exit status is non-zero if either
# failed. Then commit the two JSON files with the device named in the message.
# Packages the GPU machine lacks (e.g. diffusers) can travel as wheels in .whl/ (git-ignored), fetched
# beforehand where pip can reach the index:
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl diffusers==0.42.1
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/mupd-site .whl/*.whl || exit 2
    export PYTHONPATH="/tmp/mupd-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, diffusers, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible: this script is for a GPU machine')" || exit 2
timeout --signal=INT --kill-after=10 215 "$PY" benchmarks/gpu_check.py --step-timeout 75
check=$?
timeout --signal=INT --kill-after=10 255 "$PY" benchmarks/gpu.py --budget-s 220
bench=$?
echo "gpu_check.py exit $check, gpu.py exit $bench; results in benchmarks/results/gpu_check_*.json and gpu_*.json"
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then  # a lent device machine returns only what lands in $OUT
    cp benchmarks/results/gpu_check_*.json benchmarks/results/gpu_*.json "$OUT"/ 2>/dev/null
fi
[ "$check" -eq 0 ] && [ "$bench" -eq 0 ]
