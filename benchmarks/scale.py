"""Scale benchmark: real-size models fed from an image folder, and candidate evaluation backends.

    python -m benchmarks.scale --part memory         # -> benchmarks/results/scale_memory.json
    python -m benchmarks.scale --part memory --models resnet50 --finetune-images 128 --out /tmp/m.json
    python -m benchmarks.scale --part evaluators     # -> benchmarks/results/scale_evaluators.json

(a) `memory`: peak resident memory and time of `onnxprune prune --method taylor` plus one
    fine-tune epoch (`--finetune-epochs 1 --finetune-images N`) on torchvision MobileNetV2 and
    ResNet-50 exports (random weights, BatchNorm calibrated; `tests/zoo.py`) at 224x224, fed from
    `folder:DIR` holding at least 10,000 generated JPEGs (made once, outside the repository), with
    the tool's defaults otherwise (`--data-workers` unset: no decoding processes on the CPU).
    The command runs as a child process; its memory is sampled every 0.1 s from /proc: the
    largest sum of RSS over the process tree (the main process and its decoding workers, shared
    pages counted once per process), the largest sum of PSS (shared pages split), and the main
    process' own peak (VmHWM).
(b) `evaluators`: candidate evaluations per minute on ResNet-20 (`benchmarks/models/
    resnet20_folded.onnx`, Fashion-MNIST) with the local evaluator (1 and 2 processes) and Ray
    (2 actors on a local Ray instance), the same fresh masks for each, startup timed apart.
    Timing-sensitive: run it on an otherwise idle machine.

Targets (issue 15): ResNet-50 < 3 GiB and MobileNetV2 < 2 GiB peak RSS on CPU; Ray with 2 workers
>= 1.6x the evaluations per minute of 1 local process. Numbers from a shared 2-core machine are
marked as measured under load (the load average is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_FOLDER = Path("/work/assets/scale_folder")
DEFAULT_R20 = Path(__file__).resolve().parent / "models" / "resnet20_folded.onnx"
GIB = 1 << 30


# ------------------------------------------------------------------------------- the image folder


def make_folder(root: Path, images: int, classes: int = 10, seed: int = 0) -> dict[str, Any]:
    """`images` JPEGs of 160-320 px in `classes` sub-folders (made once; kept when complete)."""
    from PIL import Image, ImageDraw

    stamp = root / ".complete.json"
    if stamp.exists():
        info = json.loads(stamp.read_text())
        if info.get("images", 0) >= images:
            return info
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    per_class = -(-images // classes)
    palette = rng.integers(30, 226, size=(classes, 3))
    for c in range(classes):
        d = root / f"class{c:02d}"
        d.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            w, h = (int(v) for v in rng.integers(160, 321, size=2))
            base = tuple(int(v) for v in np.clip(palette[c] + rng.integers(-25, 26, size=3), 0, 255))
            img = Image.new("RGB", (w, h), base)
            draw = ImageDraw.Draw(img)
            for _ in range(4):
                x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
                x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
                fill = tuple(int(v) for v in rng.integers(0, 256, size=3))
                (draw.ellipse if (j + _) % 2 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
            img.save(d / f"{j:05d}.jpg", quality=85)
    files = sum(1 for _ in root.rglob("*.jpg"))
    info = {"images": files, "classes": classes, "sizes": "160-320 px each side, JPEG q85",
            "bytes": sum(p.stat().st_size for p in root.rglob("*.jpg")),
            "seconds_to_make": round(time.perf_counter() - t0, 1)}
    stamp.write_text(json.dumps(info))
    return info


# -------------------------------------------------------------------------------- memory sampling


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _kib(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    """Peaks of the process tree's memory (RSS sum, PSS sum) and the root's VmHWM, in bytes."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak_rss_tree = self.peak_pss_tree = self.peak_hwm_root = 0
        self.max_processes = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            pids = _descendants(self.pid)
            rss = sum(_kib(f"/proc/{p}/status", "VmRSS:") for p in pids) * 1024
            pss = sum(_kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids) * 1024
            hwm = _kib(f"/proc/{self.pid}/status", "VmHWM:") * 1024
            self.peak_rss_tree = max(self.peak_rss_tree, rss)
            self.peak_pss_tree = max(self.peak_pss_tree, pss)
            self.peak_hwm_root = max(self.peak_hwm_root, hwm)
            self.max_processes = max(self.max_processes, len(pids))
            time.sleep(self.every)


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# ------------------------------------------------------------------------------------ part (a)


