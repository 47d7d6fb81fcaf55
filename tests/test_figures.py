"""The matplotlib charts: a PNG of the asked size that is not blank and an SVG beside it that
holds every text; lines with gaps where values are missing, markers, colours, legend, log
axes, labelled scatter points; atomic and deterministic writes; errors that name the problem."""
from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_hex
from PIL import Image

from vl.shared.figures import (PALETTE, Panel, Point, Series, _line_figure, _scatter_figure, line_chart,
                               scatter_chart)

NAN = float("nan")
POINTS = [Point("adapter", 4.18, 77.5), Point("LoRA", 5.9, 77.1), Point("compacter", 3.9, 76.9),
          Point("full", 100.0, 77.8), Point("prompt", 0.016, 70.0)]


def two_panels() -> list[Panel]:
    return [Panel("training loss", [Series("all tasks", [1, 2, 3, 4], [3.0, 2.0, 1.5, 1.2]),
                                    Series("vqa", [1, 2, 3, 4], [3.2, None, 1.4, NAN], marker=False)],
                  "epoch", "loss"),
            Panel("validation (0-100)", [Series("mean", [1, 2, 3, 4], [40.0, 50.0, 55.0, 57.0])], "epoch", "score")]


def svg_texts(path: Path) -> list[str]:
    """Every <text> of the SVG (ET.parse fails on a file that is not XML)."""
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]


def png_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))  # decodes every pixel: a damaged file fails here


def has_colour(pixels: np.ndarray, hex_colour: str, at_least: int = 20) -> bool:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels.astype(int) - rgb).max(axis=2) <= 8).sum()) >= at_least


def test_line_chart_writes_a_png_of_the_size_and_an_svg_with_every_text(tmp_path):
    png, svg = line_chart(two_panels(), tmp_path / "curves.png")
    assert (png, svg) == (tmp_path / "curves.png", tmp_path / "curves.svg")
    pixels = png_pixels(png)
    assert pixels.shape == (500, 1600, 3)  # two 800 x 500 panels side by side
    for colour in PALETTE[:2]:  # the lines are drawn in their colours, not just a frame
        assert has_colour(pixels, colour)
    assert (pixels == 255).all(axis=2).mean() > 0.5  # mostly white background
    texts = svg_texts(svg)
    for text in ("training loss", "validation (0-100)", "epoch", "loss", "score", "all tasks", "vqa", "mean"):
        assert text in texts, text


def test_scatter_chart_writes_both_files_with_its_texts(tmp_path):
    png, svg = scatter_chart(POINTS, tmp_path / "teaser.png", title="average vs trainable share",
                             x_label="trainable parameters (%, log scale)", y_label="average score", log_x=True)
    pixels = png_pixels(png)
    assert pixels.shape == (500, 800, 3)
    for colour in PALETTE[:len(POINTS)]:
        assert has_colour(pixels, colour)
    texts = svg_texts(svg)
    for text in ("average vs trainable share", "trainable parameters (%, log scale)", "average score",
                 *(p.label for p in POINTS)):
        assert text in texts, text
    assert {"0.01", "1", "100"} <= set(texts)  # log ticks as plain numbers, not 10^k


def test_none_and_nan_break_the_line_and_only_finite_points_are_drawn():
    s = Series("gappy", [1, 2, 3, None, 5, 6], [1.0, None, 3.0, 4.0, NAN, 6.0])
    (line,) = _line_figure([Panel("p", [s])], (400, 300)).axes[0].get_lines()
    xs, ys = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
    drawn = np.isfinite(xs) & np.isfinite(ys)
    assert drawn.tolist() == [True, False, True, False, False, True]  # a NaN wherever x or y is missing
    assert xs[drawn].tolist() == [1, 3, 6] and ys[drawn].tolist() == [1.0, 3.0, 6.0]
    # the path as drawn: a new stroke (MOVETO) after each NaN, so no segment crosses a gap
    path = line.get_path().cleaned(remove_nans=True)
    assert path.codes.tolist()[:3] == [path.MOVETO] * 3 and path.vertices[:3].tolist() == [[1, 1], [3, 3], [6, 6]]


def test_markers_on_every_point_or_only_where_no_segment_reaches():
    with_dots = Series("a", [1, 2, 3], [1.0, 2.0, 3.0])
    lone = Series("b", [1, 2, 3, 4, 5], [1.0, 2.0, None, 4.0, None], marker=False)
    no_dots = Series("c", [1, 2, 3], [3.0, 2.0, 1.0], marker=False)
    a, b, c = _line_figure([Panel("p", [with_dots, lone, no_dots])], (400, 300)).axes[0].get_lines()
    assert a.get_marker() == "o" and a.get_markevery() is None
    assert b.get_marker() == "o" and b.get_markevery() == [3]  # 4.0 has missing neighbours on both sides
    assert c.get_marker() == "None"


