"""Video decoding: target times, frame choice by presentation time (constant and variable
frame rates, odd time bases), seeking equal to decoding through, display rotation, and
every bad input with its reason. The videos are written here with PyAV; each frame
paints its own index as black and white stripes, so a test can tell which one came back."""
from __future__ import annotations

import io
import json
import logging
import math
import re
import signal
import struct
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vl.extract import video_decode
from vl.extract.video_decode import (
    DecodedVideo, SamplingPolicy, VideoDecodeError, av_versions, decode_video,
)

BITS, STRIPE = 10, 8  # frame index as 10 stripes of 8 px: 80 px wide, up to 1023 frames
LOGGER = "vl.extract.video_decode"
NO_B_FRAMES = {"x264-params": "bframes=0"}  # see test_variable_frame_rate


# --------------------------------------------------------------------------- writing test videos

def indexed(i: int, width: int = BITS * STRIPE, height: int = 16) -> np.ndarray:
    bits = np.array([(i >> b) & 1 for b in range(BITS)], np.uint8) * 255
    return np.repeat(np.repeat(bits, STRIPE)[None, :, None], height, 0).repeat(3, 2)[:, :width]


def index_of(image) -> int:
    grey = np.asarray(image.convert("L"), np.float32)
    return sum(1 << b for b in range(BITS) if grey[:, b * STRIPE + 2: b * STRIPE + 6].mean() > 128)


def quadrants(width: int, height: int) -> np.ndarray:
    """Red, green / blue, white: tells every rotation and flip apart."""
    a = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    a[:h, :w], a[:h, w:], a[h:, :w], a[h:, w:] = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
    return a


def write_video(path, pts, time_base=Fraction(1, 10), *, fmt=None, size=(80, 16), pix_fmt="yuv420p",
                codec="libx264", options=None, container_options=None, arrays=None, setup=None, target=None):
    """Frame i shows arrays[i] (default: its index in stripes) at pts[i] * time_base."""
    w, h = size
    with av.open(target if target is not None else str(path), "w", format=fmt,
                 options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=round(1 / time_base) or 1, options=options or {})
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.codec_context.time_base = time_base
        if setup:
            setup(stream)
        for i, p in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(arrays[i] if arrays is not None else indexed(i, w, h), format="rgb24")
            frame.pts, frame.time_base = p, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def cfr(path, seconds: float, fps: int = 10, **kw):
    return write_video(path, range(round(seconds * fps)), Fraction(1, fps), **kw)


def indices(d: DecodedVideo) -> list[int]:
    return [index_of(im) for im in d.frames]


def on_screen(times: list[float], targets: list[float]) -> list[int]:
    """The reference rule: the last frame with time <= t, or the first; each frame once."""
    out = []
    for t in targets:
        i = max([k for k, s in enumerate(times) if s <= t + 1e-6], default=0)
        if not out or i != out[-1]:
            out.append(i)
    return out


def reason(path, policy=SamplingPolicy(), **kw) -> str:
    with pytest.raises(VideoDecodeError) as e:
        decode_video(str(path), policy, **kw)
    return str(e.value)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    gop = {"x264-params": "keyint=20:min-keyint=20:scenecut=0"}  # a keyframe every 2 s; B-frames on
    return {
        "cfr": cfr(root / "cfr.mp4", 3.0),
        "long.mp4": cfr(root / "long.mp4", 30.0, options=gop),
        "long.ts": cfr(root / "long.ts", 30.0, fmt="mpegts", options=gop),
    }


# --------------------------------------------------------------------------- target times

def test_fps_targets_every_interval_while_before_the_end():
    p = SamplingPolicy()  # VALUE: 2/3 fps, one frame every 1.5 s
    assert p.target_times(3.0) == [0.0, 1.5]
    assert p.target_times(3.01) == [0.0, 1.5, 3.0]
    assert p.target_times(10.0) == [0.0, 1.5, 3.0, 4.5, 6.0, 7.5, 9.0]
    assert SamplingPolicy(fps=2).target_times(1.0) == [0.0, 0.5]


@pytest.mark.parametrize("duration", [0.0, 0.04, 1.0, 1.5])
def test_video_shorter_than_one_interval_gives_t0(duration):
    assert SamplingPolicy().target_times(duration) == [0.0]


