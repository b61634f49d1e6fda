#!/usr/bin/env bash
# The README's quick start, run as written (each `onnxprune ...` line runs `$PYTHON -m onnxprune ...`
# with this checkout first on the path); everything it prints goes to
# benchmarks/results/quickstart.txt, which the README quotes.
#   /work/wt/cpuq env QUICKSTART_NOTE="..." bash benchmarks/quickstart.sh [PYTHON]
# QUICKSTART_NOTE records what else ran on the machine (the bench figures depend on it).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${1:-python}
OUT="$ROOT/benchmarks/results/quickstart.txt"
WORK=$(mktemp -d)
TMP_OUT=$(mktemp)
trap 'rm -rf "$WORK" "$TMP_OUT"' EXIT
cd "$WORK"
export COLUMNS=100 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
show() { echo "\$ $1"; }
onnxprune() { show "onnxprune $*"; "$PY" -m onnxprune "$@" 2>&1; echo; }
{
  echo "# written by: bash benchmarks/quickstart.sh ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), onnxruntime $("$PY" -c 'import onnxruntime; print(onnxruntime.__version__)'))"
  echo "# note: ${QUICKSTART_NOTE:-none given}"
  EXPORT="import torch, torchvision; m = torchvision.models.mobilenet_v2().eval(); torch.onnx.export(m, torch.randn(1, 3, 224, 224), 'mobilenet_v2.onnx', dynamo=False, opset_version=17, input_names=['input'], dynamic_axes={'input': {0: 'N'}})"
  show "python -c \"$EXPORT\""
  "$PY" -W ignore -c "$EXPORT" 2>&1
  echo
  onnxprune analyze mobilenet_v2.onnx
  onnxprune prune mobilenet_v2.onnx -o mobilenet_v2-pruned.onnx --target-flops 0.5
  onnxprune bench mobilenet_v2.onnx mobilenet_v2-pruned.onnx --batch 1 8
} > "$TMP_OUT"
chmod 644 "$TMP_OUT"; mv "$TMP_OUT" "$OUT"
trap 'rm -rf "$WORK"' EXIT
echo "wrote $OUT"
