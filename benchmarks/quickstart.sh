#!/usr/bin/env bash
# The README's quick start, run as written; its output goes to benchmarks/results/quickstart.txt
# (the README quotes it). Usage: flock /work/wt/cpu.lock bash benchmarks/quickstart.sh [PYTHON]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${1:-python}
OUT="$ROOT/benchmarks/results/quickstart.txt"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
export COLUMNS=100 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
run() { echo "\$ $*"; "$@" 2>&1; echo; }
{
  echo "# written by: bash benchmarks/quickstart.sh ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
  echo "# note: ${QUICKSTART_NOTE:-}"
  run "$PY" -c "import torch, torchvision; m = torchvision.models.mobilenet_v2().eval(); torch.onnx.export(m, torch.randn(1, 3, 224, 224), 'mobilenet_v2.onnx', dynamo=False, opset_version=17, input_names=['input'], dynamic_axes={'input': {0: 'N'}})"
  run "$PY" -m onnxprune analyze mobilenet_v2.onnx
  run "$PY" -m onnxprune prune mobilenet_v2.onnx -o mobilenet_v2-pruned.onnx --target-flops 0.5
  run "$PY" -m onnxprune bench mobilenet_v2.onnx mobilenet_v2-pruned.onnx --batch 1 8 --runs 50
} > "$OUT"
echo "wrote $OUT"
