"""One look for every plot onnxprune and its benchmarks draw (matplotlib, imported lazily).

What makes a comparison plot readable, in helpers so each plot does not re-invent it:

- `panels(...)`: a grid whose panels share the axes they compare (same quantity, same range),
  so a reader compares heights, not tick labels; `ylim_with_floor` keeps a tiny spread from being
  blown up to fill the panel (ranges like 0.4989-0.4996).
- `one_legend(fig, handles, order)`: one legend for the whole figure, every series in a stable
  order (methods absent from the first panel are not lost).
- `errorbar(ax, ...)`: a point with its standard error when several seeds exist (no bar for one).
- `caption(fig, text)`: the protocol under the figure (data, seeds, budget, what the bars are).
"""

from __future__ import annotations

import io
import math
import os
import textwrap
from typing import Any, Iterable, Mapping, Sequence

# Stable colors per method (criteria, peers, search methods), shared by every plot.
COLORS: dict[str, str] = {
    "original": "black", "l1": "tab:blue", "l1-uniform": "tab:blue", "l2": "tab:cyan", "bn": "tab:olive",
    "taylor": "tab:orange", "taylor-global": "tab:orange", "random": "tab:gray", "torch-pruning": "tab:brown",
    "tp-l1-local": "tab:brown", "tp-taylor-global": "tab:pink", "gat-ppo": "tab:green", "rl-pruner": "tab:red",
    "sacp": "tab:purple",
}


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend with the house style applied."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
                         "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 100, "savefig.bbox": "tight"})
    return plt


def color(name: str) -> str:
    return COLORS.get(name, "black")


def panels(rows: int, cols: int, *, sharex: bool | str = False, sharey: bool | str = True,
           panel_size: tuple[float, float] = (4.2, 3.4)) -> tuple[Any, Any]:
    """A figure with a `rows` x `cols` grid of axes (always 2-D), sharing the compared axes."""
    plt = pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(panel_size[0] * cols + 0.8, panel_size[1] * rows + 1.0),
                             squeeze=False, sharex=sharex, sharey=sharey)
    return fig, axes


def ylim_with_floor(ax: Any, values: Iterable[float], min_span: float) -> None:
    """Y range that covers `values` but spans at least `min_span` (centered on them)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return
    lo, hi = min(vals), max(vals)
    if hi - lo < min_span:
        mid = 0.5 * (lo + hi)
        lo, hi = mid - min_span / 2, mid + min_span / 2
    pad = 0.05 * (hi - lo)
    ax.set_ylim(lo - pad, hi + pad)


def errorbar(ax: Any, x: float, y: float, xerr: float | None = None, yerr: float | None = None, *,
             label: str, marker: str = "o") -> Any:
    """One point with standard-error bars (omitted when not finite: a single seed)."""
    ok = lambda e: e if e is not None and math.isfinite(e) and e > 0 else None  # noqa: E731
    return ax.errorbar(x, y, xerr=ok(xerr), yerr=ok(yerr), fmt=marker, color=color(label), ms=5, capsize=2,
                       label=label)


def one_legend(fig: Any, handles: Mapping[str, Any], order: Sequence[str] = (), ncol: int = 6) -> None:
    """A single legend under the figure: every series in `handles`, `order` first."""
    names = [n for n in order if n in handles] + sorted(n for n in handles if n not in order)
    if names:
        fig.legend([handles[n] for n in names], names, loc="lower center", ncol=min(ncol, len(names)),
                   frameon=False, bbox_to_anchor=(0.5, 0.0))


def caption(fig: Any, text: str, width: int = 140) -> None:
    """The protocol under the figure, wrapped; leaves room for it and the legend."""
    lines = textwrap.wrap(" ".join(text.split()), width)
    fig.text(0.01, 0.005, "\n".join(lines), fontsize=7, va="bottom", ha="left")
    fig.tight_layout(rect=(0, 0.06 + 0.022 * len(lines), 1, 1))


def save(fig: Any, path: str | os.PathLike[str]) -> None:
    """PNG, written atomically."""
    from onnxprune.fileio import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    pyplot().close(fig)
    atomic_write(path, buf.getvalue())
