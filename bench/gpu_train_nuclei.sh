#!/usr/bin/env bash
# Issue 13 on one GPU: leave-one-dataset-out table of nuclei U-Net variants, then the chosen
# variant trained on MoNuSeg non-breast + CPM-15 + CoNSeP train (bench/gpu_train_nuclei.py).
#
#   bash bench/gpu_train_nuclei.sh "$OUT" [BUDGET_S]      # from the repository root
#
# Needs .gpu_data/nuclei_pack.npz (bench/gpu_nuclei_pack.py, made where ../shared is) and
# python with torch, torchvision, numpy, scipy, scikit-image, opencv, tifffile. Everything it
# writes goes to $OUT (at most 6 files: run.log, lodo.json, final_model.tar or its 15 MB parts
# final_model.tar.00, .01, ...); lodo.json is rewritten after every fold, so a timeout leaves it.
set -u
OUT=${1:?usage: gpu_train_nuclei.sh OUT [BUDGET_S]}
BUDGET=${2:-360}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PYTHONUNBUFFERED=1
{
  date -u
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
  timeout -k 10 $((${BUDGET%.*} + 40)) "$PY" bench/gpu_train_nuclei.py --out "$OUT" --budget-s "$BUDGET"
  echo "exit $?"
  date -u
} 2>&1 | tee "$OUT/run.log"
