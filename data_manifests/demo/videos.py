"""The shapes world's videos: one shape moving in a direction (sometimes changing
colour, sometimes beside a still shape), encoded byte-for-byte reproducibly with PyAV,
and what the VALUE datasets say about them (questions, clip descriptions, subtitles)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageDraw

from vl.data_manifests.demo.scenes import (
    COLORS, FPS, NAMES_STREAM, SHAPES, SIZES, VIDEO_RADIUS, VIDEO_SIZES, X264_OPTIONS, VideoSpec, background_array,
    capitalized, draw_shape, item_rng, make_shape, other_than, pick, random_background, sample, with_article,
)
from vl.shared.atomic import atomic_path

# --------------------------------------------------------------------------- videos

def random_video(rng, vid_name: str, family: str, split: str) -> VideoSpec:
    width, height = pick(rng, VIDEO_SIZES)
    frames = int(rng.integers(2 * FPS, 5 * FPS + 1))
    background = random_background(rng)
    shape, color, size = pick(rng, SHAPES), pick(rng, list(COLORS)), pick(rng, SIZES)
    changes = bool(rng.random() < 0.4)
    color_after = other_than(rng, list(COLORS), color) if changes else color
    direction = pick(rng, ("left", "right", "up", "down"))
    has_still = bool(rng.random() < 0.4)
    # The mover runs along one band, the still shape sits in the other: they never touch.
    band = pick(rng, (0.27, 0.73)) if has_still else float(rng.uniform(0.45, 0.55))
    short = min(width, height)
    if direction in ("left", "right"):
        y = round(band * height)
        xs = [round(0.2 * width), round(0.8 * width)]
        start, end = ([xs[1], y], [xs[0], y]) if direction == "left" else ([xs[0], y], [xs[1], y])
    else:
        x = round(band * width)
        ys = [round(0.25 * height), round(0.75 * height)]
        start, end = ([x, ys[1]], [x, ys[0]]) if direction == "up" else ([x, ys[0]], [x, ys[1]])
    mover = make_shape(rng, shape, color, size, *start, round(VIDEO_RADIUS[size] * short))
    rgb_after = mover.rgb if not changes else make_shape(rng, shape, color_after, size, 0, 0, 0).rgb
    still = None
    if has_still:
        s_shape = other_than(rng, SHAPES, shape)
        s_color = pick(rng, [c for c in COLORS if c not in (color, color_after)])
        s_size = pick(rng, SIZES)
        if direction in ("left", "right"):
            at = (int(rng.integers(round(0.2 * width), round(0.8 * width) + 1)), round((1 - band) * height))
        else:
            at = (round((1 - band) * width), int(rng.integers(round(0.25 * height), round(0.75 * height) + 1)))
        still = make_shape(rng, s_shape, s_color, s_size, *at, round(VIDEO_RADIUS[s_size] * short))
    return VideoSpec(vid_name, family, split, width, height, frames, FPS, background, mover, end, direction,
                     color_after, rgb_after, frames // 2 if changes else None, still)


def mover_position(v: VideoSpec, frame: int) -> tuple[int, int]:
    t = frame / (v.frames - 1)
    return round(v.mover.x + t * (v.end[0] - v.mover.x)), round(v.mover.y + t * (v.end[1] - v.mover.y))


def _video_frames(v: VideoSpec) -> Iterable[np.ndarray]:
    background = background_array(v.background, v.width, v.height)
    for i in range(v.frames):
        img = Image.fromarray(background)
        draw = ImageDraw.Draw(img)
        if v.still is not None:
            draw_shape(draw, v.still)
        changed = v.change_frame is not None and i >= v.change_frame
        draw_shape(draw, v.mover, v.rgb_after if changed else v.mover.rgb, mover_position(v, i))
        yield np.asarray(img)


def _yuv420p(rgb: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3) -> yuv420p planes stacked as (H * 3 / 2, W), BT.601 limited range (what
    decoders assume for an untagged stream). Done here in plain float32 arithmetic, so the
    encoder's input does not depend on which SIMD path swscale takes on this CPU."""
    r, g, b = (rgb[..., k].astype(np.float32) for k in range(3))
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    h, w = y.shape
    # Chroma: the mean of each 2x2 block, summed in pairs by hand: the same values as
    # .mean(axis=(1, 3)) of the (h/2, 2, w/2, 2) view (checked on 7,000 frames) at half the cost.
    half = lambda c: (((c[0::2, 0::2] + c[0::2, 1::2]) + (c[1::2, 0::2] + c[1::2, 1::2])) / 4).reshape(h // 4, w)  # noqa: E731
    return np.clip(np.round(np.concatenate([y, half(u), half(v)])), 0, 255).astype(np.uint8)


def write_video(path: Path, v: VideoSpec) -> None:
    import av  # only the video writer needs PyAV

    with atomic_path(path) as tmp:
        # bitexact: no library version in the container, so files compare across machines.
        with av.open(str(tmp), "w", format="mp4", options={"fflags": "+bitexact"}) as container:
            stream = container.add_stream("libx264", rate=v.fps, options=dict(X264_OPTIONS))
            stream.width, stream.height, stream.pix_fmt = v.width, v.height, "yuv420p"
            for array in _video_frames(v):
                container.mux(stream.encode(av.VideoFrame.from_ndarray(_yuv420p(array), format="yuv420p")))
            container.mux(stream.encode(None))


MOVE_ANSWERS = {"left": "It moves to the left.", "right": "It moves to the right.",
                "up": "It moves up.", "down": "It moves down."}
NO_MOVE = "It does not move."
DIRECTION_WORDS = {"left": ("left", "to the left", "from right to left"),
                   "right": ("right", "to the right", "from left to right"),
                   "up": ("up", "upward", "from the bottom to the top"),
                   "down": ("down", "downward", "from the top to the bottom")}


def clip_span(v: VideoSpec, part: str) -> tuple[float, float]:
    return {"whole": (0.0, v.duration), "first": (0.0, v.change_time), "second": (v.change_time, v.duration)}[part]


def video_questions(rng, v: VideoSpec) -> list[tuple[str, str, list[str], list[str], str]]:
    """(question, correct choice, wrong choices that must be offered, other wrong choices,
    part of the video it asks about)."""
    s, c1, c2 = v.mover.shape, v.mover.color, v.color_after
    combo = lambda color, shape: f"The {color} {shape}."  # noqa: E731
    still = [combo(v.still.color, v.still.shape)] if v.still else []
    others = [combo(c, sh) for c in COLORS for sh in SHAPES
              if (c, sh) not in ((c1, s), (c2, s)) and combo(c, sh) not in still]
    ref = f"{c1} {s}" if c1 == c2 and rng.random() < 0.5 else s
    asks = [
        (pick(rng, ("Which way does the {} move?", "In which direction does the {} move?",
                     "Where is the {} going?")).format(ref),
         MOVE_ANSWERS[v.direction], [], [a for d, a in MOVE_ANSWERS.items() if d != v.direction] + [NO_MOVE], "whole"),
        (pick(rng, ("What color is the {} at the end of the clip?", "What color is the {} when the clip ends?")).format(s),
         capitalized(c2), [], [capitalized(c) for c in COLORS if c != c2], "second"),
        (f"What color is the {s} at the beginning?", capitalized(c1), [], [capitalized(c) for c in COLORS if c != c1], "first"),
        (f"Does the {s} change color while it moves?",
         f"Yes, it turns {c2}." if c2 != c1 else f"No, it stays {c1}.", [f"No, it stays {c1}."] if c2 != c1 else [],
         [f"Yes, it turns {c}." for c in COLORS if c not in (c1, c2)], "whole"),
        (pick(rng, ("Which shape moves in this clip?", "What is moving?")), combo(c1, s), still, others,
         "first" if c1 != c2 else "whole"),
    ]
    if v.still is not None:
        asks.append((pick(rng, ("Which shape does not move?", f"What stays still while the {s} moves?")), still[0],
                     [combo(c1, s)], others, "whole"))
    return sample(rng, asks, int(rng.integers(2, 4)))


def make_choices(rng, correct: str, must: list[str], others: list[str], n: int) -> tuple[list[str], int]:
    """n choices in random order: the correct one, the hard negatives, then random others."""
    wrong = must + sample(rng, others, n - 1 - len(must))
    assert len(set(wrong + [correct])) == n, (correct, wrong)
    choices = [(wrong + [correct])[int(i)] for i in rng.permutation(n)]
    return choices, choices.index(correct)


MOVE_DESCS = ("{A} moves {d}.", "{A} slides {d}.", "{A} travels {d} across the screen.",
              "We see {a} moving {d}.", "The {s}, which is {c}, goes {d}.", "{A} glides {d} over {bg} background.")
CHANGE_DESCS = ("{The} moves {d} and turns {c2}.", "{A_s} slides {d}, changing from {c} to {c2}.",
                "{A} goes {d} and becomes {c2} halfway.", "Moving {d}, the {s} switches from {c} to {c2}.",
                "The {s} turns from {c} to {c2} while it moves {d}.")
STILL_DESCS = ("{A} moves {d} past {a_still} that stays still.", "{A} goes {d} while {a_still} does not move.")


def clip_descs(rng, v: VideoSpec, part: str, n: int) -> list[str]:
    color = v.color_after if part == "second" else v.mover.color
    templates = list(CHANGE_DESCS if part == "whole" and v.color_after != v.mover.color else MOVE_DESCS)
    if v.still is not None and templates[0] in MOVE_DESCS:
        templates += STILL_DESCS
    out = []
    for t in sample(rng, templates, n):
        cs = f"{color} {v.mover.shape}"
        text = t.format(A=capitalized(with_article(cs)), a=with_article(cs), The=f"The {cs}", A_s=capitalized(with_article(v.mover.shape)), s=v.mover.shape,
                        c=color, c2=v.color_after, d=pick(rng, DIRECTION_WORDS[v.direction]),
                        bg=with_article(v.background.name),
                        a_still=with_article(f"{v.still.color} {v.still.shape}") if v.still else "")
        out.append(capitalized(text))
    return out


SUBTITLE_LINES = {
    "tv": (" Alice : Look, the {s} is moving.", " Bob : Keep watching.", " Alice : Did you see that?",
           " Bob : Here it comes.", " Carol : I told you it would move.", " Bob : Wait for it."),
    "how2": ("so now we are going to watch the {s}", "and there it goes", "okay let's take a look at this",
             "you can see it move slowly", "that's all there is to it"),
    "yc2": ("first take the {s}", "then move it along gently", "keep it steady", "and that's it", "now watch closely"),
}


def make_subtitles(rng, v: VideoSpec) -> list[dict]:
    n = int(rng.integers(2, 4))
    step = v.duration / n
    return [{"text": line.format(s=v.mover.shape), "start": round(i * step + 0.1, 3), "end": round((i + 1) * step - 0.1, 3)}
            for i, line in enumerate(sample(rng, SUBTITLE_LINES[v.family], n))]


def video_names(seed: int, videos: int) -> list[tuple[str, str]]:
    """(vid_name, family): half TV-style (TVQA + TVC), a quarter each How2 and YouCook2."""
    n_how2 = max(2, videos // 4)  # as many YouCook2 clips; the rest (at least two) TV-style
    n_tv = videos - 2 * n_how2
    rng = item_rng(seed, NAMES_STREAM)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    names = [(f"demo_s01e{1 + j // 6:02d}_seg{1 + (j // 3) % 2:02d}_clip_{j % 3:02d}", "tv") for j in range(n_tv)]
    for j in range(videos - n_tv):
        family = "how2" if j < n_how2 else "yc2"
        name = ""
        while not name or (name, family) in names:  # five random letters, as YouTube-like ids
            name = f"{family}_" + "".join(pick(rng, alphabet) for _ in range(5))
        names.append((name, family))
    return names


def train_count(n: int) -> int:
    """How many of n go to train: about 75 %, and at least one each way."""
    return min(n - 1, max(1, round(n * 0.75)))