def test_series_take_palette_colours_in_order_and_the_legend_lists_the_labelled_ones():
    series = [Series(f"s{i}" if i != 2 else "", [0, 1], [i, i + 1.0]) for i in range(12)]
    ax = _line_figure([Panel("p", series)], (400, 300)).axes[0]
    assert [to_hex(line.get_color()) for line in ax.get_lines()] == [PALETTE[i % 10] for i in range(12)]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"s{i}" for i in range(12) if i != 2]


def test_no_labels_no_legend():
    ax = _line_figure([Panel("p", [Series("", [0, 1], [0.0, 1.0])])], (400, 300)).axes[0]
    assert ax.get_legend() is None


def test_log_axes_as_asked():
    fig = _line_figure([Panel("lin", [Series("a", [1, 2], [1.0, 2.0])]),
                        Panel("log", [Series("a", [1, 2], [1.0, 100.0])], log_y=True)], (400, 300))
    assert [(ax.get_xscale(), ax.get_yscale()) for ax in fig.axes] == [("linear", "linear"), ("linear", "log")]
    ax = _scatter_figure(POINTS, "t", "x", "y", True, (800, 500)).axes[0]
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "linear")


def test_scatter_points_in_palette_colours_labelled_inside_the_plot_clear_of_each_other():
    fig = _scatter_figure(POINTS, "t", "x", "y", True, (800, 500))
    ax = fig.axes[0]
    (dots,) = ax.collections
    assert np.asarray(dots.get_offsets()).tolist() == [[p.x, p.y] for p in POINTS]
    assert [to_hex(c) for c in dots.get_facecolors()] == list(PALETTE[:len(POINTS)])
    labels = ax.texts
    assert [t.get_text() for t in labels] == [p.label for p in POINTS]  # one label a point, the others removed
    renderer = fig.canvas.get_renderer()
    area = ax.get_window_extent(renderer)
    boxes = [t.get_window_extent(renderer) for t in labels]
    for box in boxes:
        assert area.x0 <= box.x0 and box.x1 <= area.x1 and area.y0 <= box.y0 and box.y1 <= area.y1
    # adapter (4.18) and compacter (3.9) sit close together: their labels must not collide
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_same_input_gives_identical_bytes(tmp_path):
    for name in ("one", "two"):
        line_chart(two_panels(), tmp_path / name / "c.png")
        scatter_chart(POINTS, tmp_path / name / "s.png", log_x=True)
    for file in ("c.png", "c.svg", "s.png", "s.svg"):
        assert (tmp_path / "one" / file).read_bytes() == (tmp_path / "two" / file).read_bytes(), file


def test_write_is_atomic(tmp_path, monkeypatch):
    """A failure while drawing the SVG leaves neither a new file nor a temporary one, and
    the files of an earlier chart stay as they were."""
    from matplotlib.figure import Figure

    (tmp_path / "c.png").write_bytes(b"old png")
    (tmp_path / "c.svg").write_bytes(b"old svg")
    real_savefig = Figure.savefig

    def savefig(self, fname, *, format, **kwargs):
        if format == "svg":
            Path(fname).write_bytes(b"<svg half")  # a partial file, then the failure
            raise OSError("disk full")
        return real_savefig(self, fname, format=format, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    with pytest.raises(OSError, match="disk full"):
        line_chart(two_panels(), tmp_path / "c.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "c.svg"]
    assert (tmp_path / "c.png").read_bytes() == b"old png" and (tmp_path / "c.svg").read_bytes() == b"old svg"


@pytest.mark.parametrize("make, match", [
    (lambda: Series("a", [1, 2], [1.0]), "2 xs but 1 ys"),
    (lambda: Series("a", [], []), "is empty"),
    (lambda: Series("a", [1, None], [None, 2.0]), "no finite point"),
    (lambda: _line_figure([], (400, 300)), "at least one panel"),
    (lambda: _line_figure([Panel("empty", [])], (400, 300)), "panel 'empty' has no series"),
    (lambda: _line_figure([Panel("p", [Series("a", [1, 2], [0.0, 1.0])], log_y=True)], (400, 300)),
     "a log y axis needs positive values; got 0"),
    (lambda: _scatter_figure([], "", "", "", False, (800, 500)), "at least one point"),
    (lambda: _scatter_figure([Point("bad", NAN, 1.0)], "", "", "", False, (800, 500)), r"not so for \['bad'\]"),
    (lambda: _scatter_figure([Point("zero", 0.0, 1.0)], "", "", "", True, (800, 500)), "log x axis"),
    (lambda: line_chart([Panel("p", [Series("a", [1], [1.0])])], "curves.jpg"), r"\.png"),
])
def test_errors_name_the_problem(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_importing_the_module_does_not_import_matplotlib():
    code = "import sys, vl.shared.figures; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