def test_frames_mode_takes_centres_and_wins_over_fps():
    assert SamplingPolicy(frames=4).target_times(8.0) == [1.0, 3.0, 5.0, 7.0]
    assert SamplingPolicy(fps=5, frames=2).target_times(10.0) == [2.5, 7.5]
    assert SamplingPolicy(frames=1).target_times(0.0) == [0.0]


def test_cap_keeps_uniformly_spread_targets():
    # round(linspace(0, 99, 5)) = 0, 25 (24.75), 50 (49.5, to even), 74 (74.25), 99
    assert SamplingPolicy(fps=1, max_frames=5).target_times(100.0) == [0.0, 25.0, 50.0, 74.0, 99.0]
    assert SamplingPolicy(frames=10, max_frames=3).target_times(10.0) == [0.5, 4.5, 9.5]
    assert len(SamplingPolicy().target_times(3600.0)) == 64
    assert SamplingPolicy(fps=1, max_frames=1).target_times(50.0) == [0.0]
    huge = SamplingPolicy(fps=30).target_times(1e9)  # a bogus duration must not list 3e10 targets
    assert len(huge) == 64 and huge[-1] == pytest.approx(1e9, abs=1)


@pytest.mark.parametrize("kwargs, words", [
    (dict(fps=0), "fps must be"), (dict(fps=-1.0), "fps must be"), (dict(fps=math.nan), "fps must be"),
    (dict(frames=0), "frames must be"), (dict(frames=2.5), "frames must be"), (dict(max_frames=0), "max_frames"),
    (dict(fps=None, frames=None), "give fps or frames"),
])
def test_policy_rejects_bad_values(kwargs, words):
    with pytest.raises(ValueError, match=words):
        SamplingPolicy(**kwargs)


def test_target_times_reject_a_bad_duration():
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="duration"):
            SamplingPolicy().target_times(bad)


def test_to_dict_states_the_rule_and_rebuilds_the_policy():
    for policy in (SamplingPolicy(), SamplingPolicy(frames=8, max_frames=4)):
        d = json.loads(json.dumps(policy.to_dict()))
        assert SamplingPolicy(**{k: d[k] for k in ("fps", "frames", "max_frames")}) == policy
        assert "frame shown at t" in d["rule"] and "round(linspace(0, n - 1, max_frames))" in d["rule"]
    assert "t_k = k / fps" in SamplingPolicy().to_dict()["rule"]
    assert SamplingPolicy(frames=8).to_dict()["mode"] == "frames"


def test_av_versions_for_provenance():
    v = av_versions()
    assert v["pyav"] == av.__version__ and {"libavcodec", "libavformat", "libswscale"} <= set(v)


# --------------------------------------------------------------------------- choosing frames

def test_constant_frame_rate(videos):
    d = decode_video(str(videos["cfr"]), SamplingPolicy())
    assert (indices(d), d.timestamps, d.duration) == ([0, 15], [0.0, 1.5], 3.0)
    assert all(im.mode == "RGB" and im.size == (80, 16) for im in d.frames)
    d = decode_video(str(videos["cfr"]), SamplingPolicy(frames=4))  # 0.375, 1.125, 1.875, 2.625
    assert indices(d) == [3, 11, 18, 26] and d.timestamps == pytest.approx([0.3, 1.1, 1.8, 2.6])


def test_targets_on_the_same_frame_give_it_once(videos):
    d = decode_video(str(videos["cfr"]), SamplingPolicy(fps=25, max_frames=100))  # 75 targets, 30 frames
    assert indices(d) == list(range(30))
    assert np.all(np.diff(d.timestamps) > 0)


VFR_MS = [0, 40, 100, 250, 260, 700, 1500, 1510, 2600, 3000]  # irregular gaps, 10 ms to 1.1 s


