"""Relabel the stored gat-ppo runs made before gat-ppo's session-11 defaults as `gat-ppo-v1`.

    python -m benchmarks.relabel            # show what would move
    python -m benchmarks.relabel --apply    # move it

Session 11 changed two gat-ppo defaults (the ordinal head, entropy 0.2 instead of the categorical
head and 0.01; docs/gat-ppo.md, "The planted problem"). A run stored as `gat-ppo` before that
measured what the variant `gat-ppo-v1` (`benchmarks/run.py::VARIANTS`: those two options set
back) measures now, so its record moves to that method's key: `method` becomes `gat-ppo-v1`,
`relabelled` says from what and why, and every other field is kept as the run wrote it (its
pruned model in this machine's cache and its search trajectory are renamed with it, `trajectory`
pointing to the new name). Such a run is recognised by its search summary, which has no `head`
(every run since records it); a failed run has no summary and stays (none was stored when this
ran). The `gat-ppo` cells then show as missing until re-run with the new defaults.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.run import GAT_PPO_V1, MODEL_OUT, REFERENCE, ROOT, RUNS, run_key

WHY = ("run with gat-ppo's defaults before session 11 (categorical head, entropy 0.01), which gat-ppo-v1 "
       "sets explicitly; relabelled by `python -m benchmarks.relabel --apply`")


def made_before_the_ordinal_head(rec: dict[str, Any]) -> bool:
    """Whether a stored gat-ppo run used the old defaults (its summary has no `head`)."""
    summary = rec.get("search_summary")
    return rec.get("method") == REFERENCE and summary is not None and "head" not in summary


def relabel(folder: Path = RUNS, apply: bool = False) -> list[tuple[Path, Path]]:
    """(old path, new path) of every run to relabel; moved when `apply`. Refuses to overwrite."""
    moves = []
    for path in sorted(folder.glob(f"*__{REFERENCE}__*.json")):
        rec = json.loads(path.read_text())
        if not made_before_the_ordinal_head(rec):
            continue
        key = run_key(rec["model"], rec.get("form", "bn"), GAT_PPO_V1, rec["target"], rec["seed"],
                      rec.get("mode", "protocol"))
        new = folder / f"{key}.json"
        if new.exists():
            raise SystemExit(f"benchmarks.relabel: {new.name} exists already; {path.name} left as it is")
        moves.append((path, new))
        if apply:
            rec["method"] = GAT_PPO_V1
            rec["relabelled"] = {"from": REFERENCE, "file": path.name, "why": WHY}
            trajectory = ROOT / str(rec.get("trajectory", ""))
            if rec.get("trajectory") and trajectory.exists():  # a new gat-ppo run would overwrite it
                rec["trajectory"] = str(Path(rec["trajectory"]).with_name(f"{key}.json"))
                trajectory.rename(ROOT / rec["trajectory"])
            new.write_text(json.dumps(rec, indent=1, default=str) + "\n")
            path.unlink()
            for suffix in ("", "__noft"):  # its pruned model in this machine's cache, if there
                model = MODEL_OUT / f"{path.stem}{suffix}.onnx"
                if model.exists():
                    model.rename(MODEL_OUT / f"{key}{suffix}.onnx")
    return moves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--apply", action="store_true", help="move the records (default: only list them)")
    args = ap.parse_args()
    moves = relabel(apply=args.apply)
    for old, new in moves:
        print(f"{old.name} -> {new.name}")
    print(f"{len(moves)} run(s) {'relabelled' if args.apply else 'to relabel (--apply moves them)'}")


if __name__ == "__main__":
    main()
