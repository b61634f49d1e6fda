"""Models exported with BatchNorm folded into Conv (issue 12): pruning with fine-tuning, and
fine-tuning the unpruned model, on the folded export vs the export that keeps BatchNorm.

    flock /work/wt/cpu.lock env PYTHONPATH=$PWD OMP_NUM_THREADS=2 \\
        python -m benchmarks.folded_bn --model-dir /work/assets/resnet20 --part a --part b

Parts (each writes `benchmarks/results/folded_bn/<part>*.json` with its settings):

- `a`: `onnxprune prune MODEL --method taylor --target-flops 0.5 --data fashion-mnist
  --finetune-epochs 1` (all training images) on `<stem>_folded.onnx` and `<stem>_bn.onnx`; test
  top-1 (`onnxprune eval`, held-out test split) of each pruned model and of the unpruned model.
  Targets: folded within 0.5 points of BN-kept and of the unpruned model.
- `b`: `onnxprune finetune FOLDED --teacher FOLDED --data fashion-mnist --epochs 1 --images N`
  on the unpruned folded model (the issue's report used `--images 2000`); target: test top-1
  loses at most 0.3 points.
- `lr`: the learning-rate default: one fine-tune epoch on `--lr-images` training images of the
  Taylor-pruned (50% MACs) folded and BN-kept models, for each learning rate in `--lrs`
  (validation top-1 after the epoch, restarts).

Every command runs through the CLI as a user would (parts a, b) or the Python API (lr), on a
2-core machine shared with other engineers' tests: times are "under load".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "results" / "folded_bn"
CLI = [sys.executable, "-m", "onnxprune.cli"]


def _git() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    return {"git": _git(), "python": platform.python_version(), "torch": torch.__version__,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "cpus": os.cpu_count(),
            "note": "2-core machine shared with other engineers' tests and a training job: times under load",
            "model_dir": str(args.model_dir), "seed": args.seed,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _run(cmd: list[str], log: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    entry = {"cmd": " ".join(cmd[len(CLI):]) if cmd[:len(CLI)] == CLI else " ".join(cmd), "exit": proc.returncode,
             "seconds": round(time.perf_counter() - t0, 1), "stdout_tail": proc.stdout[-1500:],
             "stderr_tail": proc.stderr[-1500:]}
    log.append(entry)
    print(f"[{entry['seconds']:7.1f}s] exit {proc.returncode}: onnxprune {entry['cmd']}", flush=True)
    return proc


def _eval(model: Path, tmp: Path, log: list[dict[str, Any]]) -> float | None:
    js = tmp / f"{model.stem}.eval.json"
    proc = _run(CLI + ["eval", str(model), "--data", "fashion-mnist", "--json", str(js)], log)
    return json.loads(js.read_text())["top1"] if proc.returncode == 0 else None


def _write(name: str, record: dict[str, Any]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


def part_a(args: argparse.Namespace, tmp: Path) -> None:
    for form in ("folded", "bn"):
        log: list[dict[str, Any]] = []
        src = args.model_dir / f"{args.stem}_{form}.onnx"
        out, report = tmp / f"a_{form}.onnx", tmp / f"a_{form}.report.json"
        cmd = ["prune", str(src), "-o", str(out), "--method", "taylor", "--target-flops", "0.5", "--data",
               "fashion-mnist", "--finetune-epochs", "1", "--report", str(report), "--seed", str(args.seed)]
        if args.a_images:  # scaled down (the protocol uses all training images)
            cmd += ["--finetune-images", str(args.a_images)]
        proc = _run(CLI + cmd, log)
        record: dict[str, Any] = {"part": "a", "form": form, "settings": _settings(args), "command": "onnxprune " + " ".join(cmd),
                                  "finetune_images": args.a_images or "all",
                                  "exit": proc.returncode, "unpruned_test_top1": _eval(src, tmp, log)}
        if proc.returncode == 0:
            rep = json.loads(report.read_text())
            record.update(pruned_test_top1=_eval(out, tmp, log), macs=[rep["macs"], rep["after"]["macs"]],
                          finetune=rep.get("finetune"), seconds=rep.get("seconds"))
            record["delta_vs_unpruned_points"] = round(100 * (record["pruned_test_top1"] - record["unpruned_test_top1"]), 2)
        record["log"] = log
        _write(f"a_{form}", record)
    a = {f: json.loads((OUT / f"a_{f}.json").read_text()) for f in ("folded", "bn")}
    if all(a[f].get("pruned_test_top1") is not None for f in a):
        gap = 100 * (a["folded"]["pruned_test_top1"] - a["bn"]["pruned_test_top1"])
        _write("a_summary", {"part": "a", "finetune_images": args.a_images or "all",
                             "folded_minus_bn_points": round(gap, 2),
                             "folded_minus_unpruned_points": a["folded"]["delta_vs_unpruned_points"],
                             "target_points": 0.5,
                             "met": bool(abs(gap) <= 0.5 and a["folded"]["delta_vs_unpruned_points"] >= -0.5)})


def part_b(args: argparse.Namespace, tmp: Path) -> None:
    log: list[dict[str, Any]] = []
    src = args.model_dir / f"{args.stem}_folded.onnx"
    out = tmp / "b_folded_tuned.onnx"
    cmd = ["finetune", str(src), "--teacher", str(src), "--data", "fashion-mnist", "--epochs", "1",
           "--images", str(args.b_images), "-o", str(out), "--seed", str(args.seed)]
    proc = _run(CLI + cmd, log)
    before = _eval(src, tmp, log)
    after = _eval(out, tmp, log) if proc.returncode == 0 else None
    record = {"part": "b", "settings": _settings(args), "command": "onnxprune " + " ".join(cmd), "exit": proc.returncode,
              "unpruned_test_top1": before, "finetuned_test_top1": after,
              "delta_points": None if after is None or before is None else round(100 * (after - before), 2),
              "target_points": -0.3, "log": log}
    record["met"] = record["delta_points"] is not None and record["delta_points"] >= -0.3
    _write("b_finetune_unpruned", record)


def part_lr(args: argparse.Namespace, tmp: Path) -> None:
    import numpy as np
    import onnx
    import torch

    from onnxprune.api import PruneConfig, prune
    from onnxprune.data import load_dataset
    from onnxprune.errors import FinetuneDivergedError
    from onnxprune.torchcopy import FinetuneConfig, finetune, to_torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))
    rows = []
    for form in ("folded", "bn"):
        src = args.model_dir / f"{args.stem}_{form}.onnx"
        t0 = time.perf_counter()
        pruned = prune(str(src), PruneConfig(method="taylor", target_flops=0.5, data="fashion-mnist", seed=args.seed))
        splits = load_dataset("fashion-mnist", input_shape=(1, 1, 28, 28), seed=args.seed)
        teacher = to_torch(onnx.load(str(src)))
        print(f"{form}: pruned in {time.perf_counter() - t0:.0f}s", flush=True)
        for reinsert in ((True, False) if form == "folded" else (True,)):
            for lr in (args.lrs if reinsert else args.plain_lrs):
                t0 = time.perf_counter()
                cfg = FinetuneConfig(epochs=1, lr=lr, max_train=args.lr_images, seed=args.seed, progress=False,
                                     reinsert_bn=reinsert, max_restarts=0 if not reinsert else 3)
                row: dict[str, Any] = {"form": form, "reinsert_bn": reinsert, "lr": lr}
                try:
                    res = finetune(pruned.model, teacher, splits, cfg)
                    row.update(initial_val_top1=res.initial_val_top1, val_top1=res.val_top1_history[-1],
                               train_loss=res.train_loss_history[-1], restarts=res.restarts,
                               final_lr=res.lr)
                except FinetuneDivergedError as exc:
                    row.update(diverged=str(exc))
                row["seconds"] = round(time.perf_counter() - t0, 1)
                print(row, flush=True)
                rows.append(row)
    _write("lr_sweep", {"part": "lr", "settings": _settings(args), "images": args.lr_images, "epochs": 1,
                        "pruning": "taylor, --target-flops 0.5, BatchNorm re-estimated (as prune does)",
                        "note": "reinsert_bn False: the fine-tune without re-inserted BatchNorm and no restarts "
                                "(the behaviour before issue 12)", "rows": rows,
                        "val_images": int(np.asarray(splits.val[1]).size)})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.folded_bn", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=Path("/work/assets/resnet20"))
    p.add_argument("--stem", default="resnet20")
    p.add_argument("--part", action="append", choices=["a", "b", "lr"], default=[])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--a-images", type=int, default=None,
                   help="part a: training images for the fine-tune epoch (default: all, the issue's protocol)")
    p.add_argument("--b-images", type=int, default=2000)
    p.add_argument("--lr-images", type=int, default=5000)
    p.add_argument("--lrs", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1])
    p.add_argument("--plain-lrs", type=float, nargs="+", default=[0.01, 0.001],
                   help="learning rates of the folded model fine-tuned without re-inserted BatchNorm")
    args = p.parse_args(argv)
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"folded_bn_{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    for part in args.part or ["a", "b"]:
        {"a": part_a, "b": part_b, "lr": part_lr}[part](args, tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
