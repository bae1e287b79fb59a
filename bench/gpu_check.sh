#!/usr/bin/env bash
# GPU check at paper scale, one short run on one H100/H200:
#   1. bench/gpu_check.py (about 30 s): an AMP training step of Conformer-S at 512x512 batch 8,
#      batched multi-scale CAMs of 8 VOC-size images, a one-process NCCL DDP step; times and peak
#      memory;
#   2. `wsss demo --device cuda --with-upper-bound` (the embedded dataset through the whole BNR
#      pipeline), timed per stage. With pydensecrf2 installed it takes about 2 minutes; without it
#      make-labels runs the pure-torch CRF fallback on the CPU (measured on an H200 machine: 364 s
#      of a 441 s demo), so it comes second and the fast checks above are never lost to a timeout.
# Run from the repository root with wsss importable (installed, or PYTHONPATH=src). Never a test
# dependency: the CPU test suite and CI do not need a GPU.
#   bash bench/gpu_check.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${1:-$(mktemp -d)}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "== bench/gpu_check.py"
$PY bench/gpu_check.py
echo "== wsss demo --device cuda --with-upper-bound (run directory $OUT/demo; log $OUT/demo.log)"
start=$(date +%s.%N)
$PY -m wsss demo --device cuda --with-upper-bound --out "$OUT/demo" >"$OUT/demo.log" 2>&1
rc=$?
end=$(date +%s.%N)
[ $rc -eq 0 ] || { echo "demo failed ($rc):"; tail -c 3000 "$OUT/demo.log"; }
$PY - "$OUT/demo/run.json" "$start" "$end" <<'PY'
import json, sys
path, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
try:
    record = json.load(open(path))
except OSError:
    sys.exit(0)
print(f"demo wall {end - start:.1f} s; stages: " + ", ".join(
    f"{name} {info['seconds']:.1f} s" for name, info in record["stages"].items()))
PY
grep -A8 "^result" "$OUT/demo.log" || true
