#!/usr/bin/env bash
# GPU check of the Triton backend, of `tinykg train --cuda-graph` and of the README's DDP launch over NCCL, on one CUDA GPU, in
# under 5 minutes; installs nothing (works offline).
# Needs python with torch (CUDA build) and triton. Prints markdown; writes $OUT/gpu_check.json when OUT is
# set. Usage: bash benchmarks/gpu_check.sh [--numel N] [--repeats R] [--out FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python}"

"$PYTHON" - <<'PY'
import sys
missing = []
for name in ("torch", "triton", "numpy"):
    try:
        module = __import__(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as err:
        missing.append(f"{name}: {err}")
import torch
print("cuda available:", torch.cuda.is_available(), "| torch cuda:", torch.version.cuda)
if missing or not torch.cuda.is_available():
    print("gpu_check needs torch with CUDA and triton, installed beforehand (nothing is downloaded):", missing)
    sys.exit(2)
PY
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true

"$PYTHON" benchmarks/gpu_check.py "$@"

# `tinykg train --cuda-graph`: its GPU tests (new noise per replay, refusals, every training loop), then the
# small steps' time graphed against eager (the large graphs: `gpu_check.py --cuda-graph` alone).
echo "## CUDA-graph steps: tests/train/test_graphed.py and the salt / capture-word kernel tests"
"$PYTHON" -m pytest -q -p no:cacheprovider tests/train/test_graphed.py tests/compress/test_backends.py \
    -k "graph or salt or capture_word" || failed=1
"$PYTHON" benchmarks/gpu_check.py --skip-correctness --numel 1048576 --repeats 10 --cuda-graph \
    --steps "KGCN d16" "KGAT synthetic" "KGIN synthetic" --out "${OUT:-/tmp}/gpu_check_graphed.json" || failed=1

# The README's GPU launch (DDP over NCCL, one process per GPU, cuda:LOCAL_RANK), on this machine's GPUs.
NGPU="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')"
echo "## DDP launch check: torchrun --standalone --nproc-per-node $NGPU ... --device cuda"
"$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$NGPU" -m tinykg train --synthetic toy \
    --epochs 1 --device cuda --out "${OUT:-/tmp}/gpu_ddp_check.json"
exit "${failed:-0}"
