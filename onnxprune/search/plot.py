"""PNG plot of a search trajectory: reward per record, infeasible and feasible phases apart,
and the best feasible validation accuracy so far; for trajectories with one record per
candidate (`update`, `proxy`: gat-ppo), the proxy of every candidate, the learning curve (mean
proxy per update) and the best so far."""

from __future__ import annotations

import io
import os
from typing import Any, Mapping

from onnxprune import plotstyle
from onnxprune.fileio import atomic_write


def plot_trajectory(data: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """`data` is `Trajectory.to_json()`; records may carry `reward`, `feasible`, `val_top1`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(data.get("records", []))
    if records and all("update" in r and "proxy" in r for r in records):
        _plot_learning_curve(data, records, path)
        return
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
    plotstyle.caption(fig, _caption(data))
    _save_png(fig, path)


def _plot_learning_curve(data: Mapping[str, Any], records: list[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 1, figsize=(8, 4.5))
    scored = [(i, r["proxy"]) for i, r in enumerate(records) if r.get("proxy") is not None]
    if scored:
        ax.scatter(*zip(*scored), s=6, c="tab:gray", alpha=0.5, label="candidate proxy")
    by_update: dict[int, list[tuple[int, float]]] = {}
    for i, r in scored:
        by_update.setdefault(int(records[i]["update"]), []).append((i, r))
    xs = [max(i for i, _ in pts) for _, pts in sorted(by_update.items())]
    ys = [sum(v for _, v in pts) / len(pts) for _, pts in sorted(by_update.items())]
    ax.plot(xs, ys, c="tab:green", marker="o", ms=3, label="mean proxy per update (learning curve)")
    best, bx, by = None, [], []
    for i, v in scored:
        best = v if best is None else max(best, v)
        bx.append(i)
        by.append(best)
    ax.plot(bx, by, c="tab:blue", label="best so far")
    meta = data.get("meta", {})
    ax.set_title(f"{data.get('method', 'search')} ({meta.get('learner', '')}): budget {meta.get('budget', {})}",
                 fontsize=9)
    ax.set_xlabel("candidate (episode)")
    ax.set_ylabel("proxy (val top-1, subset)")
    ax.legend(loc="lower right", fontsize=8)
    plotstyle.caption(fig, _caption(data))
    _save_png(fig, path)


def _save_png(fig: Any, path: str | os.PathLike[str]) -> None:
    """Write `fig` as a PNG atomically and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def _caption(data: Mapping[str, Any]) -> str:
    """The protocol of a trajectory: model, method, budget, seed, options."""
    meta = data.get("meta", {})
    budget = meta.get("budget", {})
    opts = ", ".join(f"{k}={v}" for k, v in sorted(meta.get("options", {}).items())) or "defaults"
    return (f"{data.get('method', 'search')} on {meta.get('model', '?')}; budget: {budget.get('kind', '?')} <= "
            f"{budget.get('target', '?')} of the original; seed {meta.get('seed', '?')}; options: {opts}. "
            "Proxy/val top-1: masked validation accuracy on the evaluation subset, before fine-tuning.")