@pytest.mark.parametrize("fmt, time_base, pts, stored", [
    ("mp4", Fraction(1, 1000), VFR_MS, None),
    # 29.97 fps NTSC ticks, with frames dropped
    ("mp4", Fraction(1001, 30000), [0, 1, 2, 5, 9, 10, 30, 31, 60, 90], Fraction(1, 30000)),
    # MPEG-TS: 1/90000, and a stream that starts at 10 s: times count from there
    ("mpegts", Fraction(1, 90000), [900_000 + 90 * ms for ms in VFR_MS], Fraction(1, 90000)),
])
def test_variable_frame_rate_and_odd_time_bases(tmp_path, fmt, time_base, pts, stored):
    # Without B-frames: with them and irregular pts, the MP4 muxer's track duration comes
    # from compressed decode times (1.7 s for these 3.1 s), and every reader trusts it.
    path = write_video(tmp_path / f"vfr.{fmt}", pts, time_base, fmt=fmt, options=NO_B_FRAMES)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert stored is None or (s.time_base, s.start_time) == (stored, pts[0])
    times = [float((p - pts[0]) * time_base) for p in pts]
    for policy in (SamplingPolicy(fps=4), SamplingPolicy(frames=7), SamplingPolicy(fps=40, max_frames=200)):
        d = decode_video(str(path), policy)
        assert d.duration == pytest.approx(times[-1] + 0.1, abs=0.05) or d.duration > times[-1]
        expected = on_screen(times, policy.target_times(d.duration))
        assert indices(d) == expected, policy
        assert d.timestamps == pytest.approx([times[i] for i in expected], abs=1e-6)
    assert indices(decode_video(str(path), SamplingPolicy(fps=40, max_frames=200))) == list(range(len(pts)))


# --------------------------------------------------------------------------- seeking

@pytest.mark.parametrize("name", ["long.mp4", "long.ts"])  # MPEG-TS seeks land late: checked and redone
@pytest.mark.parametrize("policy, threshold", [
    (SamplingPolicy(fps=0.2), 4.0), (SamplingPolicy(frames=7), 4.0), (SamplingPolicy(fps=1 / 6, max_frames=3), 4.0),
    (SamplingPolicy(fps=1 / 4.05), 2.5),  # targets 0.05 s (and 0.1 s) after keyframes, a seek for each
], ids=["every5s", "frames7", "capped", "after-keyframes"])
def test_seeking_gives_what_decoding_through_gives(videos, caplog, name, policy, threshold):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    seeking = decode_video(str(videos[name]), policy, _seek_threshold_s=threshold)
    assert "seek to" in caplog.text
    caplog.clear()
    through = decode_video(str(videos[name]), policy, _seek_threshold_s=math.inf)
    assert "seek to" not in caplog.text
    assert seeking.timestamps == through.timestamps
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(seeking.frames, through.frames))
    assert len(seeking.frames) == len(through.frames)
    expected = [math.floor(t * 10 + 1e-6) for t in policy.target_times(30.0)]
    assert indices(seeking) == expected and seeking.duration == pytest.approx(30.0)


# --------------------------------------------------------------------------- rotation, sizes

QT_MATRICES = {  # (a, b, c, d) of ISO/IEC 14496-12's tkhd matrix: (p, q) -> (a p + c q, b p + d q)
    "clockwise": (0, 1, -1, 0),  # what phones write for portrait video
    "counterclockwise": (0, -1, 1, 0),
    "half turn": (-1, 0, 0, -1),
}


def displayed(pixels: np.ndarray, a, b, c, d) -> np.ndarray:
    """The picture as the matrix says to show it (screen y grows downwards)."""
    q, p = np.mgrid[0:pixels.shape[0], 0:pixels.shape[1]]
    p2, q2 = a * p + c * q, b * p + d * q
    p2, q2 = p2 - p2.min(), q2 - q2.min()
    out = np.zeros((q2.max() + 1, p2.max() + 1, 3), pixels.dtype)
    out[q2, p2] = pixels[q, p]
    return out


def close_to(image, expected: np.ndarray) -> bool:
    got = np.asarray(image, np.float32)
    return got.shape == expected.shape and np.abs(got - expected).mean() < 12


