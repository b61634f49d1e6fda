"""PNG plot of a search trajectory: reward per record, infeasible and feasible phases apart,
and the best feasible validation accuracy so far."""

from __future__ import annotations

import io
import os
from typing import Any, Mapping

from onnxprune.fileio import atomic_write


def plot_trajectory(data: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """`data` is `Trajectory.to_json()`; records may carry `reward`, `feasible`, `val_top1`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(data.get("records", []))
    fig, (ax_r, ax_a) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    xs_f = [i for i, r in enumerate(records) if r.get("feasible") and "reward" in r]
    xs_i = [i for i, r in enumerate(records) if not r.get("feasible") and "reward" in r]
    ax_r.scatter(xs_i, [records[i]["reward"] for i in xs_i], s=8, c="tab:red", label="over budget (gat-ppo: penalty)")
    ax_r.scatter(xs_f, [records[i]["reward"] for i in xs_f], s=8, c="tab:green",
                 label="feasible: reward")
    ax_r.set_ylabel("reward")
    ax_r.legend(loc="lower right", fontsize=8)
    ax_r.set_title(f"{data.get('method', 'search')}: budget {data.get('meta', {}).get('budget', {})}", fontsize=9)
    best, xs, ys = None, [], []
    for i, r in enumerate(records):
        acc = r.get("val_top1")
        if r.get("feasible") and acc is not None:
            best = acc if best is None else max(best, acc)
        if best is not None:
            xs.append(i)
            ys.append(best)
    ax_a.plot(xs, ys, c="tab:blue", label="best feasible val top-1")
    accs = [(i, r["val_top1"]) for i, r in enumerate(records) if r.get("feasible") and r.get("val_top1") is not None]
    if accs:
        ax_a.scatter(*zip(*accs), s=6, c="tab:gray", alpha=0.6, label="feasible candidates")
    ax_a.set_xlabel("record (episode / stage / candidate)")
    ax_a.set_ylabel("val top-1 (subset)")
    ax_a.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
