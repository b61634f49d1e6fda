"""Where a prune run's resident memory peaks: `api.prune` in this process, its RSS sampled every
20 ms, attributed to the API's progress stage and to the torch-side functions it is in.

    PYTHONPATH=. python -m benchmarks.memory_profile MODEL FINETUNE_IMAGES CALIB_IMAGES EVAL_IMAGES

MODEL is a zoo export name (`tests/zoo.py`, TorchScript, cached), fed from the scale benchmark's
image folder (`benchmarks/scale.py`); `--method taylor --target-flops 0.5 --finetune-epochs 1
--device cpu`. Prints one line per wrapped call (seconds, RSS before/after) and, at the end, the
peak RSS (GiB) per stage/function path. A diagnosis tool (small image counts suffice: every
stage reaches its largest batch at once); `benchmarks.scale --part memory` is the measurement.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
import threading
import time
from typing import Any, Callable

GIB = 1 << 30


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Sampler(threading.Thread):
    """Peak RSS per stack path ("stage/function/..."), sampled every `every` seconds."""

    def __init__(self, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.every, self.peak, self.stack, self.peaks = every, 0, ["start"], {}  # type: ignore[var-annotated]
        self.t0 = time.time()

    def run(self) -> None:
        while True:
            r = rss()
            self.peak = max(self.peak, r)
            key = "/".join(self.stack)
            self.peaks[key] = max(self.peaks.get(key, 0), r)
            time.sleep(self.every)


def wrap(sampler: Sampler, modname: str, fname: str, also: tuple[str, ...] = ()) -> None:
    """Replace `modname.fname` (and the same name imported into the modules `also`) by a wrapper
    that pushes its name on the sampler's stack and prints its time and RSS."""
    mod = importlib.import_module(modname)
    f: Callable[..., Any] = getattr(mod, fname)

    @functools.wraps(f)
    def g(*a: Any, **k: Any) -> Any:
        sampler.stack.append(fname)
        t, r0 = time.time(), rss()
        try:
            return f(*a, **k)
        finally:
            print(f"  [{'/'.join(sampler.stack)}] {time.time() - t:.1f}s rss before {r0 / GIB:.2f} "
                  f"after {rss() / GIB:.2f} GiB", flush=True)
            sampler.stack.pop()

    for name in (modname, *also):
        setattr(importlib.import_module(name), fname, g)


def main(argv: list[str]) -> int:
    model, finetune_images, calib_images, eval_images = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    sampler = Sampler()
    sampler.start()
    from onnxprune import api

    ft, bn, tc = "onnxprune.torchcopy.finetune", "onnxprune.torchcopy.batchnorm", "onnxprune.torchcopy"
    wrap(sampler, "onnxprune.torchcopy.taylor", "taylor_scores")
    wrap(sampler, bn, "layer_statistics", (ft,))
    wrap(sampler, bn, "reestimate", (ft,))
    wrap(sampler, "onnxprune.torchcopy.masked", "batched_logits", (ft,))
    wrap(sampler, ft, "verify_write_back")
    wrap(sampler, ft, "write_back")
    wrap(sampler, "onnxprune.torchcopy.convert", "to_torch", (ft, tc))
    wrap(sampler, ft, "finetune", (tc,))
    wrap(sampler, ft, "recalibrate_batchnorm", (tc,))
    wrap(sampler, "onnxprune.api", "rewrite_and_verify")
    wrap(sampler, "onnxprune.api", "analyze_simplified")
    from benchmarks.scale import DEFAULT_FOLDER
    from tests.zoo import onnx_path

    cfg = api.PruneConfig(method="taylor", target_flops=0.5, data=f"folder:{DEFAULT_FOLDER}", finetune_epochs=1,
                          finetune_images=finetune_images, calib_images=calib_images, eval_images=eval_images,
                          device="cpu")

    def say(msg: str) -> None:
        sampler.stack[:] = [msg]
        print(f"{time.time() - sampler.t0:6.1f}s {msg}  rss {rss() / GIB:.2f}", flush=True)

    result = api.prune(str(onnx_path(model, "torchscript")), cfg, say)
    say("done")
    print(json.dumps({k: round(v / GIB, 3) for k, v in sampler.peaks.items()}, indent=0))
    print(f"PEAK {sampler.peak / GIB:.3f} GiB; seconds {json.dumps({k: round(v, 1) for k, v in result.seconds.items()})}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
