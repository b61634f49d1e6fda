"""Compare two output folders of scripts/equivalence/run.sh: pruned models byte for byte, reports
and search trajectories without timings (and without the verification record, which the
refactoring may measure on other weights)."""
import json, sys, pathlib
a, b = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
def strip(d):
    if isinstance(d, dict):
        return {k: strip(v) for k, v in d.items() if k not in ("seconds", "eval_seconds", "post_train_seconds", "trained_eval_seconds", "wall_s", "model", "latency", "verify", "write_back_max_abs_diff", "verify_max_abs_diff")}
    if isinstance(d, list):
        return [strip(x) for x in d]
    return d
for f in sorted(a.glob("*.onnx")):
    g = b / f.name
    if not g.exists():
        print(f.stem, "missing in", b); continue
    same_model = f.read_bytes() == g.read_bytes()
    ja, jb = json.loads((a / (f.stem + ".json")).read_text()), json.loads((b / (f.stem + ".json")).read_text())
    same_report = strip(ja) == strip(jb)
    line = f"{f.stem:12s} model {'SAME' if same_model else 'DIFF'}  report {'SAME' if same_report else 'DIFF'}"
    if not same_report:
        ka, kb = strip(ja), strip(jb)
        diffs = [k for k in set(ka) | set(kb) if ka.get(k) != kb.get(k)]
        line += f"  keys {diffs}"
        if "search" in diffs:
            sa, sb = ka.get("search", {}), kb.get("search", {})
            line += f" search-keys {[k for k in set(sa) | set(sb) if sa.get(k) != sb.get(k)]}"
    print(line)
for t in ("sacp_t.json", "rl_t.json", "gat_t.json"):
    if (a / t).exists() and (b / t).exists():
        ra, rb = strip(json.loads((a / t).read_text())), strip(json.loads((b / t).read_text()))
        print(t, "records", "SAME" if ra["records"] == rb["records"] else "DIFF")