def memory_run(name: str, folder: Path, finetune_images: int, calib_images: int, eval_images: int,
               data_workers: int | None, timeout: float) -> dict[str, Any]:
    """`onnxprune prune --method taylor --finetune-epochs 1` on a zoo export, memory sampled."""
    from benchmarks.common import cached_export
    from onnxprune.deps import analyze
    from onnxprune.torchcopy.device import activation_bytes, fit_batch_size, largest_activation_bytes

    src = cached_export(name, "torchscript")
    analysis = analyze(str(src))
    batches = {"taylor_and_finetune": fit_batch_size(analysis, 64, training=True),
               "inference": fit_batch_size(analysis, 512, training=False),
               "bn_reestimation": fit_batch_size(analysis, 128, training=False)}
    with tempfile.TemporaryDirectory() as tmp:
        out, report = Path(tmp) / "p.onnx", Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "onnxprune.cli", "prune", str(src), "-o", str(out), "--method", "taylor",
               "--target-flops", "0.5", "--data", f"folder:{folder}", "--finetune-epochs", "1",
               "--finetune-images", str(finetune_images), "--calib-images", str(calib_images),
               "--eval-images", str(eval_images), "--device", "cpu", "--report", str(report)]
        if data_workers is not None:
            cmd += ["--data-workers", str(data_workers)]
        load_before = _load()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sampler = Sampler(proc.pid)
        sampler.start()
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        sampler.done.set()
        sampler.join()
        seconds = time.perf_counter() - t0
        rec: dict[str, Any] = {
            "model": name, "onnx": src.name, "input": "1x3x224x224", "macs": analysis.macs, "params": analysis.params,
            "command": " ".join(["onnxprune"] + cmd[3:]).replace(str(src), src.name).replace(tmp, "TMP"),
            "exit_code": proc.returncode, "seconds": round(seconds, 1),
            "peak_rss_tree_gib": round(sampler.peak_rss_tree / GIB, 3),
            "peak_pss_tree_gib": round(sampler.peak_pss_tree / GIB, 3),
            "peak_rss_main_gib": round(sampler.peak_hwm_root / GIB, 3),
            "max_processes": sampler.max_processes,
            "caps": {"calib_images": calib_images, "finetune_images": finetune_images, "eval_images": eval_images,
                     "data_workers": "default (0 on the CPU)" if data_workers is None else data_workers},
            "activation_mib_per_image": round(activation_bytes(analysis) / (1 << 20), 1),
            "largest_activation_mib_per_image": round(largest_activation_bytes(analysis) / (1 << 20), 2),
            "batch_sizes": batches, "load_average_before": load_before, "load_average_after": _load(),
        }
        if report.exists():
            rep = json.loads(report.read_text())
            rec["stage_seconds"] = rep.get("seconds")
            rec["after_macs_fraction"] = round(rep["after"]["macs"] / rep["macs"], 4) if "after" in rep else None
            if "finetune" in rep:
                rec["finetune"] = rep["finetune"]
        if proc.returncode != 0:
            rec["output_tail"] = output[-2000:]
    return rec


# ------------------------------------------------------------------------------------ part (b)


