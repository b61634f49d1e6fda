"""Human-readable tables for the CLI (rich)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Group
from rich.table import Table
from rich.text import Text

from onnxprune.deps import Analysis

if TYPE_CHECKING:
    from onnxprune.api import PruneResult


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _names(names: tuple[str, ...], limit: int = 2) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" +{len(names) - limit}" if len(names) > limit else "")


def analysis_table(analysis: Analysis) -> Group:
    share = analysis.group_macs() / max(analysis.macs, 1)
    table = Table(title=f"channel groups of {analysis.graph.source}", show_lines=False)
    for col, just in (("id", "right"), ("channels", "right"), ("producers", "left"),
                      ("consumers", "right"), ("MACs share", "right"), ("prunable", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for g in analysis.channel_groups:
        chans = str(g.channels) if g.units == g.channels else f"{g.channels} ({g.units} units)"
        status = Text("yes", style="green") if g.prunable else Text(f"no: {g.reason}", style="yellow")
        table.add_row(str(g.id), chans, _names(g.producers) or "-", str(len(g.consumers)),
                      f"{100 * share[g.id]:.1f}%", status)
    prunable = analysis.prunable()
    keep = analysis.full_keep()
    for g in prunable:
        keep[g.unit_slice] = False
    macs = analysis.macs
    removable = macs - analysis.cost.macs(keep)
    summary = Text.assemble(
        ("MACs ", "bold"), _si(macs), ("   params ", "bold"), _si(analysis.params),
        ("   groups ", "bold"), f"{len(prunable)} prunable of {len(analysis.channel_groups)}",
        ("   prunable MACs ", "bold"), f"{100 * removable / max(macs, 1):.1f}%",
        "  (MACs that depend on prunable channels)",
    )
    return Group(table, summary)


def prune_summary(result: "PruneResult", output: str) -> Table:
    (m0, m1), (p0, p1) = result.macs, result.params
    table = Table(title=f"pruned -> {output}")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("ratio", justify="right")
    table.add_row("MACs", _si(m0), _si(m1), f"{m1 / max(m0, 1):.3f}")
    table.add_row("params", _si(p0), _si(p1), f"{p1 / max(p0, 1):.3f}")
    kept = int(result.keep.sum())
    table.add_row("channel units", str(result.keep.size), str(kept), f"{kept / max(result.keep.size, 1):.3f}")
    if result.verified is not None:
        table.caption = f"verified: {result.verified.describe()}"
    else:
        table.caption = "not verified (--no-verify)"
    simplified = getattr(result, "simplified", None)
    if simplified is not None and simplified.applied:
        table.caption += (f"\nanalysed after onnxsim ({simplified.nodes_before} -> {simplified.nodes_after} nodes; "
                          "--simplify off to skip)")
    elif simplified is not None and simplified.note and simplified.mode != "off":
        table.caption += f"\n{simplified.note}"
    return table
