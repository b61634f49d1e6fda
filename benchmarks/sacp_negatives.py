"""sacp's paper pairs (L1 vs random masks at the same rates): does drawing each positive's
negatives from the whole mini-batch (the default) or from its own configuration only change what
the encoder learns? No evaluation is involved: held-out configurations (another seed) give an L1
and a random mask at the same rates, and the encoder's similarity to the unpruned model should
rank the L1 one higher.

    python -m benchmarks.sacp_negatives --model /work/assets/resnet20/resnet20_bn.onnx --seeds 0 1 \
        --out benchmarks/results/ablations/sacp_negatives_resnet20.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from onnxprune.criteria import weight_scores
    from onnxprune.deps import analyze
    from onnxprune.search import sacp

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--configs", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--held-out", type=int, default=200)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    analysis = analyze(args.model)
    full = analysis.full_keep()
    records = []
    for seed in args.seeds:
        for batch in (False, True):
            cfg = sacp.SacpConfig(configs=args.configs, epochs=args.epochs, pairs="l1_random", batch_negatives=batch)
            graph = sacp.build_graph(analysis, cfg.feature_len)
            tables = sacp.UnitTables.build(analysis, weight_scores(analysis, "l1"), cfg.min_rate)
            t0 = time.perf_counter()
            encoder, losses = sacp.train_encoder(graph, tables, full, cfg, np.random.default_rng(seed), seed=seed)
            rng = np.random.default_rng(10_000 + seed)
            counts = tables.counts(sacp.sample_rates(rng, args.held_out, tables.units.size, cfg.min_rate))
            l1, rand = tables.l1_keep(counts), tables.random_keep(counts, rng)
            differ = (l1 != rand).any(1)
            pos = sacp.similarity(encoder, graph, l1[differ], full)
            neg = sacp.similarity(encoder, graph, rand[differ], full)
            rec = {"seed": seed, "batch_negatives": batch, "first_loss": losses[0], "final_loss": losses[-1],
                   "auc": sacp.auc(pos, neg), "pairwise": float(np.mean(pos > neg)),
                   "similarity_gap": float(pos.mean() - neg.mean()), "held_out_pairs": int(differ.sum()),
                   "seconds": round(time.perf_counter() - t0, 1)}
            records.append(rec)
            print(json.dumps(rec), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "model": args.model, "configs": args.configs, "epochs": args.epochs, "held_out": args.held_out,
        "command": f"python -m benchmarks.sacp_negatives --model {args.model} --seeds "
                   + " ".join(map(str, args.seeds)) + f" --out {args.out}",
        "note": "one torch thread, 2-core machine shared with other engineers' jobs (timings under load)",
        "records": records}, indent=1) + "\n")


if __name__ == "__main__":
    main()
