#!/usr/bin/env bash
# GPU check (issue 15): the throughput of every GPU-bound step, in at most 8 minutes on one GPU.
#
#   bash bench/gpu_check.sh INPUTS OUT      on the GPU machine: INPUTS made here beforehand by
#                                           `.venv/bin/python bench/gpu_check.py prepare INPUTS`
#   bash bench/gpu_check.sh --dry-run [OUT] CPU, tiny sizes (tests/test_gpu_check.py runs this)
#
# Writes OUT/gpu_check.json and OUT/gpu_check.md (the README's table) after every section.
# Python packages the GPU machine lacks (zarr and its codecs) travel as wheels in .whl/
# (see DEVELOPERS.md); they are installed to a temporary folder, never over the machine's own.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [ "${1:-}" = "--dry-run" ]; then
    out="${2:-$(mktemp -d)/gpu_check}"
    inputs="$(mktemp -d)/inputs"
    OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" "$PYTHON" bench/gpu_check.py prepare "$inputs" --dry-run
    exec "$PYTHON" bench/gpu_check.py run "$inputs" "$out" --dry-run
fi

inputs="${1:?usage: bench/gpu_check.sh INPUTS OUT | --dry-run [OUT]}"
out="${2:?usage: bench/gpu_check.sh INPUTS OUT | --dry-run [OUT]}"
if ls .whl/*.whl >/dev/null 2>&1 && ! "$PYTHON" -c "import zarr" 2>/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/bcpath-site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/bcpath-site"
fi
"$PYTHON" - <<'PY'
import torch
print(f"torch {torch.__version__}, CUDA {torch.cuda.is_available()}, {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}")
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec "$PYTHON" bench/gpu_check.py run "$inputs" "$out" --budget-s "${GPU_CHECK_BUDGET_S:-300}"
