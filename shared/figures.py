"""Charts drawn by matplotlib: training curves (panels of line series) and a labelled
scatter plot (average score vs trainable-parameter share, the VL-Adapter teaser).

Every chart is written twice, each file atomically: the PNG at the path given, of the
asked pixel size, and an SVG beside it (same stem) for papers, its text kept as text.
The same input gives byte-identical files.

matplotlib is imported inside the functions, so importing this module (and with it
`vl report` or `vl.train`) stays light. The Agg canvas is attached to each Figure
directly: no pyplot, no global backend, no figure registry, so a figure is freed as soon
as it is dropped.

    line_chart([Panel("loss", [Series("train", epochs, losses)], "epoch", "loss")], "loss.png")
    scatter_chart([Point("Adapter", 4.18, 77.5), ...], "teaser.png", log_x=True)
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from vl.shared.atomic import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# matplotlib's "tab10", written out so a user's matplotlibrc colour cycle cannot change
# the charts; series i takes i % 10.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
DPI = 100  # pixel sizes are given in px: figsize = px / DPI
GRID = "#e8e8e8"
# Read when saving: text stays <text> in the SVG (editable, searchable), and the ids
# matplotlib makes up come from a fixed salt, so the same chart gives the same bytes.
_SAVE_RC = {"svg.fonttype": "none", "svg.hashsalt": "vl"}


# --- data ----------------------------------------------------------------------------------

def _floats(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


@dataclass(eq=False)
class Series:
    """One line: `ys[i]` at `xs[i]`. None/NaN values are skipped and break the line there.
    Both are stored as float arrays. `marker` puts a dot on every point (isolated points get
    one regardless, or they would not show)."""
    label: str
    xs: Sequence[float | None]
    ys: Sequence[float | None]
    marker: bool = True

    def __post_init__(self):
        self.xs, self.ys = _floats(self.xs), _floats(self.ys)
        if len(self.xs) != len(self.ys):
            raise ValueError(f"series {self.label!r}: {len(self.xs)} xs but {len(self.ys)} ys")
        if len(self.xs) == 0:
            raise ValueError(f"series {self.label!r} is empty: give it at least one (x, y) point")
        if not self.finite.any():
            raise ValueError(f"series {self.label!r} has no finite point (all x or y are None/NaN)")

    @property
    def finite(self) -> np.ndarray:
        return np.isfinite(self.xs) & np.isfinite(self.ys)

    @property
    def isolated(self) -> np.ndarray:
        """Finite points with no finite neighbour: no segment reaches them."""
        ok = self.finite
        linked = np.zeros_like(ok)
        linked[:-1] |= ok[1:]
        linked[1:] |= ok[:-1]
        return ok & ~linked


@dataclass(eq=False)
class Panel:
    """One plot area with its own axes, title and legend."""
    title: str
    series: Sequence[Series]
    x_label: str = ""
    y_label: str = ""
    log_x: bool = False
    log_y: bool = False


@dataclass(frozen=True)
class Point:
    """One labelled point of a scatter chart."""
    label: str
    x: float
    y: float


# --- figures -------------------------------------------------------------------------------

def _new_figure(width: int, height: int) -> Figure:
    """A `width` x `height` px figure on its own Agg canvas, laid out by constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    return fig


def _set_up_axes(ax: Axes, title: str, x_label: str, y_label: str, log_x: bool, log_y: bool,
                 xs: np.ndarray, ys: np.ndarray) -> None:
    """Title, axis labels, log scales (refused for non-positive values) and a light grid."""
    from matplotlib.ticker import LogFormatter

    for name, log, v in (("x", log_x, xs), ("y", log_y, ys)):
        if log and (v <= 0).any():
            raise ValueError(f"a log {name} axis needs positive values; got {v[v <= 0][0]:g}")
    ax.set_title(title)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)

    class PlainLogFormatter(LogFormatter):
        """matplotlib's choice of which log ticks get a label, written %g (0.01, 1, 100): a
        share in % reads better so than as 10^k or 1e-02."""
        def __call__(self, x, pos=None):
            return f"{x:g}" if super().__call__(x, pos) else ""

    for log, set_scale, axis in ((log_x, ax.set_xscale, ax.xaxis), (log_y, ax.set_yscale, ax.yaxis)):
        if log:
            set_scale("log")
            axis.set_major_formatter(PlainLogFormatter())
            axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))
    ax.grid(True, color=GRID, linewidth=0.8)
    ax.set_axisbelow(True)


