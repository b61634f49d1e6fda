"""Training time per epoch of each benchmark base on this machine (why a base is not trained here).

    python -m benchmarks.epoch_time [--steps 8] [--threads 2] [--note "quiet pass, nothing else ran"]

Times `steps` SGD steps of batch 128 on Fashion-MNIST (28x28, channels-last as `models.train` uses
on the CPU, augmentation left out) after one warm-up step, and scales the mean step to one epoch of
54,000 images. Writes `benchmarks/results/epoch_time.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F

from benchmarks.run import MODELS, RESULTS, machine
from models.cifar import build

TRAIN_IMAGES = 54000
BATCH = 128


def time_epoch(arch: str, steps: int) -> dict[str, float]:
    """Seconds per step and per epoch of `arch` (mean over `steps` steps after one warm-up)."""
    torch.manual_seed(0)
    net = build(arch, in_channels=1, num_classes=10).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(BATCH, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,))
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    step = sum(times) / len(times)
    return {"step_s": round(step, 4), "epoch_s": round(step * -(-TRAIN_IMAGES // BATCH), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.epoch_time", description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="torch threads (default: torch's default, as `models.train` trains with)")
    ap.add_argument("--note", default=None,
                    help="the conditions, recorded (default: the load average at the start)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    res = {m: time_epoch(m, args.steps) for m in MODELS}
    for m, v in res.items():
        print(f"{m}: {v['step_s']:.3f} s/step, {v['epoch_s'] / 60:.1f} min/epoch", flush=True)
    record = {"models": res, "steps": args.steps, "batch_size": BATCH, "train_images": TRAIN_IMAGES,
              "threads": torch.get_num_threads(), "machine": machine(),
              "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "load_start": [round(x, 2) for x in load], "load_end": [round(x, 2) for x in os.getloadavg()],
              "note": args.note or f"load average {load[0]:.2f} at the start"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "epoch_time.json").write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