@pytest.mark.parametrize("turn", list(QT_MATRICES))
def test_display_matrix_is_applied(tmp_path, turn):
    a, b, c, d = QT_MATRICES[turn]
    pattern = quadrants(64, 32)
    fixed = [a * 65536, b * 65536, 0, c * 65536, d * 65536, 0, 0, 0, 1 << 30]  # 16.16, last column 2.30
    path = write_video(tmp_path / "rot.mp4", range(3), size=(64, 32), arrays=[pattern] * 3,
                       setup=lambda s: s.set_display_matrix(fixed))
    expected = displayed(pattern, a, b, c, d)
    if turn == "clockwise":  # the sign: FFmpeg calls it -90 (counterclockwise degrees)
        assert np.array_equal(expected, np.rot90(pattern, k=-1))
        with av.open(str(path)) as container:
            assert next(container.decode(video=0)).rotation == -90
    d_ = decode_video(str(path), SamplingPolicy())
    assert d_.frames[0].size == (expected.shape[1], expected.shape[0])
    assert close_to(d_.frames[0], expected)


def test_set_display_rotation_means_counterclockwise(tmp_path):
    pattern = quadrants(64, 32)
    path = write_video(tmp_path / "rot.mp4", range(2), size=(64, 32), arrays=[pattern] * 2,
                       setup=lambda s: s.set_display_rotation(90))
    image = decode_video(str(path), SamplingPolicy()).frames[0]
    assert image.size == (32, 64) and close_to(image, displayed(pattern, *QT_MATRICES["counterclockwise"]))


def test_4k_frame(tmp_path):
    pattern = quadrants(3840, 2160)
    path = write_video(tmp_path / "4k.mp4", [0], size=(3840, 2160), arrays=[pattern],
                       options={"preset": "ultrafast"})
    d = decode_video(str(path), SamplingPolicy())
    assert d.frames[0].size == (3840, 2160) and close_to(d.frames[0], pattern)
    assert "3840x2160 = 8,294,400 pixels, over the limit of 2,073,600" in reason(path, max_pixels=1920 * 1080)


def test_odd_sized_video(tmp_path):
    pattern = quadrants(97, 61)
    path = write_video(tmp_path / "odd.mp4", range(3), size=(97, 61), pix_fmt="yuv444p", arrays=[pattern] * 3)
    d = decode_video(str(path), SamplingPolicy())
    assert d.frames[0].size == (97, 61) and close_to(d.frames[0], pattern)


def test_one_frame_video(tmp_path):
    path = cfr(tmp_path / "one.mp4", 0.1)
    for policy in (SamplingPolicy(), SamplingPolicy(frames=5)):
        d = decode_video(str(path), policy)
        assert (indices(d), d.timestamps) == ([0], [0.0])


def test_video_shorter_than_one_interval_gives_exactly_one_frame(tmp_path):
    d = decode_video(str(cfr(tmp_path / "short.mp4", 0.5)), SamplingPolicy())
    assert (indices(d), d.timestamps, d.duration) == ([0], [0.0], 0.5)


# --------------------------------------------------------------------------- no duration in the file

class _Unseekable(io.RawIOBase):
    """A pipe-like output: the Matroska muxer cannot go back to write durations."""

    def __init__(self, f):
        self.f = f

    def writable(self):
        return True

    def write(self, b):
        return self.f.write(b)


def test_raw_h264_without_duration_or_timestamps(tmp_path):
    path = cfr(tmp_path / "raw.h264", 3.0, fmt="h264")
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.duration is None and c.duration is None and not s.metadata.get("DURATION")
        assert all(p.pts is None for p in c.demux(s))  # nothing to read a duration from but the frames
    d = decode_video(str(path), SamplingPolicy())
    assert (indices(d), d.timestamps) == ([0, 15], [0.0, 1.5]) and d.duration == pytest.approx(3.0)


def test_matroska_written_to_a_pipe_has_no_duration(tmp_path, caplog):
    path = tmp_path / "pipe.mkv"
    with open(path, "wb") as f:
        cfr(None, 3.0, fmt="matroska", target=_Unseekable(f))
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.duration is None and c.duration is None and not s.metadata.get("DURATION")
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    d = decode_video(str(path), SamplingPolicy(frames=3))
    assert "demuxed" in caplog.text
    assert indices(d) == [5, 15, 25] and d.duration == pytest.approx(3.0)


# --------------------------------------------------------------------------- bad inputs

