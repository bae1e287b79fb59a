#!/usr/bin/env bash
# GPU check at paper scale, one short run (about 5 minutes on one H100/H200):
#   1. `wsss demo --device cuda` (the embedded dataset through the whole BNR pipeline), timed;
#   2. bench/gpu_check.py: an AMP training step of Conformer-S at 512x512 batch 8, batched
#      multi-scale CAMs of 8 VOC-size images, a one-process NCCL DDP step; times and peak memory.
# Run from the repository root with wsss importable (installed, or PYTHONPATH=src). Never a test
# dependency: the CPU test suite and CI do not need a GPU.
#   bash bench/gpu_check.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${1:-$(mktemp -d)}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "== wsss demo --device cuda (run directory $OUT/demo)"
start=$(date +%s.%N)
$PY -m wsss demo --device cuda --with-upper-bound --out "$OUT/demo" 2>"$OUT/demo.stderr"
rc=$?
end=$(date +%s.%N)
[ $rc -eq 0 ] || { echo "demo failed ($rc):"; tail -30 "$OUT/demo.stderr"; }
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
echo "== bench/gpu_check.py"
$PY bench/gpu_check.py
