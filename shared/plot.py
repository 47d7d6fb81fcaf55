"""PNG charts without matplotlib: training curves (panels of line series) and a labelled
scatter plot (average score vs trainable-parameter share, the VL-Adapter teaser).

Drawn on a numpy canvas with an embedded 5x8 bitmap font, encoded as 8-bit RGB PNG with
zlib + struct, and written atomically. The same input gives a byte-identical file.

    line_chart([Panel("loss", [Series("train", epochs, losses)], "epoch", "loss")], "loss.png")
    scatter_chart([Point("Adapter", 4.18, 77.5), ...], "teaser.png", log_x=True)
"""
from __future__ import annotations

import itertools
import math
import os
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from vl.shared.atomic import atomic_path

Color = tuple[int, int, int]

# Ten colours far from each other and from the greys of the axes; series i takes i % 10.
PALETTE: tuple[Color, ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)
BACKGROUND: Color = (255, 255, 255)
INK: Color = (30, 30, 30)  # text and tick marks
_FRAME, _GRID, _LEGEND_EDGE = (90, 90, 90), (232, 232, 232), (170, 170, 170)

# Printable ASCII 32..126 in a 5x8 cell (row 7 holds descenders). One glyph = 8 base-32
# digits, one per row; a digit's 5 bits are the row's pixels, left to right.
_GLYPHS = (
    "00000000 44444040 AAA00000 AAVAVAA0 4FKE5U40 OP248J30 CIK8LID0 44800000 24888420 "
    "84222480 04LEL400 044V4400 00000448 000E0000 00000CC0 01248G00 EHJLPHE0 4C4444E0 "
    "EH1248V0 V2421HE0 26AIV220 VGU11HE0 68GUHHE0 V1248880 EHHEHHE0 EHHF12C0 0CC0CC00 "
    "0CC0CC48 248G8420 00V0V000 84212480 EH124040 EHNLNGE0 EHHVHHH0 UHHUHHU0 EHGGGHE0 "
    "UHHHHHU0 VGGUGGV0 VGGUGGG0 EHGNHHF0 HHHVHHH0 E44444E0 72222IC0 HIKOKIH0 GGGGGGV0 "
    "HRLLHHH0 HHPLJHH0 EHHHHHE0 UHHUGGG0 EHHHLID0 UHHUKIH0 FGGE11U0 V4444440 HHHHHHE0 "
    "HHHHHA40 HHHLLLA0 HHA4AHH0 HHA44440 V1248GV0 E88888E0 0G842100 E22222E0 4AH00000 "
    "0000000V 84000000 00E1FHF0 GGUHHHU0 00EGGHE0 11FHHHF0 00EHVGE0 698S8880 00FHHF1E "
    "GGMPHHH0 40C444E0 206222IC GGIKOKI0 C44444E0 00QLLLL0 00MPHHH0 00EHHHE0 00UHHUGG "
    "00FHHF11 00MPGGG0 00FGE1U0 88S88960 00HHHJD0 00HHHA40 00HHLLA0 00HA4AH0 00HHHF1E "
    "00V248V0 34484430 44444440 O44244O0 008L2000 "
    "VHHHHHV0"  # the box drawn for any other character
)
_FONT = np.array([[[(int(d, 32) >> (4 - b)) & 1 for b in range(5)] for d in g] for g in _GLYPHS.split()],
                 dtype=bool)  # (96, 8, 5)
_CELL_W, _CELL_H = 6, 8  # 5 px glyph + 1 px gap


def text_size(text: str, scale: int = 1) -> tuple[int, int]:
    """(width, height) in pixels of `text` drawn at integer `scale`."""
    return max(len(text) * _CELL_W - 1, 0) * scale, _CELL_H * scale


def text_mask(text: str, scale: int = 1) -> np.ndarray:
    """The pixels of `text` as a bool array (8 * scale, width); unknown characters are boxes."""
    idx = [ord(c) - 32 if 32 <= ord(c) <= 126 else len(_FONT) - 1 for c in text]
    cells = np.zeros((len(idx), _CELL_H, _CELL_W), bool)
    cells[:, :, :5] = _FONT[idx]
    mask = cells.transpose(1, 0, 2).reshape(_CELL_H, -1)[:, :-1]  # drop the last gap
    return mask.repeat(scale, 0).repeat(scale, 1)


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