def _random_masks(analysis: Any, count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        keep = analysis.full_keep()
        for g in analysis.prunable():
            local = rng.random(g.units) < rng.uniform(0.4, 0.9)
            local[rng.integers(g.units)] = True
            keep[g.unit_slice] = local
        out.append(keep)
    return out


def evaluator_runs(model: Path, masks: int, images: int, seed: int = 0) -> list[dict[str, Any]]:
    """Evaluations per minute of each backend on the same fresh masks (after 2 warm-up masks)."""
    import torch

    from onnxprune.data import load_dataset
    from onnxprune.deps import analyze
    from onnxprune.search import EvalConfig, make_evaluator
    from onnxprune.torchcopy import to_torch

    torch.set_num_threads(1)
    analysis = analyze(str(model))
    splits = load_dataset("fashion-mnist", input_shape=analysis.graph.shapes[analysis.graph.inputs[0].name], seed=seed)
    keeps = _random_masks(analysis, masks + 2, seed)
    runs = []
    for backend, workers in (("local", 1), ("local", 2), ("ray", 2)):
        cfg = EvalConfig(images=images, workers=workers, backend=backend, seed=seed)
        load_before = _load()
        t0 = time.perf_counter()
        ev = make_evaluator(analysis, to_torch(analysis, check=False), splits, cfg)
        try:
            ev.evaluate(keeps[:2])  # warm-up: pool / actors running, caches filled
            startup = time.perf_counter() - t0
            t1 = time.perf_counter()
            scores = ev.evaluate(keeps[2:])
            seconds = time.perf_counter() - t1
        finally:
            ev.close()
        runs.append({"backend": backend, "workers": workers, "masks": masks, "images_per_evaluation": images,
                     "seconds": round(seconds, 2), "evaluations_per_minute": round(60 * masks / seconds, 2),
                     "startup_seconds": round(startup, 2), "mean_top1": round(float(np.mean(scores)), 4),
                     "scores_sha": _digest(scores), "load_average_before": load_before, "load_average_after": _load()})
        print(json.dumps(runs[-1]), flush=True)
    base = runs[0]["evaluations_per_minute"]
    for r in runs:
        r["speedup_vs_local_1"] = round(r["evaluations_per_minute"] / base, 3)
    return runs


def _digest(scores: list[float]) -> str:
    import hashlib

    return hashlib.sha256(np.asarray(scores, dtype=np.float64).tobytes()).hexdigest()[:16]


# --------------------------------------------------------------------------------------- main


def _write(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path}", flush=True)


def _header(note: str) -> dict[str, Any]:
    return {"benchmark": "scale", "python": sys.version.split()[0], "cpus": os.cpu_count(), "note": note,
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["memory", "evaluators"], required=True)
    p.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help="image folder (made when missing)")
    p.add_argument("--folder-images", type=int, default=10000)
    p.add_argument("--models", default="mobilenet_v2,resnet50")
    p.add_argument("--finetune-images", default="2000", help="one value, or NAME=N,NAME=N per model")
    p.add_argument("--calib-images", type=int, default=512)
    p.add_argument("--eval-images", type=int, default=1000)
    p.add_argument("--data-workers", type=int, default=None, help="decoding processes (default: the tool's)")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--r20", type=Path, default=DEFAULT_R20, help="ResNet-20 ONNX")
    p.add_argument("--masks", type=int, default=24)
    p.add_argument("--images", type=int, default=1000, help="validation images per candidate evaluation")
    p.add_argument("--note", default="2-core machine shared with other engineers' tests and a training job: "
                                      "measured under load (load averages recorded per run)")
    p.add_argument("--out", type=Path, default=None,
                   help="results file (default benchmarks/results/scale_memory.json or scale_evaluators.json)")
    args = p.parse_args(argv)
    out = args.out or RESULTS / f"scale_{args.part}.json"

    result = _header(args.note)
    if args.part == "memory":
        result["folder"] = {"path": str(args.folder), **make_folder(args.folder, args.folder_images)}
        caps = {}
        for item in args.finetune_images.split(","):
            name, _, value = item.rpartition("=")
            caps[name or "*"] = int(value)
        result["targets_peak_rss_gib"] = {"resnet50": 3.0, "mobilenet_v2": 2.0}
        result["memory"] = []
        for name in args.models.split(","):
            rec = memory_run(name, args.folder, caps.get(name, caps.get("*", 2000)), args.calib_images,
                             args.eval_images, args.data_workers, args.timeout)
            target = result["targets_peak_rss_gib"].get(name)
            if target is not None:
                rec["target_met"] = rec["exit_code"] == 0 and rec["peak_rss_tree_gib"] < target
            print(json.dumps(rec), flush=True)
            result["memory"].append(rec)
            _write(out, result)  # after every model: a run cut short keeps what finished
    else:
        runs = evaluator_runs(args.r20, args.masks, args.images)
        result["evaluators"] = {"model": args.r20.name, "data": "fashion-mnist", "runs": runs,
                                "target": "ray 2 workers >= 1.6x local 1 process",
                                "target_met": next(r["speedup_vs_local_1"] for r in runs if r["backend"] == "ray") >= 1.6}
        _write(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
