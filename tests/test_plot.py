"""The PNG chart writer: a valid file (read back by a small decoder here and by PIL), lines,
markers and gaps where the axis transform says, nice ticks, legend, labels, errors, and
atomic, deterministic writes."""
from __future__ import annotations

import math
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vl.shared.plot import (INK, PALETTE, Panel, Point, Series, line_chart, log_ticks, nice_ticks,
                            scatter_chart, text_mask, text_size, tick_labels)

BLUE, ORANGE, GREEN = PALETTE[:3]


def read_png(data: bytes) -> np.ndarray:
    """Decode an 8-bit RGB, non-interlaced PNG, checking every chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(tag + body) == crc, f"bad CRC in {tag}"
        chunks.append((tag, body))
        pos += 12 + n
    assert pos == len(data)
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    w, h, depth, color_type, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, color_type, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = np.frombuffer(zlib.decompress(b"".join(b for t, b in chunks if t == b"IDAT")), np.uint8)
    raw = raw.reshape(h, 1 + 3 * w)
    out, prev = np.zeros((h, 3 * w), np.uint8), np.zeros(3 * w, np.uint8)
    for y in range(h):
        kind, line = raw[y, 0], raw[y, 1:]
        assert kind in (0, 2), f"row {y}: filter {kind} (only None and Up are decoded here)"
        out[y] = line if kind == 0 else line + prev
        prev = out[y]
    return out.reshape(h, w, 3)


def near(pixels: np.ndarray, x: float, y: float, color, r: int = 1) -> bool:
    """Whether `color` appears exactly within r pixels of the continuous point (x, y)."""
    c, row = int(x), int(y)
    patch = pixels[max(row - r, 0):row + r + 1, max(c - r, 0):c + r + 1]
    return bool((patch == color).all(-1).any())


def colored(pixels: np.ndarray) -> np.ndarray:
    """Pixels that are not white or grey: series ink, even where anti-aliasing fades it."""
    p = pixels.astype(int)
    return p.max(-1) - p.min(-1) > 10


def interior(frame, pixels):
    return pixels[frame.top:frame.top + frame.height, frame.left:frame.left + frame.width]


def one_panel(*series, **kw) -> Panel:
    return Panel("title", list(series), "x label", "y label", **kw)


# --- the file --------------------------------------------------------------------------

def test_png_is_valid_and_decodes_to_the_pixels(tmp_path):
    path = tmp_path / "curves.png"
    chart = line_chart([one_panel(Series("a", [1, 2, 3], [0.5, 0.2, 0.1])),
                        one_panel(Series("b", [1, 2, 3], [1, 2, 4]))], path)
    data = path.read_bytes()
    assert struct.unpack(">II", data[16:24]) == (1600, 500)  # IHDR width, height
    pixels = read_png(data)
    assert pixels.shape == (500, 1600, 3)
    assert np.array_equal(pixels, chart.pixels)
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), chart.pixels)
    assert colored(pixels).any() and (pixels == 255).all(-1).mean() > 0.5  # drawn on white


def test_same_input_gives_identical_bytes(tmp_path):
    def panels():
        return [one_panel(Series("train", [1, 2, 3, 4], [2.0, 1.1, 0.7, None]), Series("val", [1, 2, 3, 4], [2.2, 1.3, 1.0, 0.9]))]
    line_chart(panels(), tmp_path / "a.png")
    line_chart(panels(), tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    points = [Point("A", 0.5, 70), Point("B", 4.0, 75)]
    assert scatter_chart(points, log_x=True).png() == scatter_chart(points, log_x=True).png()


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "new" / "chart.png"  # the folder is made
    chart = line_chart([one_panel(Series("a", [1, 2], [1, 2]))], path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["chart.png"]
    old = path.read_bytes()

    def half_then_fail(self, data):
        with open(self, "wb") as f:
            f.write(data[:100])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        chart.save(path)
    assert path.read_bytes() == old  # the old file is untouched ...
    assert sorted(p.name for p in path.parent.iterdir()) == ["chart.png"]  # ... and no temp file is left
    monkeypatch.undo()
    scatter_chart([Point("x", 1, 2)], path)
    assert path.read_bytes() != old and sorted(p.name for p in path.parent.iterdir()) == ["chart.png"]


# --- lines, markers, gaps ----------------------------------------------------------------

def test_line_runs_through_the_data_and_stays_inside_the_frame():
    xs, ys = [0, 1, 2, 3], [0.0, 3.0, 1.0, 2.0]
    chart = line_chart([one_panel(Series("", xs, ys, marker=False))])
    (f,), px = chart.frames, chart.pixels
    for k in range(3):
        for t in np.linspace(0, 1, 11):
            x, y = xs[k] + t * (xs[k + 1] - xs[k]), ys[k] + t * (ys[k + 1] - ys[k])
            assert near(px, *f.to_pixel(x, y), BLUE), (x, y)
    assert not near(px, *f.to_pixel(0.5, 3.0), BLUE, r=3)  # far above the first segment
    assert not near(px, *f.to_pixel(2.5, 0.0), BLUE, r=3)
    inside = np.zeros(px.shape[:2], bool)
    inside[f.top:f.top + f.height, f.left:f.left + f.width] = True
    assert colored(px).any() and not (colored(px) & ~inside).any()  # clipped to the plot area; no legend


def test_markers_on_points_only_when_asked():
    def above_point(marker: bool) -> bool:
        chart = line_chart([one_panel(Series("", [0, 1, 2], [1.0, 1.0, 1.0], marker=marker))])
        x, y = chart.frames[0].to_pixel(1, 1.0)
        assert near(chart.pixels, x, y, BLUE, r=0)  # the line itself
        return bool((chart.pixels[int(y) - 2, int(x)] == BLUE).all())  # 2 px above: only a marker reaches
    assert above_point(True) and not above_point(False)


def test_nan_and_none_break_the_line():
    def band(ys) -> np.ndarray:
        chart = line_chart([one_panel(Series("", [0, 1, 2, 3, 4], ys, marker=False))])
        f = chart.frames[0]
        x1, x3 = f.to_pixel(1, 0)[0], f.to_pixel(3, 0)[0]
        return colored(chart.pixels[f.top:f.top + f.height, int(x1) + 6:int(x3) - 6])
    assert band([1, 2, 3, 2, 1]).any()  # without the gap the band between x=1 and x=3 has ink
    assert not band([1, 2, None, 2, 1]).any()
    assert not band([1, 2, float("nan"), 2, 1]).any()


def test_isolated_points_get_a_dot_even_without_markers():
    chart = line_chart([one_panel(Series("", [0, 1, 2, 3, 4], [1, None, 2, np.nan, 1], marker=False))])
    f = chart.frames[0]
    for x, y in [(0, 1), (2, 2), (4, 1)]:
        assert near(chart.pixels, *f.to_pixel(x, y), BLUE, r=0)


def test_single_point_and_flat_series_get_a_padded_range():
    chart = line_chart([one_panel(Series("one", [5], [0.3])), one_panel(Series("flat", [1, 2, 3], [0, 0, 0]))])
    single, flat = chart.frames
    assert single.x.lo < 5 < single.x.hi and single.y.lo < 0.3 < single.y.hi and len(single.y.ticks) >= 2
    assert near(chart.pixels, *single.to_pixel(5, 0.3), BLUE, r=0)
    assert flat.y.lo < 0 < flat.y.hi and 0.0 in flat.y.ticks
    x, y = flat.to_pixel(2, 0)
    assert abs(y - (flat.top + flat.height / 2)) <= 1 and near(chart.pixels, x, y, BLUE, r=0)


def test_series_take_palette_colours_in_order():
    series = [Series(f"s{i}", [0, 1], [i, i + 0.5]) for i in range(9)]
    chart = line_chart([one_panel(*series)])
    f = chart.frames[0]
    for i in range(9):
        assert near(chart.pixels, *f.to_pixel(0.5, i + 0.25), PALETTE[i], r=0)
    assert len(set(PALETTE)) == len(PALETTE) >= 8


def test_log_y_axis_maps_decades_evenly():
    chart = line_chart([one_panel(Series("", [0, 1, 2], [0.1, 1, 10]), log_y=True)])
    f = chart.frames[0]
    assert f.y.log and set(f.y.ticks) >= {0.1, 1.0, 10.0}
    (_, y0), (_, y1), (_, y2) = (f.to_pixel(x, y) for x, y in [(0, 0.1), (1, 1), (2, 10)])
    assert abs((y0 - y1) - (y1 - y2)) < 1e-6
    assert near(chart.pixels, *f.to_pixel(0.5, 10 ** -0.5), BLUE)  # straight in log space


# --- axes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("lo, hi, max_ticks, expected", [
    (0, 1, 7, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    (0.013, 0.5, 7, [0.1, 0.2, 0.3, 0.4, 0.5]),
    (3, 97, 7, [20, 40, 60, 80]),
    (3, 97, 11, [10, 20, 30, 40, 50, 60, 70, 80, 90]),
    (-1, -0.1, 7, [-1.0, -0.8, -0.6, -0.4, -0.2]),
    (-5, 5, 7, [-4, -2, 0, 2, 4]),
    (0.0011, 0.0049, 7, [0.0015, 0.002, 0.0025, 0.003, 0.0035, 0.004, 0.0045]),
    (0.0011, 0.0049, 5, [0.002, 0.003, 0.004]),
    (1000, 1e6, 7, [2e5, 4e5, 6e5, 8e5, 1e6]),
])
def test_nice_ticks(lo, hi, max_ticks, expected):
    ticks = nice_ticks(lo, hi, max_ticks)
    assert ticks == expected
    assert all(math.copysign(1, t) > 0 for t in ticks if t == 0)  # no "-0"


def test_nice_ticks_properties_on_random_ranges():
    rng = np.random.default_rng(0)
    for _ in range(300):
        lo = float(rng.normal() * 10.0 ** rng.integers(-4, 5))
        hi = lo + float(rng.uniform(0.01, 10) * 10.0 ** rng.integers(-4, 5))
        n = int(rng.integers(3, 10))
        ticks = nice_ticks(lo, hi, n)
        span = hi - lo
        assert (2 if n >= 5 else 1) <= len(ticks) <= n
        assert all(lo - 1e-9 * span <= t <= hi + 1e-9 * span for t in ticks)
        if len(ticks) < 2:
            continue
        step = ticks[1] - ticks[0]
        mantissa = step / 10 ** math.floor(math.log10(step))
        assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-6
        assert np.allclose(np.diff(ticks), step, rtol=1e-6, atol=1e-12 * span)


@pytest.mark.parametrize("lo, hi, max_ticks, expected", [
    (0.5, 100, 7, [1, 10, 100]),
    (0.01, 1000, 7, [0.01, 0.1, 1, 10, 100, 1000]),
    (1e-6, 1e6, 7, [1e-6, 1e-4, 1e-2, 1, 1e2, 1e4, 1e6]),  # 13 decades: every second
    (0.3, 4, 7, [0.5, 1, 2]),  # one decade: 1, 2, 5 steps
    (0.31, 0.45, 7, [0.32, 0.34, 0.36, 0.38, 0.4, 0.42, 0.44]),  # none of those: linear
])
def test_log_ticks(lo, hi, max_ticks, expected):
    assert log_ticks(lo, hi, max_ticks) == expected


def test_tick_labels():
    assert tick_labels([0.0, 0.5, 1.0]) == ["0.0", "0.5", "1.0"]
    assert tick_labels([20.0, 40.0]) == ["20", "40"]
    assert tick_labels([-0.2, 0.0, 0.25]) == ["-0.20", "0.00", "0.25"]
    assert tick_labels([0.01, 1.0, 100.0], log=True) == ["0.01", "1", "100"]
    assert tick_labels([1e6, 2e6]) == ["1e6", "2e6"]
    assert tick_labels([1e-7, 2e-7]) == ["1e-7", "2e-7"]


@pytest.mark.parametrize("call", [lambda: nice_ticks(1, 1), lambda: nice_ticks(0, float("nan")),
                                  lambda: nice_ticks(0, 1, 1), lambda: log_ticks(0, 1), lambda: log_ticks(2, 1)])
def test_ticks_reject_bad_ranges(call):
    with pytest.raises(ValueError):
        call()


def test_tick_marks_and_labels_are_drawn():
    chart = line_chart([one_panel(Series("", [0, 10], [0, 1]))])
    f, px = chart.frames[0], chart.pixels
    bottom = f.top + f.height
    assert f.x.ticks == (0, 2, 4, 6, 8, 10) and f.y.ticks == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    for t in f.x.ticks:
        col = int(f.left + f.x.frac(t) * f.width)
        assert (px[bottom + 1:bottom + 6, col] == INK).all()  # the tick mark below the frame
        assert (px[bottom + 8:bottom + 30, col - 8:col + 9] == INK).all(-1).any()  # its label
    for t in f.y.ticks:
        row = int(f.top + (1 - f.y.frac(t)) * f.height)
        assert (px[row, f.left - 6:f.left - 1] == INK).all()
        assert (px[row - 8:row + 8, f.left - 60:f.left - 8] == INK).all(-1).any()


# --- legend and text -----------------------------------------------------------------------

def test_legend_shows_each_series_in_an_empty_corner():
    rising = [Series("train loss", [0, 1, 2], [0, 1, 2]), Series("val", [0, 1, 2], [0.1, 1.1, 2.1]),
              Series("third", [0, 1, 2], [0.2, 1.2, 2.2])]
    chart = line_chart([one_panel(*rising)])
    f = chart.frames[0]
    x0, y0, x1, y1 = f.legend
    assert f.left <= x0 < x1 <= f.left + f.width and f.top <= y0 < y1 <= f.top + f.height
    box = chart.pixels[y0:y1, x0:x1]
    for color in (BLUE, ORANGE, GREEN, INK):  # a swatch per series, and text
        assert (box == color).all(-1).any(), color
    assert (box == INK).all(-1).sum() > 100
    assert x1 < f.left + f.width / 2 and y1 < f.top + f.height / 2  # top left: the line fills top right
    falling = line_chart([one_panel(Series("loss", [0, 1, 2], [2, 1, 0]))]).frames[0]
    assert falling.legend[0] > f.left + f.width / 2  # top right is free now
    assert line_chart([one_panel(Series("", [0, 1], [0, 1]))]).frames[0].legend is None


def test_font_glyphs():
    printable = [chr(c) for c in range(32, 127)]
    masks = [text_mask(c).tobytes() for c in printable]
    assert len(set(masks)) == len(masks)  # every glyph is its own
    assert not text_mask(" ").any() and all(text_mask(c).any() for c in printable[1:])
    box = text_mask("\u00e9")
    assert box.any() and box.tobytes() not in masks and np.array_equal(text_mask("\u20ac"), box)
    for scale in (1, 2):
        assert text_mask("Ab1", scale).shape[::-1] == text_size("Ab1", scale) == (17 * scale, 8 * scale)
    assert np.array_equal(text_mask("A", 2), text_mask("A", 1).repeat(2, 0).repeat(2, 1))


def test_title_and_axis_labels_are_drawn():
    def ink_rows(title: str) -> int:
        chart = line_chart([Panel(title, [Series("", [0, 1], [0, 1])])])
        return int((chart.pixels[: chart.frames[0].top] == INK).all(-1).sum())
    assert ink_rows("") == 0 and ink_rows("Training loss") > 100


# --- scatter --------------------------------------------------------------------------------

def ink_beside(chart, x: float, y: float, width: int, side: str) -> int:
    """Text pixels in a band `width` px long to one side of (x, y), inside the plot area."""
    f = chart.frames[0]
    c0, c1 = (int(x) + 6, int(x) + 6 + width) if side == "right" else (int(x) - 6 - width, int(x) - 6)
    c0, c1 = max(c0, f.left), min(c1, f.left + f.width)
    return int((chart.pixels[int(y) - 8:int(y) + 9, c0:c1] == INK).all(-1).sum())


def test_scatter_points_labels_and_log_axis():
    points = [Point("Full fine-tuning", 100, 77.4), Point("Adapter", 8, 76.8), Point("BitFit", 0.3, 72.0),
              Point("Prompt", 1.3, 71.4)]
    chart = scatter_chart(points, title="score vs params", x_label="params (%)", y_label="score", log_x=True)
    (f,), px = chart.frames, chart.pixels
    assert f.x.log and f.x.ticks == (1.0, 10.0, 100.0)
    for i, p in enumerate(points):
        x, y = f.to_pixel(p.x, p.y)
        assert near(px, x, y, PALETTE[i], r=0)
        label_right = ink_beside(chart, x, y, text_size(p.label, 2)[0], "right") > 20
        label_left = ink_beside(chart, x, y, text_size(p.label, 2)[0], "left") > 20
        # the rightmost point's label does not fit to its right and goes left
        assert (label_right, label_left) == ((False, True) if p.label.startswith("Full") else (True, False)), p.label


def test_scatter_labels_avoid_markers_and_each_other():
    # "second" is ~30 px right of "first", closer than the label "first" is long
    points = [Point("first", 5, 5), Point("second", 5.4, 5), Point("low", 0, 0), Point("high", 10, 10)]
    chart = scatter_chart(points)
    f, px = chart.frames[0], chart.pixels
    (x1, y1), (x2, y2) = f.to_pixel(5, 5), f.to_pixel(5.4, 5)
    assert 0 < x2 - x1 < text_size("first", 2)[0]
    assert ink_beside(chart, x1, y1, text_size("first", 2)[0], "left") > 20  # moved off "second"'s dot
    assert ink_beside(chart, x2, y2, text_size("second", 2)[0], "right") > 20
    assert near(px, x1, y1, PALETTE[0], r=0) and near(px, x2, y2, PALETTE[1], r=0)


# --- errors and speed ------------------------------------------------------------------------

@pytest.mark.parametrize("make, match", [
    (lambda: Series("val acc", [], []), "'val acc' is empty"),
    (lambda: Series("s", [1, 2], [1]), "2 xs but 1 ys"),
    (lambda: Series("s", [1, 2], [None, float("nan")]), "no finite point"),
    (lambda: line_chart([]), "at least one panel"),
    (lambda: line_chart([Panel("empty", [])]), "'empty' has no series"),
    (lambda: line_chart([one_panel(Series("s", [0, 1], [1, 2]), log_x=True)]), "log x axis needs positive"),
    (lambda: line_chart([one_panel(Series("s", [0, 1], [1, 2]))], text_scale=0), "text_scale"),
    (lambda: line_chart([one_panel(Series("s", [0, 1], [1, 2]))], panel_size=(120, 80)), "no room"),
    (lambda: scatter_chart([]), "at least one point"),
    (lambda: scatter_chart([Point("a", 1, float("nan"))]), r"\['a'\]"),
])
def test_errors_name_the_problem(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_renders_fast():
    rng = np.random.default_rng(0)
    epochs = np.arange(1, 201)
    panels = [one_panel(*[Series(f"s{i}", epochs, np.cumsum(rng.normal(size=200))) for i in range(8)]) for _ in range(2)]
    start = time.perf_counter()
    line_chart(panels).png()
    assert time.perf_counter() - start < 1.0