# --- axes ----------------------------------------------------------------------------------

def nice_ticks(lo: float, hi: float, max_ticks: int = 7) -> list[float]:
    """Multiples of the finest 1, 2 or 5 x 10^k step that puts at most `max_ticks` ticks in
    [lo, hi] (at least two when max_ticks >= 5): nice_ticks(0, 1) == [0.0, 0.2, ..., 1.0]."""
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo) or max_ticks < 2:
        raise ValueError(f"nice_ticks needs finite lo < hi and max_ticks >= 2; got {lo}, {hi}, {max_ticks}")
    exp = math.floor(math.log10((hi - lo) / (4 * max_ticks)))  # a step with far too many ticks
    for step in (m * 10.0 ** e for e in itertools.count(exp) for m in (1, 2, 5)):
        first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
        if last - first < max_ticks:
            break
    digits = max(0, -math.floor(math.log10(step))) + 1  # removes float noise such as 0.6000000000000001
    return [round(k * step, digits) + 0.0 for k in range(first, last + 1)]  # + 0.0 turns -0.0 into 0.0


def log_ticks(lo: float, hi: float, max_ticks: int = 7) -> list[float]:
    """Powers of ten in [lo, hi] (every n-th if there are more than `max_ticks`); with fewer
    than two, 1, 2 and 5 x 10^k; with fewer still, `nice_ticks`."""
    if not (0 < lo < hi < math.inf):
        raise ValueError(f"log_ticks needs 0 < lo < hi; got {lo}, {hi}")
    k0, k1 = math.ceil(math.log10(lo) - 1e-9), math.floor(math.log10(hi) + 1e-9)
    if k1 > k0:
        return [float(f"1e{k}") for k in range(k0, k1 + 1, math.ceil((k1 - k0 + 1) / max_ticks))]
    ticks = [float(f"{m}e{k}") for k in range(k0 - 1, k1 + 1) for m in (1, 2, 5)]
    ticks = [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
    return ticks if len(ticks) >= 2 else nice_ticks(lo, hi, max_ticks)


def tick_labels(ticks: Sequence[float], log: bool = False) -> list[str]:
    """Labels with the same number of decimals for all ticks (0.0 0.5 1.0); powers of ten and
    very large or small values in short %g form (0.01, 100, 1e6)."""
    digits = next((d for d in range(6) if all(abs(round(t, d) - t) <= 1e-9 * max(1.0, abs(t)) for t in ticks)), None)
    if log or digits is None or any(abs(t) >= 1e6 for t in ticks):
        return [f"{t:g}".replace("e+0", "e").replace("e-0", "e-").replace("e+", "e") for t in ticks]
    return [f"{t:.{digits}f}" for t in ticks]


@dataclass(frozen=True)
class Axis:
    """A data range [lo, hi] (log10-scaled if `log`) and its tick values."""
    lo: float
    hi: float
    ticks: tuple[float, ...]
    log: bool = False

    def frac(self, v):
        """0 at lo, 1 at hi; works on numbers and arrays."""
        f = np.log10 if self.log else np.asarray
        return (f(v) - f(self.lo)) / (f(self.hi) - f(self.lo))


def _axis_range(values: np.ndarray, log: bool, pad: float) -> tuple[float, float]:
    v = np.log10(values) if log else values
    lo, hi = float(v.min()), float(v.max())
    if hi == lo:  # one value (or all equal): give it a range to sit in the middle of
        d = 0.5 if log else (abs(lo) * 0.1 or 1.0)
        lo, hi = lo - d, hi + d
    else:
        lo, hi = lo - pad * (hi - lo), hi + pad * (hi - lo)
    return (10.0 ** lo, 10.0 ** hi) if log else (lo, hi)


def _fit_axis(lo: float, hi: float, log: bool, length: int, min_gap: float, measure) -> Axis:
    """The most ticks (8 down to 5) whose labels, `measure(labels)` px long, stay `min_gap` apart."""
    for n in range(8, 4, -1):
        axis = Axis(lo, hi, tuple((log_ticks if log else nice_ticks)(lo, hi, n)), log)
        pos = axis.frac(np.array(axis.ticks)) * length
        if len(pos) < 2 or np.diff(pos).min() >= measure(tick_labels(axis.ticks, log)) + min_gap:
            return axis
    return axis


@dataclass(frozen=True)
class Frame:
    """Where one panel's plot area lies on the image (interior columns left..left+width-1,
    rows top..top+height-1) and how data maps onto it."""
    left: int
    top: int
    width: int
    height: int
    x: Axis
    y: Axis
    legend: tuple[int, int, int, int] | None = None  # (x0, y0, x1, y1), end exclusive

    def to_pixel(self, x, y) -> tuple:
        """Continuous image coordinates (column, row) of a data point; pixel (c, r) spans
        [c, c + 1) x [r, r + 1)."""
        return self.left + self.x.frac(x) * self.width, self.top + (1 - self.y.frac(y)) * self.height


# --- canvas --------------------------------------------------------------------------------

class _Canvas:
    def __init__(self, width: int, height: int):
        self.px = np.empty((height, width, 3), np.float32)
        self.px[:] = BACKGROUND

    def blend(self, alpha: np.ndarray, x: int, y: int, color: Color) -> None:
        """Paint `color` with per-pixel opacity `alpha` (h, w) at (x, y), clipped to the image."""
        h, w = alpha.shape
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, self.px.shape[1]), min(y + h, self.px.shape[0])
        if x0 >= x1 or y0 >= y1:
            return
        a = alpha[y0 - y:y1 - y, x0 - x:x1 - x, None].astype(np.float32)
        region = self.px[y0:y1, x0:x1]
        region[:] = region * (1 - a) + np.array(color, np.float32) * a

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        self.blend(np.ones((max(y1 - y0, 0), max(x1 - x0, 0))), x0, y0, color)

    def text(self, text: str, x: int, y: int, color: Color = INK, scale: int = 2, align: str = "left",
             valign: str = "top", vertical: bool = False) -> None:
        """Draw `text` anchored at (x, y); `vertical` reads bottom to top."""
        mask = text_mask(text, scale)
        if vertical:
            mask = np.rot90(mask)
        h, w = mask.shape
        x -= {"left": 0, "center": w // 2, "right": w}[align]
        y -= {"top": 0, "middle": h // 2, "bottom": h}[valign]
        self.blend(mask, x, y, color)

    def to_uint8(self) -> np.ndarray:
        return np.rint(np.clip(self.px, 0, 255)).astype(np.uint8)


def _stroke(cov: np.ndarray, x0: float, y0: float, x1: float, y1: float, half: float = 1.0) -> None:
    """Raise `cov` to the anti-aliased coverage of a segment `2 * half` px thick."""
    h, w = cov.shape
    c0, c1 = max(math.floor(min(x0, x1) - half - 1), 0), min(math.ceil(max(x0, x1) + half + 1), w)
    r0, r1 = max(math.floor(min(y0, y1) - half - 1), 0), min(math.ceil(max(y0, y1) + half + 1), h)
    if c0 >= c1 or r0 >= r1:
        return
    px, py = np.arange(c0, c1) + 0.5, (np.arange(r0, r1) + 0.5)[:, None]  # pixel centres
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((px - x0) * dx + (py - y0) * dy) / (dx * dx + dy * dy), 0, 1) if dx or dy else 0.0
    d = np.hypot(px - x0 - t * dx, py - y0 - t * dy)  # distance to the segment
    np.maximum(cov[r0:r1, c0:c1], np.clip(half + 0.5 - d, 0, 1), out=cov[r0:r1, c0:c1])


def _discs(cov: np.ndarray, xs: np.ndarray, ys: np.ndarray, radius: float) -> None:
    """Raise `cov` to the anti-aliased coverage of filled circles centred at (xs, ys)."""
    off = np.arange(-math.ceil(radius + 1), math.ceil(radius + 1) + 1)
    cols = np.floor(xs).astype(int)[:, None, None] + off[None, None, :]  # (N, 1, K)
    rows = np.floor(ys).astype(int)[:, None, None] + off[None, :, None]  # (N, K, 1)
    a = np.clip(radius + 0.5 - np.hypot(cols + 0.5 - xs[:, None, None], rows + 0.5 - ys[:, None, None]), 0, 1)
    rows, cols, a = np.broadcast_arrays(rows, cols, a)
    keep = (rows >= 0) & (rows < cov.shape[0]) & (cols >= 0) & (cols < cov.shape[1]) & (a > 0)
    np.maximum.at(cov, (rows[keep], cols[keep]), a[keep])


# --- charts --------------------------------------------------------------------------------

@dataclass(eq=False)
class Chart:
    """A drawn chart: the pixels (H, W, 3) uint8 and one Frame per panel."""
    pixels: np.ndarray
    frames: list[Frame]

    def png(self) -> bytes:
        return encode_png(self.pixels)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the PNG atomically (a temporary sibling renamed into place)."""
        data = self.png()
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        return Path(path)


def encode_png(pixels: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of an (H, W, 3) uint8 array: every row "Up"-filtered (the byte
    minus the one above, which charts' long vertical runs turn into zeros), zlib level 6."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"encode_png needs an (H, W, 3) uint8 array; got {pixels.dtype} {pixels.shape}")
    h, w, _ = pixels.shape
    rows = pixels.reshape(h, 3 * w)
    raw = np.full((h, 1 + 3 * w), 2, np.uint8)  # each row starts with its filter type, 2 = Up
    raw[0, 1:] = rows[0]
    raw[1:, 1:] = rows[1:] - rows[:-1]  # uint8 arithmetic wraps modulo 256, as PNG wants

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b""))


def _check_scale(text_scale: int) -> None:
    if text_scale not in (1, 2, 3, 4):
        raise ValueError(f"text_scale must be 1, 2, 3 or 4 (pixels per font pixel); got {text_scale!r}")


def _draw_frame(cv: _Canvas, ox: int, w: int, h: int, xs: np.ndarray, ys: np.ndarray, title: str,
                x_label: str, y_label: str, log_x: bool, log_y: bool, pad: float, ts: int) -> Frame:
    """Lay out one panel in columns ox..ox+w-1 and draw its grid, frame, ticks and texts."""
    for name, log, v in (("x", log_x, xs), ("y", log_y, ys)):
        if log and (v <= 0).any():
            raise ValueError(f"a log {name} axis needs positive values; got {v[v <= 0][0]:g}")
    m, fh, tick = 5 * ts, _CELL_H * ts, 3 * ts  # margin, text height, tick length
    top = m + (fh + m if title else 0)
    bottom = h - (m + (fh + m if x_label else 0) + fh + m // 2 + tick)

    def width_of(labels: list[str]) -> int:
        return max(text_size(s, ts)[0] for s in labels)

    y_axis = _fit_axis(*_axis_range(ys, log_y, pad), log_y, bottom - top, 2 * fh, lambda _: fh)
    y_text = tick_labels(y_axis.ticks, log_y)
    left = ox + m + (fh + m if y_label else 0) + width_of(y_text) + m // 2 + tick
    right = ox + w - 6 * m
    if right - left < 40 or bottom - top < 40:
        raise ValueError(f"a {w}x{h} px panel leaves no room to plot in; make it larger")
    x_axis = _fit_axis(*_axis_range(xs, log_x, pad), log_x, right - left, 2 * _CELL_W * ts, width_of)
    f = Frame(left, top, right - left, bottom - top, x_axis, y_axis)
    cols = [min(int(left + x_axis.frac(t) * f.width), right) for t in x_axis.ticks]
    rows = [min(int(top + (1 - y_axis.frac(t)) * f.height), bottom) for t in y_axis.ticks]
    for c in cols:
        cv.rect(c, top, c + 1, bottom, _GRID)
    for r in rows:
        cv.rect(left, r, right, r + 1, _GRID)
    for c, label in zip(cols, tick_labels(x_axis.ticks, log_x)):
        cv.rect(c, bottom + 1, c + 1, bottom + 1 + tick, INK)
        cv.text(label, c, bottom + 1 + tick + m // 2, scale=ts, align="center")
    for r, label in zip(rows, y_text):
        cv.rect(left - 1 - tick, r, left - 1, r + 1, INK)
        cv.text(label, left - 1 - tick - m // 2, r, scale=ts, align="right", valign="middle")
    if title:
        cv.text(title, (left + right) // 2, m, scale=ts, align="center")
    if x_label:
        cv.text(x_label, (left + right) // 2, h - m, scale=ts, align="center", valign="bottom")
    if y_label:
        cv.text(y_label, ox + m, (top + bottom) // 2, scale=ts, valign="middle", vertical=True)
    return f


def _draw_box(cv: _Canvas, f: Frame) -> None:
    """The frame's 1 px border, just outside its interior (drawn last, over the data)."""
    x0, y0, x1, y1 = f.left - 1, f.top - 1, f.left + f.width, f.top + f.height
    for a, b, c, d in ((x0, y0, x1 + 1, y0 + 1), (x0, y1, x1 + 1, y1 + 1), (x0, y0, x0 + 1, y1), (x1, y0, x1 + 1, y1)):
        cv.rect(a, b, c, d, _FRAME)


def _draw_legend(cv: _Canvas, f: Frame, entries: list[tuple[str, Color]], used: np.ndarray, ts: int) -> Frame:
    """A legend in the corner of the plot area where the data covers the fewest pixels."""
    m, fh = 5 * ts, _CELL_H * ts
    swatch, row = 12 * ts, fh + 3 * ts
    bw = m + swatch + _CELL_W * ts + max(text_size(s, ts)[0] for s, _ in entries) + m
    bh = m + len(entries) * row - 3 * ts + m
    inset = 4 * ts
    corners = [(f.width - inset - bw, inset), (inset, inset),
               (f.width - inset - bw, f.height - inset - bh), (inset, f.height - inset - bh)]
    x, y = min(corners, key=lambda c: used[max(c[1], 0):c[1] + bh, max(c[0], 0):c[0] + bw].sum())
    x, y = f.left + max(x, 0), f.top + max(y, 0)
    cv.rect(x, y, x + bw, y + bh, _LEGEND_EDGE)
    cv.rect(x + 1, y + 1, x + bw - 1, y + bh - 1, BACKGROUND)
    for i, (label, color) in enumerate(entries):
        cy = y + m + i * row + fh // 2
        cov = np.zeros((fh, swatch + 2))
        _stroke(cov, 1, fh / 2, swatch + 1, fh / 2)
        _discs(cov, np.array([swatch / 2 + 1]), np.array([fh / 2]), 1.5 * ts)
        cv.blend(cov, x + m - 1, cy - fh // 2, color)
        cv.text(label, x + m + swatch + _CELL_W * ts, cy, scale=ts, valign="middle")
    return replace(f, legend=(x, y, x + bw, y + bh))


def line_chart(panels: Sequence[Panel], path: str | os.PathLike | None = None, *,
               panel_size: tuple[int, int] = (800, 500), text_scale: int = 2) -> Chart:
    """Draw training curves: panels side by side, each `panel_size` (width, height) px, lines
    2 px thick; write the PNG atomically to `path` if one is given."""
    _check_scale(text_scale)
    if not panels:
        raise ValueError("a line chart needs at least one panel")
    for p in panels:
        if not p.series:
            raise ValueError(f"panel {p.title!r} has no series")
    pw, ph = panel_size
    cv = _Canvas(pw * len(panels), ph)
    frames = []
    for i, panel in enumerate(panels):
        xs = np.concatenate([s.xs[s.finite] for s in panel.series])
        ys = np.concatenate([s.ys[s.finite] for s in panel.series])
        f = _draw_frame(cv, i * pw, pw, ph, xs, ys, panel.title, panel.x_label, panel.y_label,
                        panel.log_x, panel.log_y, 0.05, text_scale)
        used = np.zeros((f.height, f.width))  # all series' coverage, to place the legend
        for j, s in enumerate(panel.series):
            cov = _series_coverage(s, f, 1.5 + text_scale)
            cv.blend(cov, f.left, f.top, PALETTE[j % len(PALETTE)])
            np.maximum(used, cov, out=used)
        _draw_box(cv, f)
        entries = [(s.label, PALETTE[j % len(PALETTE)]) for j, s in enumerate(panel.series) if s.label]
        frames.append(_draw_legend(cv, f, entries, used, text_scale) if entries else f)
    return _finish(cv, frames, path)


def _series_coverage(s: Series, f: Frame, radius: float) -> np.ndarray:
    """(f.height, f.width) opacity of one series: its segments between finite neighbours, and
    a dot on each point (with `s.marker`) or on each point that no segment reaches."""
    cov = np.zeros((f.height, f.width))
    ok = s.finite
    px, py = f.to_pixel(np.where(ok, s.xs, 1.0), np.where(ok, s.ys, 1.0))  # 1.0: no log10(NaN) warnings
    px, py = px - f.left, py - f.top  # plot-local coordinates
    for k in np.flatnonzero(ok[:-1] & ok[1:]):
        _stroke(cov, px[k], py[k], px[k + 1], py[k + 1])
    linked = np.zeros_like(ok)
    linked[:-1] |= ok[1:]
    linked[1:] |= ok[:-1]
    dots = ok if s.marker else ok & ~linked
    if dots.any():
        _discs(cov, px[dots], py[dots], radius)
    return cov


def _finish(cv: _Canvas, frames: list[Frame], path: str | os.PathLike | None) -> Chart:
    chart = Chart(cv.to_uint8(), frames)
    if path is not None:
        chart.save(path)
    return chart


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def scatter_chart(points: Sequence[Point], path: str | os.PathLike | None = None, *, title: str = "",
                  x_label: str = "", y_label: str = "", log_x: bool = False, size: tuple[int, int] = (800, 500),
                  text_scale: int = 2) -> Chart:
    """Draw points in palette colours, each labelled beside it: to the right, else left, above
    or below, whichever first stays inside the plot and clear of the other points and labels.
    Write the PNG atomically to `path` if one is given."""
    _check_scale(text_scale)
    if not points:
        raise ValueError("a scatter chart needs at least one point")
    xs, ys = _floats(p.x for p in points), _floats(p.y for p in points)
    bad = [p.label for p, x, y in zip(points, xs, ys) if not (math.isfinite(x) and math.isfinite(y))]
    if bad:
        raise ValueError(f"scatter points need finite x and y; not so for {bad}")
    cv = _Canvas(*size)
    ts, radius = text_scale, 2.5 * text_scale
    f = _draw_frame(cv, 0, size[0], size[1], xs, ys, title, x_label, y_label, log_x, False, 0.1, ts)
    px, py = f.to_pixel(xs, ys)
    r = math.ceil(radius)
    taken = [(int(x) - r, int(y) - r, int(x) + r + 1, int(y) + r + 1) for x, y in zip(px, py)]
    inside = (f.left, f.top, f.left + f.width, f.top + f.height)
    for i, p in enumerate(points):
        cov = np.zeros((f.height, f.width))
        _discs(cov, px[i:i + 1] - f.left, py[i:i + 1] - f.top, radius)
        cv.blend(cov, f.left, f.top, PALETTE[i % len(PALETTE)])
        (tw, th), x, y, gap = text_size(p.label, ts), int(px[i]), int(py[i]), r + 2 * ts
        options = [(x + gap, y - th // 2), (x - gap - tw, y - th // 2), (x - tw // 2, y - gap - th), (x - tw // 2, y + gap)]
        boxes = [(bx, by, bx + tw, by + th) for bx, by in options]
        fits = [b for b in boxes if inside[0] <= b[0] and b[2] <= inside[2] and inside[1] <= b[1] and b[3] <= inside[3]]
        box = next((b for b in fits if not any(_overlaps(b, t) for j, t in enumerate(taken) if j != i)),
                   (fits or boxes)[0])
        cv.text(p.label, box[0], box[1], scale=ts)
        taken.append(box)
    _draw_box(cv, f)
    return _finish(cv, [f], path)


__all__ = [
    "BACKGROUND", "INK", "PALETTE", "Axis", "Chart", "Frame", "Panel", "Point", "Series",
    "encode_png", "line_chart", "log_ticks", "nice_ticks",
    "scatter_chart", "text_mask", "text_size", "tick_labels",
]