def _moov_offset(data: bytes) -> int:
    pos = 0
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"moov":
            return pos
        pos += size
    raise AssertionError("no moov")


def test_missing_and_empty_and_not_a_video(tmp_path):
    assert reason(tmp_path / "nope.mp4") == "file not found"
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert reason(tmp_path / "empty.mp4") == "empty file (0 bytes)"
    assert reason(tmp_path) == "is a folder, not a video file"
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    assert reason(tmp_path / "noise.mp4") == "not a video FFmpeg can read"
    (tmp_path / "notes.txt").write_text("not a video\n" * 50)
    assert reason(tmp_path / "notes.txt") == "not a video FFmpeg can read (a text file)"


def test_mp4_cut_before_its_moov(tmp_path, videos):
    data = videos["cfr"].read_bytes()  # PyAV writes the moov (the index) last
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "no_moov.mp4").write_bytes(data[: _moov_offset(data)])  # every frame there, no index
    for name in ("half.mp4", "no_moov.mp4"):
        assert reason(tmp_path / name).startswith("incomplete MP4: no moov atom")


def test_truncated_mp4_with_its_index_in_front(tmp_path):
    noise = np.random.default_rng(0).integers(0, 64, (60, 16, 80, 3), np.uint8)  # frames weigh more than the index
    full = cfr(tmp_path / "full.mp4", 6.0, container_options={"movflags": "+faststart"},
               arrays=[indexed(i) // 4 * 3 + noise[i] for i in range(60)])
    data = full.read_bytes()
    assert _moov_offset(data) < 100 and len(data) > 15_000
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    why = reason(tmp_path / "cut.mp4")  # the index promises 6 s, so targets up to 4.5 s
    m = re.fullmatch(r"truncated: decoded frames end at (\d+\.\d\d) s, before the sample at 4\.50 s of the "
                     r"6\.00 s the metadata promises.*", why)
    assert m and float(m[1]) < 3.5, why
    # Cut near the end: the frames still cover the last target (4.5 s), so the video extracts.
    (tmp_path / "nearly.mp4").write_bytes(data[: len(data) * 9 // 10])
    assert decode_video(str(tmp_path / "nearly.mp4"), SamplingPolicy()).timestamps == [0.0, 1.5, 3.0, 4.5]


def test_audio_only_file(tmp_path):
    path = tmp_path / "speech.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    assert reason(path) == "no video stream (audio only)"


def test_no_decodable_frames(tmp_path, videos):
    data = bytearray(videos["cfr"].read_bytes())
    at = data.find(b"mdat") + 4
    size = int.from_bytes(data[at - 8: at - 4], "big")
    data[at: at + size - 8] = bytes(size - 8)  # header and index intact, every frame zeroed
    (tmp_path / "zeroed.mp4").write_bytes(data)
    assert reason(tmp_path / "zeroed.mp4").startswith("no decodable frames")


# --------------------------------------------------------------------------- time limit

SLOW = dict(policy=SamplingPolicy(fps=10, max_frames=300), time_limit_s=1e-4, _seek_threshold_s=math.inf)
TIME_UP = "decoding took longer than the time limit of 0.0001 s"


def test_time_limit_by_alarm_restores_the_previous_handler_and_timer(videos, monkeypatch):
    def theirs(signum, frame):
        raise AssertionError("the caller's timer fired")

    monkeypatch.setattr(video_decode._Sampler, "_check_deadline", lambda self: None)  # the alarm alone
    saved = signal.signal(signal.SIGALRM, theirs)
    signal.setitimer(signal.ITIMER_REAL, 100.0)
    try:
        assert reason(videos["long.mp4"], **SLOW) == TIME_UP
        assert signal.getsignal(signal.SIGALRM) is theirs
        assert 90.0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 100.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, saved)
    decode_video(str(videos["cfr"]), SamplingPolicy())  # and a normal run leaves nothing armed
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and signal.getsignal(signal.SIGALRM) is saved


def test_time_limit_outside_the_main_thread_checks_the_clock(videos):
    out = []

    def work():
        try:
            decode_video(str(videos["long.mp4"]), **SLOW)
        except VideoDecodeError as e:
            out.append(str(e))

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert out == [TIME_UP]
