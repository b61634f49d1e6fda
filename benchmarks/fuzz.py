"""The full mutation fuzz of `onnxprune prune`, counts written to benchmarks/results/fuzz.json.

    python -m benchmarks.fuzz [--mutants 320] [--seed 1] [--out benchmarks/results/fuzz.json]

The same mutants and checks as `pytest -m fuzz tests/test_fuzz.py` (tests/fuzzkit.py): every
mutant must end in exit 0 with an output onnxruntime runs, or exit 2 with one line on stderr.
Exits 1 when any mutant breaks that contract (the failures are listed in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from tests import fuzzkit


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mutants", type=int, default=320)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=int, default=60, help="seconds per mutant before it counts as a hang")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/fuzz.json"))
    p.add_argument("--note", default="", help="conditions of the run (e.g. other jobs on the machine)")
    args = p.parse_args(argv)
    start = time.perf_counter()
    done = 0

    def progress(o: fuzzkit.Outcome) -> None:
        nonlocal done
        done += 1
        if done % 20 == 0 or o.problems():
            print(f"{done}/{args.mutants} {o.mutant.base}/{o.mutant.mutation}: exit {o.rc} {o.problems() or ''}",
                  file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="onnxprune-fuzz-") as tmp:
        outcomes = fuzzkit.run_fuzz(args.seed, args.mutants, Path(tmp), args.timeout, progress)
    data = {
        "command": "python -m benchmarks.fuzz " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {"mutants": args.mutants, "seed": args.seed, "timeout_s": args.timeout,
                     "cli": "onnxprune prune MUTANT -o out.onnx --sparsity 0.3 --report r.json "
                            "[--no-verify on every other mutant]",
                     "operators": list(fuzzkit.MUTATIONS), "models": list(fuzzkit.base_models())},
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "omp_threads": os.environ.get("OMP_NUM_THREADS")},
        "note": args.note,
        "wall_seconds": round(time.perf_counter() - start, 1),
        **fuzzkit.summary(outcomes),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps({k: data[k] for k in ("mutants", "exit", "outputs_run", "wall_seconds")}))
    print(f"{len(data['failures'])} contract failures; wrote {args.out}")
    return 1 if data["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
