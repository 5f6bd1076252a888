"""The report's figures, drawn with matplotlib's Agg renderer into PNG bytes (no pyplot, no display)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

# One colour per series name, stable across figures, colour-blind-safe (Okabe-Ito).
_PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _figure(width_in: float = 7.5, height_in: float = 3.6) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=110, layout="constrained")
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    # No timestamp in the metadata, so regenerated PNGs are byte-identical.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _style(ax: Any, *, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def lines(
    x: Sequence[float],
    series: Mapping[str, Sequence[float | None]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    emphasise: str | None = None,
    logx: bool = False,
    logy: bool = False,
    ref_y: float | None = None,
    ref_label: str | None = None,
    xticks: Sequence[str] | None = None,
    connect: bool = True,
) -> bytes:
    """One line per series over shared ``x``; ``None`` is a gap; ``emphasise`` is drawn as a ceiling.
    ``xticks`` labels the x positions (categorical x); ``connect=False`` draws the points alone."""
    fig = _figure()
    ax = fig.add_subplot()
    for i, (name, ys) in enumerate(series.items()):
        vals = [float("nan") if y is None else float(y) for y in ys]
        kw: dict[str, Any] = {
            "color": _PALETTE[i % len(_PALETTE)],
            "marker": _MARKERS[i % len(_MARKERS)],
            "markersize": 4,
            "linewidth": 1.6,
            "label": name,
        }
        if not connect:
            kw.update(linestyle="none", markersize=5)
        if name == emphasise:
            kw.update(color="#555555", linestyle="--", linewidth=2.4, marker=None, label=f"{name} (ceiling)")
        ax.plot(list(x), vals, **kw)
    if ref_y is not None:
        ax.axhline(ref_y, color="#888888", linewidth=1, linestyle=":", label=ref_label)
    if xticks is not None:
        ax.set_xticks(list(x), list(xticks), fontsize=8, rotation=20 if len(xticks) > 4 else 0)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    _style(ax, xlabel=xlabel, ylabel=ylabel, title=title)
    # Outside the axes, so it never hides a line.
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


def stream(
    x: Sequence[float],
    panels: Sequence[tuple[str, Mapping[str, Sequence[float | None]]]],
    marks: Mapping[str, Sequence[int]],
    *,
    xlabel: str,
    title: str,
) -> bytes:
    """Stacked panels sharing ``x`` (one ``(ylabel, series)`` each), one line per series; ``marks`` puts a
    triangle on a series' line at each of its listed x positions (e.g. the steps a new plan served from)."""
    fig = _figure(height_in=2.4 * len(panels) + 0.6)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    xs = list(x)
    for ax, (ylabel, series) in zip(axes, panels, strict=True):
        for i, (name, ys) in enumerate(series.items()):
            vals = [float("nan") if y is None else float(y) for y in ys]
            color = _PALETTE[i % len(_PALETTE)]
            ax.plot(xs, vals, color=color, linewidth=1.4, label=name)
            at = [j for j in marks.get(name, ()) if 0 <= j < len(vals)]
            if at:
                ax.plot([xs[j] for j in at], [vals[j] for j in at], linestyle="none", marker="v",
                        markersize=7, color=color, markeredgecolor="black", markeredgewidth=0.5)
        _style(ax, xlabel=xlabel if ax is axes[-1] else "", ylabel=ylabel,
               title=title if ax is axes[0] else "")
    axes[0].legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


def bars(
    labels: Sequence[str],
    values: Sequence[float | None],
    *,
    ylabel: str,
    title: str,
    ref_y: float | None = None,
    ref_label: str | None = None,
    fmt: str = "{:.3g}",
) -> bytes:
    """Vertical bars with their values written on top; ``None`` is drawn as an empty slot marked n/a."""
    fig = _figure(7.5, 3.4)
    ax = fig.add_subplot()
    xs = list(range(len(labels)))
    vals = [0.0 if v is None else float(v) for v in values]
    colors = [_PALETTE[i % len(_PALETTE)] for i in xs]
    rects = ax.bar(xs, vals, color=colors, width=0.65)
    for rect, v in zip(rects, values, strict=True):
        text = "n/a" if v is None else fmt.format(v)
        ax.annotate(
            text,
            (rect.get_x() + rect.get_width() / 2, rect.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 2),
            textcoords="offset points",
        )
    if ref_y is not None:
        ax.axhline(ref_y, color="#444444", linewidth=1, linestyle="--", label=ref_label)
        if ref_label:
            ax.legend(fontsize=8, frameon=False)
    ax.set_xticks(xs, list(labels), fontsize=9)
    _style(ax, xlabel="", ylabel=ylabel, title=title)
    ax.set_ylim(0, max([*vals, ref_y or 0.0, 1e-12]) * 1.18)
    return _png(fig)


def stacked_bars(
    labels: Sequence[str], stacks: Mapping[str, Sequence[float]], *, ylabel: str, title: str
) -> bytes:
    """Bars split into named parts (e.g. all-to-all bytes by link class)."""
    fig = _figure(7.5, 3.4)
    ax = fig.add_subplot()
    xs = list(range(len(labels)))
    bottom = [0.0] * len(labels)
    for i, (name, vals) in enumerate(stacks.items()):
        v = [float(x) for x in vals]
        ax.bar(xs, v, bottom=bottom, color=_PALETTE[i % len(_PALETTE)], width=0.65, label=name)
        bottom = [b + y for b, y in zip(bottom, v, strict=True)]
    ax.set_xticks(xs, list(labels), fontsize=9)
    _style(ax, xlabel="", ylabel=ylabel, title=title)
    if stacks:
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


def timeline(
    rows: Sequence[str],
    events: Sequence[tuple[str, float, float, str]],
    *,
    title: str,
    time_unit: str = "ms",
    scale: float = 1e3,
) -> bytes:
    """A Gantt chart: one row per device or link, one box per (row, start_s, end_s, category)."""
    fig = _figure(7.5, max(2.4, 0.32 * len(rows) + 1.3))
    ax = fig.add_subplot()
    cats = sorted({e[3] for e in events})
    color = {c: _PALETTE[i % len(_PALETTE)] for i, c in enumerate(cats)}
    index = {r: i for i, r in enumerate(rows)}
    for row, start, end, cat in events:
        if row not in index:
            continue
        ax.broken_barh(
            [(start * scale, max((end - start) * scale, 1e-9))],
            (index[row] - 0.4, 0.8),
            facecolors=color[cat],
            edgecolor="none",
        )
    ax.set_yticks(range(len(rows)), list(rows), fontsize=8)
    ax.invert_yaxis()
    _style(ax, xlabel=f"simulated time ({time_unit})", ylabel="", title=title)
    from matplotlib.patches import Patch

    ax.legend(
        handles=[Patch(color=color[c], label=c) for c in cats],
        fontsize=8,
        frameon=False,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )
    return _png(fig)
