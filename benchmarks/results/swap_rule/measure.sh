#!/bin/bash
# usage: measure.sh TREE TAG METHOD   (prune ResNet-20 folded, global, 50% MACs, fashion-mnist; then test top-1)
set -e
TREE=$1; TAG=$2; M=$3
cd "$TREE"
export PYTHONPATH=$TREE OMP_NUM_THREADS=2
PY=/work/main/.venv/bin/python
O=/tmp/s4-out/$TAG-$M
$PY -m onnxprune prune /work/wt/s4-swap/benchmarks/models/resnet20_folded.onnx -o $O.onnx --method $M --global --target-flops 0.5 --data fashion-mnist --report $O.report.json
$PY -m onnxprune eval $O.onnx --data fashion-mnist --split test --json $O.eval.json
