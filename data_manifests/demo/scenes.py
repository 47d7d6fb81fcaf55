"""The shapes world's vocabulary and scenes: colours, shapes, sizes, backgrounds,
the random streams every item draws from, and drawing a scene with PIL."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {  # far apart in RGB, so JPEG / x264 never blur one into another
    "red": (215, 38, 38), "green": (34, 160, 64), "blue": (38, 84, 216),
    "yellow": (242, 212, 36), "purple": (138, 56, 176), "orange": (244, 136, 24),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
IMAGE_RADIUS = {"small": 0.085, "large": 0.15}  # radius / shorter image side
VIDEO_RADIUS = {"small": 0.12, "large": 0.18}
BACKGROUNDS = {"white": (246, 246, 244), "light grey": (200, 200, 200),
               "beige": (232, 220, 192), "dark grey": (62, 62, 66)}
COLOR_JITTER = 10  # +- per channel: a little variety, still far from any other colour
BOUND = 1.2  # every shape fits in a circle of BOUND * r (the square's corners)
FPS = 10
VIDEO_SIZES = ((128, 96), (96, 64), (192, 108))  # heights a multiple of 4: yuv420p planes stack into rows
# libx264 settings for files that are the same bytes every run: one thread, and x264's plain C
# code. Its AVX-512 code gave other bytes for the same frames after encodes of other sizes
# (it reads memory it never wrote), and its SSE4 / AVX2 code rounds differently from C, so
# only C gives the same file on every machine (for one x264 version). Preset ultrafast: 10 ms
# a clip against medium's 35 ms on a 2-core EPYC (the full demo writes 600 clips), for files
# 1.7x larger (7 kB) that decode as close to the drawn frames (mean error 1.2 of 255 either way).
X264_OPTIONS = {"preset": "ultrafast", "crf": "20", "threads": "1", "x264-params": "no-asm=1"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
SHOW_NAME = "The Shapes Show"
DEMO_KIND = "vl_demo_world"
MIN_IMAGES, MIN_VIDEOS = 8, 6  # a train and a val part for every dataset

# Random streams: one generator per (purpose, item), so adding a question never moves a pixel.
IDS_STREAM, SCENE_STREAM, VQA_STREAM, GQA_STREAM, CAPTION_STREAM, PAIR_STREAM, VIDEO_STREAM, VIDEO_TEXT_STREAM, NAMES_STREAM = range(1, 10)
VG_STREAM = 10  # Visual Genome's question answers (demo/visual_genome.py)


@dataclass
class Background:
    name: str
    rgb: list[int]
    graded: bool
    rgb_end: list[int]  # colour at the far end of a gentle linear gradient (= rgb when plain)
    angle: int  # gradient direction in degrees


@dataclass
class Shape:
    shape: str
    color: str
    size: str
    x: int
    y: int
    r: int
    rgb: list[int]


@dataclass
class Scene:
    width: int
    height: int
    background: Background
    objects: list[Shape]


@dataclass
class VideoSpec:
    vid_name: str
    family: str  # "tv" (TVQA, TVC), "how2" (How2QA), "yc2" (YC2C)
    split: str
    width: int
    height: int
    frames: int
    fps: int
    background: Background
    mover: Shape  # x, y: where it starts
    end: list[int]  # where it ends
    direction: str
    color_after: str  # = mover.color when it keeps its colour
    rgb_after: list[int]
    change_frame: int | None  # first frame drawn in color_after
    still: Shape | None  # a shape that never moves, never of the mover's kind

    @property
    def duration(self) -> float:
        return self.frames / self.fps

    @property
    def change_time(self) -> float:
        return (self.change_frame if self.change_frame is not None else self.frames // 2) / self.fps


# --------------------------------------------------------------------------- small helpers

def item_rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


def pick(rng: np.random.Generator, seq: Sequence):
    return seq[int(rng.integers(len(seq)))]


def sample(rng: np.random.Generator, seq: Sequence, k: int) -> list:
    return [seq[int(i)] for i in rng.permutation(len(seq))[:k]]


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def plural(noun: str, n: int) -> str:
    return noun if n == 1 else noun + "s"


def capitalized(text: str) -> str:
    return text[0].upper() + text[1:]


def other_than(rng: np.random.Generator, seq: Sequence[str], not_this: str) -> str:
    return pick(rng, [s for s in seq if s != not_this])


def join_words(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# --------------------------------------------------------------------------- scenes

def random_background(rng: np.random.Generator) -> Background:
    name = pick(rng, list(BACKGROUNDS))
    base = list(BACKGROUNDS[name])
    if rng.random() < 0.5:
        return Background(name, base, False, base, 0)
    delta = int(rng.integers(16, 34)) * (1 if name == "dark grey" else -1)
    return Background(name, base, True, [min(255, max(0, c + delta)) for c in base],
                      int(pick(rng, (0, 45, 90, 135, 180, 225, 270, 315))))


def make_shape(rng: np.random.Generator, shape: str, color: str, size: str, x: int, y: int, r: int) -> Shape:
    rgb = [min(255, max(0, c + int(rng.integers(-COLOR_JITTER, COLOR_JITTER + 1)))) for c in COLORS[color]]
    return Shape(shape, color, size, x, y, r, rgb)


def random_scene(rng: np.random.Generator) -> Scene:
    width = int(rng.integers(160, 321))
    height = width if rng.random() < 0.2 else int(rng.integers(160, 321))
    background = random_background(rng)
    n = int(rng.integers(1, 5))
    short = min(width, height)
    for attempt in range(60):
        objects: list[Shape] = []
        for _ in range(n):
            size = pick(rng, SIZES) if attempt < 30 else "small"
            r = round(IMAGE_RADIUS[size] * short)
            spot = _free_spot(rng, width, height, r, objects)
            if spot is None:
                break
            objects.append(make_shape(rng, pick(rng, SHAPES), pick(rng, list(COLORS)), size, *spot, r))
        if len(objects) == n:
            return Scene(width, height, background, objects)
    raise AssertionError(f"could not place {n} shapes in {width}x{height}")


def _free_spot(rng, width: int, height: int, r: int, objects: list[Shape]) -> tuple[int, int] | None:
    pad = math.ceil(BOUND * r) + 3
    for _ in range(200):
        x, y = int(rng.integers(pad, width - pad + 1)), int(rng.integers(pad, height - pad + 1))
        if all(math.hypot(x - o.x, y - o.y) >= BOUND * (r + o.r) + 4 for o in objects):
            return x, y
    return None


def background_array(bg: Background, width: int, height: int) -> np.ndarray:
    base = np.array(bg.rgb, np.float32)
    if not bg.graded:
        return np.broadcast_to(base.astype(np.uint8), (height, width, 3)).copy()
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = math.radians(bg.angle)
    t = xx * math.cos(angle) + yy * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    return np.round(base + t[..., None] * (np.array(bg.rgb_end, np.float32) - base)).astype(np.uint8)


def draw_shape(draw: ImageDraw.ImageDraw, s: Shape, rgb: Sequence[int] | None = None, at: tuple[int, int] | None = None) -> None:
    x, y = at or (s.x, s.y)
    r, fill = s.r, tuple(rgb or s.rgb)
    if s.shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif s.shape == "square":
        h = round(0.85 * r)  # about the circle's area
        draw.rectangle((x - h, y - h, x + h, y + h), fill=fill)
    else:  # an upright triangle, a little larger than inscribed so it reads at small sizes
        draw.polygon([(x, y - 1.15 * r), (x - r, y + 0.58 * r), (x + r, y + 0.58 * r)], fill=fill)


def render_scene(scene: Scene) -> Image.Image:
    img = Image.fromarray(background_array(scene.background, scene.width, scene.height))
    draw = ImageDraw.Draw(img)
    for s in scene.objects:
        draw_shape(draw, s)
    return img


