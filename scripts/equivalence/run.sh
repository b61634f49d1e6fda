#!/bin/bash
# Same outputs before and after a refactoring: run the seeded `onnxprune prune` commands below with
# the code in CODE_DIR, then compare two output folders with compare.py.
#   git archive REV | tar -x -C /tmp/before      # the code before
#   MODEL=/tmp/tiny.onnx scripts/equivalence/run.sh /tmp/before /tmp/out_before
#   MODEL=/tmp/tiny.onnx scripts/equivalence/run.sh $PWD /tmp/out_after
#   python scripts/equivalence/compare.py /tmp/out_before /tmp/out_after
# MODEL: the tests' trained digits model (`tests.tiny.digits_model()` saved with onnx.save).
# usage: run.sh CODE_DIR OUT_DIR
PY=${PYTHON:-/work/main/.venv/bin/python}
code=$1; out=$2; mkdir -p $out
M=${MODEL:-/tmp/tiny.onnx}
run() { name=$1; shift; (cd $code && PYTHONPATH=$code OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 10 $PY -m onnxprune.cli prune $M -o $out/$name.onnx --report $out/$name.json "$@" > $out/$name.log 2>&1; echo "$name rc $?" >> $out/rc.txt); }
rm -f $out/rc.txt
for m in l1 l2 bn random; do run $m --method $m --sparsity 0.3; run ${m}_f --method $m --target-flops 0.5; done
run l1_global --method l1 --sparsity 0.4 --global --round-to 4
run taylor --method taylor --target-flops 0.5 --data digits
run taylor_ft --method taylor --target-flops 0.5 --data digits --finetune-epochs 1 --finetune-images 500
run sacp --method sacp --target-flops 0.5 --data digits --eval-images 200 --option configs=60 --option candidates=80 --option top_m=4 --option top_k=2 --option epochs=3 --option probe=1 --trajectory $out/sacp_t.json
run sacp_ft --method sacp --target-flops 0.5 --data digits --eval-images 200 --option configs=60 --option candidates=80 --option top_m=4 --option top_k=1 --option epochs=3 --option probe=0 --option k_finetune_epochs=1 --option k_finetune_images=300
run rl --method rl-pruner --target-flops 0.5 --data digits --eval-images 200 --option steps=2 --option stages=2 --option samples=3 --option post_images=256 --option calibration=32 --trajectory $out/rl_t.json
run rl_nopost --method rl-pruner --target-params 0.6 --data digits --eval-images 200 --option steps=2 --option stages=2 --option samples=3 --option post_epochs=0
run gat --method gat-ppo --target-flops 0.5 --data digits --eval-images 200 --episodes 8 --option batch=4 --option pretrain_steps=20 --option final_top=1 --trajectory $out/gat_t.json
run sacp_lat --method sacp --target-latency 0.8 --data digits --eval-images 200 --option configs=40 --option candidates=40 --option top_m=3 --option top_k=1 --option epochs=2 --option probe=0
