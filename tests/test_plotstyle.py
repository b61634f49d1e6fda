"""The plot helpers: shared axes, one legend with every series, error bars only with several
seeds, a caption, a floor on tiny y ranges."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from onnxprune import plotstyle  # noqa: E402


def test_panels_share_axes_and_one_legend_lists_every_series(tmp_path: Path) -> None:
    fig, axes = plotstyle.panels(1, 2)
    handles = {}
    handles["l1"] = plotstyle.errorbar(axes[0][0], 0.5, 90.0, yerr=0.3, label="l1")
    handles["gat-ppo"] = plotstyle.errorbar(axes[0][1], 0.5, 91.0, yerr=float("nan"), label="gat-ppo")  # one seed
    axes[0][1].set_ylim(80, 95)
    assert axes[0][0].get_ylim() == axes[0][1].get_ylim()  # shared
    plotstyle.one_legend(fig, handles, ["gat-ppo", "l1"])
    plotstyle.caption(fig, "ResNet-20, 5 seeds; bars: standard error")
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["gat-ppo", "l1"] and len(fig.legends) == 1
    assert any("standard error" in t.get_text() for t in fig.texts)
    # no error bar for the single-seed point
    assert handles["gat-ppo"].has_yerr is False and handles["l1"].has_yerr is True
    out = tmp_path / "p.png"
    plotstyle.save(fig, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tiny_ranges_are_not_blown_up() -> None:
    fig, axes = plotstyle.panels(1, 1)
    ax = axes[0][0]
    plotstyle.ylim_with_floor(ax, [0.4989, 0.4996], min_span=0.05)
    lo, hi = ax.get_ylim()
    assert hi - lo >= 0.05 and lo < 0.4989 and hi > 0.4996
    plotstyle.pyplot().close(fig)
