#!/usr/bin/env bash
# Model-step overhead of this checkout against a baseline checkout on the same GPU lease, alternated
# (baseline, this, baseline, this), because a GPU host's speed drifts by 10-20% between runs and leases.
# The device machine gets no .git: prepare the baseline here first, in a folder git ignores, and carry it:
#   git archive <commit> tinykg benchmarks | (mkdir -p .baseline && tar -x -C .baseline)
#   cp benchmarks/gpu_check.py .baseline/benchmarks/    # one harness, this checkout's flags, for both
#   echo /.baseline/ >> .git/info/exclude
# Usage: bash benchmarks/gpu_compare.sh BASELINE_DIR [MODEL_STEPS name parts...]   (writes $OUT/*.json)
set -uo pipefail
cd "$(dirname "$0")/.."
BASELINE="${1:?usage: gpu_compare.sh BASELINE_DIR [steps...]}"
shift
# Each argument selects the MODEL_STEPS whose name contains it (quoted: "KGAT ~1M").
if (($#)); then STEPS=("$@"); else STEPS=(KGCN KGNN KGAT KGIN); fi
OUT="${OUT:-/tmp}"
steps() {  # $1 = label, $2 = checkout root
    ( cd "$2" && PYTHONPATH="$PWD" timeout 150 python benchmarks/gpu_check.py --skip-correctness --skip-no-wait \
        --repeats 10 --numel 1048576 --steps "${STEPS[@]}" --out "$OUT/$1.json" ) > "$OUT/$1.txt" 2>&1
    echo "=== $1 (step_ratio, fp32_step_ms, compressed_step_ms, enqueue ms fp32 / compressed)"
    python - "$OUT/$1.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1])).get("model_steps", []):
    print(f"{r['model'][:44]:44s} {r['step_ratio']:5.2f} {r['fp32_step_ms']:7.1f} {r['compressed_step_ms']:7.1f}"
          f" {r['fp32_enqueue_ms']:6.1f} / {r['compressed_enqueue_ms']:6.1f}")
PY
}
steps baseline_a "$BASELINE"
steps this_a .
steps baseline_b "$BASELINE"
steps this_b .
