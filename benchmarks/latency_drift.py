"""How much the quiet `--latency-only` timings of the same files moved between two passes, read
from the run records as git stored them after each pass; writes `results/latency_drift.json`
(or `--out`).

    python -m benchmarks.latency_drift 9fd8886 bf7b5f9    # session 3's and session 4's passes
    python -m benchmarks.latency_drift 2d464b8 ba423df --out benchmarks/results/latency_drift__s6_s7.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.run import RESULTS, ROOT


def quiet_timings(commit: str) -> dict[str, dict[str, Any]]:
    """Run name -> its `latency_quiet` record at `commit` (with the run's start time, so a run redone
    between the passes, another pruned model, is not compared)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout

    out = {}
    for name in git("ls-tree", "--name-only", commit, "benchmarks/results/runs/").split():
        rec = json.loads(git("show", f"{commit}:{name}"))
        if rec.get("latency_quiet"):
            out[Path(name).stem] = {**rec["latency_quiet"], "run_started": rec.get("started")}
    return out


def drift(first: str, second: str, out: str | None = None) -> dict[str, Any]:
    a, b = quiet_timings(first), quiet_timings(second)
    names = sorted(k for k in a if k in b and a[k]["pass"] != b[k]["pass"]
                   and a[k]["run_started"] == b[k]["run_started"])
    col: dict[str, Any] = {}
    for key in (k for c in ("b1", "b32", "b1_t1") for k in (f"original_{c}_ms", f"pruned_{c}_ms", f"speedup_{c}")):
        if not names or any(key not in a[n] or key not in b[n] for n in names):
            continue  # one-thread timings: only in passes since session 5
        r = np.array([b[n][key] / a[n][key] for n in names])
        col[key] = {"median_ratio": round(float(np.median(r)), 3), "min_ratio": round(float(r.min()), 3),
                    "max_ratio": round(float(r.max()), 3),
                    "within_10pct": round(float(np.mean(np.abs(r - 1) <= 0.1)), 3)}
    return {"passes": [first, second], "pass_started": [a[names[0]]["pass"], b[names[0]]["pass"]] if names else [],
            "models": len(names), "second_over_first": col,
            "command": f"python -m benchmarks.latency_drift {first} {second}" + (f" --out {out}" if out else "")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("--out", default=None, help="result file (default: benchmarks/results/latency_drift.json, "
                                                 "which BENCHMARKS.md cites)")
    args = ap.parse_args()
    res = drift(args.first, args.second, args.out)
    (Path(args.out) if args.out else RESULTS / "latency_drift.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
