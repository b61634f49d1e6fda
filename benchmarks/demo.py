"""The demo as a user runs it: wall time of `onnxprune demo` (a fresh process, imports included)
and the accuracy it shows, for one or more fine-tuning budgets.

    /work/wt/cpuq python -m benchmarks.demo [--finetune-images 8000 16000] [--finetune-epochs 1]
        [--data fashion-mnist] [--note TEXT] [--json benchmarks/results/demo.json]

Each setting runs `python -m onnxprune demo --no-install --json TMP [settings]` in a fresh
process with `OMP_NUM_THREADS` left as given (the demo is judged on 2 cores) and a fresh output
folder; the wall time covers the whole command. Writes the demo's own JSON (test top-1 before
and after on the 10,000 held-out images, MACs, params, latency, fine-tune summary) per setting.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from onnxprune.schema import machine, stamped

RESULTS = Path(__file__).resolve().parent / "results"


def run_once(extra: list[str], tmp: Path) -> dict[str, object]:
    out = tmp / "demo.json"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp / "cache"), "COLUMNS": "120"}
    cmd = [sys.executable, "-m", "onnxprune", "demo", "--no-install", "--json", str(out), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    row: dict[str, object] = {"argv": ["onnxprune", *cmd[3:]], "returncode": proc.returncode,
                              "wall_seconds": round(wall, 1), "stdout": proc.stdout.splitlines()[-40:]}
    if proc.returncode != 0:
        row["stderr"] = proc.stderr.splitlines()[-10:]
        return row
    row["demo"] = json.loads(out.read_text())
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--finetune-images", nargs="+", type=int, default=[None],
                    help="fine-tuning budgets to compare (default: the demo's own default)")
    ap.add_argument("--finetune-epochs", type=int, default=None)
    ap.add_argument("--data", choices=["fashion-mnist", "digits"], default=None)
    ap.add_argument("--note", default="", help="what else ran on the machine (recorded)")
    ap.add_argument("--json", type=Path, default=RESULTS / "demo.json")
    args = ap.parse_args(argv)
    rows = []
    for images in args.finetune_images:
        extra: list[str] = []
        if images is not None:
            extra += ["--finetune-images", str(images)]
        if args.finetune_epochs is not None:
            extra += ["--finetune-epochs", str(args.finetune_epochs)]
        if args.data is not None:
            extra += ["--data", args.data]
        with tempfile.TemporaryDirectory() as tmp:
            row = run_once(extra, Path(tmp))
        rows.append(row)
        demo = row.get("demo", {})
        print(json.dumps({"argv": row["argv"], "rc": row["returncode"], "wall_seconds": row["wall_seconds"],
                          "top1": demo.get("top1") if isinstance(demo, dict) else None}), flush=True)
    doc = stamped({"command": "python -m benchmarks.demo " + " ".join(argv if argv is not None else sys.argv[1:]),
                   "protocol": {"process": "python -m onnxprune demo --no-install --json (fresh process per row)",
                                "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
                                "wall_seconds": "the whole command, imports included"},
                   "machine": machine(), "note": args.note, "rows": rows})
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0 if all(r["returncode"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