def _line_figure(panels: Sequence[Panel], panel_size: tuple[int, int]) -> Figure:
    """Panels side by side, each `panel_size` (width, height) px; one Line2D per series, NaN
    where a value is missing (matplotlib breaks the line there)."""
    if not panels:
        raise ValueError("a line chart needs at least one panel")
    for p in panels:
        if not p.series:
            raise ValueError(f"panel {p.title!r} has no series")
    pw, ph = panel_size
    fig = _new_figure(pw * len(panels), ph)
    for ax, panel in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        _set_up_axes(ax, panel.title, panel.x_label, panel.y_label, panel.log_x, panel.log_y,
                     np.concatenate([s.xs[s.finite] for s in panel.series]),
                     np.concatenate([s.ys[s.finite] for s in panel.series]))
        for j, s in enumerate(panel.series):
            dots = None if s.marker else np.flatnonzero(s.isolated).tolist()
            ax.plot(s.xs, s.ys, color=PALETTE[j % len(PALETTE)], linewidth=1.5, label=s.label or "_nolegend_",
                    marker="o" if s.marker or dots else "None", markersize=5, markevery=dots or None)
        if any(s.label for s in panel.series):
            ax.legend(loc="best")
    return fig


def line_chart(panels: Sequence[Panel], path: str | os.PathLike, *,
               panel_size: tuple[int, int] = (800, 500)) -> tuple[Path, Path]:
    """Draw training curves, panels side by side, each `panel_size` (width, height) px;
    write `path` (a .png) and the SVG beside it. Returns (png, svg)."""
    return _save(_line_figure(panels, panel_size), path)


# Where a point's label may go, in order of preference, as (dx, dy) in points from the point
# and the text's alignment: right, left, above, below.
_LABEL_SPOTS = ((7, 0, "left", "center"), (-7, 0, "right", "center"),
                (0, 7, "center", "bottom"), (0, -7, "center", "top"))


def _scatter_figure(points: Sequence[Point], title: str, x_label: str, y_label: str, log_x: bool,
                    size: tuple[int, int]) -> Figure:
    """Points in palette colours, each labelled beside it: to the right, else left, above or
    below, whichever first stays inside the plot and clear of the other points and labels."""
    if not points:
        raise ValueError("a scatter chart needs at least one point")
    xs, ys = _floats(p.x for p in points), _floats(p.y for p in points)
    bad = [p.label for p, x, y in zip(points, xs, ys) if not (math.isfinite(x) and math.isfinite(y))]
    if bad:
        raise ValueError(f"scatter points need finite x and y; not so for {bad}")
    fig = _new_figure(*size)
    ax = fig.subplots()
    _set_up_axes(ax, title, x_label, y_label, log_x, False, xs, ys)
    ax.scatter(xs, ys, s=49, c=[PALETTE[i % len(PALETTE)] for i in range(len(points))], zorder=2)
    ax.margins(0.1)
    fig.draw_without_rendering()  # runs the layout: from here data -> pixel positions hold
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    px = ax.transData.transform(np.column_stack([xs, ys]))
    r = 4.0  # px, a little over the dots' radius
    taken = [(x - r, y - r, x + r, y + r) for x, y in px]
    for i, p in enumerate(points):
        candidates = []
        for dx, dy, ha, va in _LABEL_SPOTS:
            text = ax.annotate(p.label, (p.x, p.y), xytext=(dx, dy), textcoords="offset points",
                               ha=ha, va=va, annotation_clip=False)
            text.set_in_layout(False)  # labels must not move the axes placed above
            e = text.get_window_extent(renderer)
            candidates.append((text, (e.x0, e.y0, e.x1, e.y1)))
        fits = [c for c in candidates if inside.x0 <= c[1][0] and c[1][2] <= inside.x1
                and inside.y0 <= c[1][1] and c[1][3] <= inside.y1]
        chosen = next((c for c in fits if not any(_overlaps(c[1], t) for j, t in enumerate(taken) if j != i)),
                      (fits or candidates)[0])
        for c in candidates:
            if c is not chosen:
                c[0].remove()
        taken.append(chosen[1])
    return fig


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def scatter_chart(points: Sequence[Point], path: str | os.PathLike, *, title: str = "",
                  x_label: str = "", y_label: str = "", log_x: bool = False,
                  size: tuple[int, int] = (800, 500)) -> tuple[Path, Path]:
    """Draw labelled points on one `size` (width, height) px plot; write `path` (a .png) and
    the SVG beside it. Returns (png, svg)."""
    return _save(_scatter_figure(points, title, x_label, y_label, log_x, size), path)


# --- files ---------------------------------------------------------------------------------

def _save(fig: Figure, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write the PNG and the SVG beside it, each to a temporary sibling renamed into place
    only once both are drawn: a failure leaves the files there before untouched."""
    import matplotlib

    png = Path(path)
    if png.suffix != ".png":
        raise ValueError(f"a chart is written as .png (with an .svg beside it); got {png}")
    svg = png.with_suffix(".svg")
    # format= because the temporary names end in .tmp-<pid>; no Date, so reruns match
    with matplotlib.rc_context(_SAVE_RC), atomic_path(png) as png_tmp, atomic_path(svg) as svg_tmp:
        fig.savefig(png_tmp, format="png", dpi=DPI)
        fig.savefig(svg_tmp, format="svg", metadata={"Date": None})
    return png, svg


__all__ = ["PALETTE", "Panel", "Point", "Series", "line_chart", "scatter_chart"]
