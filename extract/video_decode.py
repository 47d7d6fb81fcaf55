"""Decoding videos into sampled RGB frames, safely in DataLoader workers: one bad video
never fails a batch.

A SamplingPolicy turns a duration into target times; decode_video returns, for each
target, the frame on screen at that time, found by presentation timestamps (so variable
frame rates and odd time bases come out right) and turned upright (display rotation).
Broken inputs (missing, empty, not a video, audio only, truncated, too large, too slow)
raise VideoDecodeError, whose message is the reason the run records.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import struct
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import av
import numpy as np
from PIL import Image

from vl.shared.media import file_error_reason, special_file_reason

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 89_478_485  # the image decoder's limit (Pillow's decompression-bomb threshold), per frame
SEEK_THRESHOLD_S = 4.0  # seek when the next target is further ahead than this; closer, decoding through is cheaper
SEEK_PREROLL_S = 1.0  # seek this far before a target: indexes may hold decode times, a few frames before display times
TRUNCATION_SLACK_S = 1.0  # frames may end this far before the last target before the video counts as truncated
_EPS = 1e-6  # a frame at t + 1e-6 still counts as on screen at t (float times from integer timestamps)
_AVFMT_NOTIMESTAMPS = 0x0080  # raw elementary streams (.h264, .m4v): no index and no timestamps to seek by
_NOT_VIDEOS = {"tty": "a text file"}  # FFmpeg demuxers that open anything, but whose "video" is not one
_AV_ERRORS = (av.error.FFmpegError, OSError, ValueError, EOFError, ArithmeticError, MemoryError)


class VideoDecodeError(Exception):
    """A video that cannot be turned into sampled RGB frames; the message is the reason."""


class _TimeUp(BaseException):
    """Raised by the alarm; a BaseException so that no `except Exception` on the way swallows it."""


@dataclass(frozen=True)
class SamplingPolicy:
    fps: float | None = 2 / 3  # target frames per second (VALUE: one frame every 1.5 s)
    frames: int | None = None  # or this many frames spread uniformly over the video (wins over fps)
    max_frames: int = 64  # cap: more targets than this are subsampled uniformly

    def __post_init__(self):
        problems = []
        if self.fps is None and self.frames is None:
            problems.append("give fps or frames")
        if self.fps is not None and not (isinstance(self.fps, (int, float)) and math.isfinite(self.fps)
                                         and self.fps > 0):
            problems.append(f"fps must be a number > 0, got {self.fps!r}")
        if self.frames is not None and not (_is_int(self.frames) and self.frames >= 1):
            problems.append(f"frames must be an integer >= 1, got {self.frames!r}")
        if not (_is_int(self.max_frames) and self.max_frames >= 1):
            problems.append(f"max_frames must be an integer >= 1, got {self.max_frames!r}")
        if problems:
            raise ValueError("invalid sampling policy: " + "; ".join(problems))

    def target_times(self, duration: float) -> list[float]:
        """Seconds from the start of the video, increasing; at least one (t = 0 in fps mode)."""
        if not (isinstance(duration, (int, float)) and math.isfinite(duration) and duration >= 0):
            raise ValueError(f"duration must be a finite number >= 0, got {duration!r}")
        if self.frames is not None:
            n, time_of = self.frames, lambda k: (k + 0.5) * duration / self.frames
        else:
            n, time_of = _count_below(duration, self.fps), lambda k: k / self.fps
        # The cap picks indices without listing all n targets (a bogus duration can make n huge).
        ks = np.round(np.linspace(0, n - 1, self.max_frames)).astype(np.int64) if n > self.max_frames else range(n)
        return [float(time_of(int(k))) for k in ks]

    def to_dict(self) -> dict:
        if self.frames is not None:
            mode = "frames"  # fps is kept below as given, though it does not apply
            targets = f"t_k = (k + 0.5) * duration / {self.frames} for k = 0 .. {self.frames - 1} (centres of parts)"
        else:
            mode = "fps"
            targets = (f"t_k = k / fps for k = 0, 1, ... while t_k < duration (one every {1 / self.fps:g} s; "
                       "t = 0 always)")
        rule = (f"{targets}; over max_frames targets, keep those at indices round(linspace(0, n - 1, max_frames)); "
                "each target takes the frame shown at t (the last frame with presentation time <= t, or the first "
                "frame when t precedes it), times from pts * time_base relative to the stream start; a frame taken "
                "by several targets is kept once")
        return {"mode": mode, "fps": self.fps, "frames": self.frames, "max_frames": self.max_frames, "rule": rule}


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _count_below(duration: float, fps: float) -> int:
    """How many k >= 0 have k / fps < duration; at least 1."""
    n = max(1, math.ceil(duration * fps))
    while n > 1 and (n - 1) / fps >= duration:
        n -= 1
    while n / fps < duration:
        n += 1
    return n


@dataclass
class DecodedVideo:
    frames: list[Image.Image]  # RGB, upright
    timestamps: list[float]  # seconds from the start of the video stream, one per frame, increasing
    duration: float  # seconds


def av_versions() -> dict:
    """PyAV and FFmpeg versions, for the provenance of features made from decoded frames."""
    out = {"pyav": av.__version__, "ffmpeg": getattr(av, "ffmpeg_version_info", None)}
    out.update({name: ".".join(map(str, v)) for name, v in sorted(av.library_versions.items())})
    return out


def decode_video(path: str, policy: SamplingPolicy, *, time_limit_s: float = 300.0,
                 max_pixels: int = DEFAULT_MAX_PIXELS, _seek_threshold_s: float = SEEK_THRESHOLD_S) -> DecodedVideo:
    """The frames on screen at policy.target_times(duration), or VideoDecodeError saying why not.

    The time limit is enforced by SIGALRM in the main thread (it interrupts Python code
    between frames, not a single long FFmpeg call), by the clock between frames elsewhere.
    """
    if not time_limit_s > 0:
        raise ValueError(f"time_limit_s must be > 0, got {time_limit_s!r}")
    _check_file(path)
    try:
        with _time_limit(time_limit_s) as deadline:
            return _Sampler(path, max_pixels, deadline).run(policy, _seek_threshold_s)
    except _TimeUp:
        raise VideoDecodeError(f"decoding took longer than the time limit of {time_limit_s:g} s") from None


def _check_file(path: str) -> None:
    try:
        st = os.stat(path)
    except OSError as e:
        raise VideoDecodeError(file_error_reason(e, "a video file") or f"cannot read: {_short(e)}") from None
    if os.path.isdir(path):
        raise VideoDecodeError(file_error_reason(IsADirectoryError(path), "a video file"))
    special = special_file_reason(path, "a video file")
    if special:
        raise VideoDecodeError(special)
    if st.st_size == 0:
        raise VideoDecodeError("empty file (0 bytes)")


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[float]:
    """Yields the deadline (time.monotonic()); arms SIGALRM when it can, restoring the
    previous handler and timer afterwards."""
    start = time.monotonic()
    use_alarm = (math.isfinite(seconds) and hasattr(signal, "setitimer")
                 and threading.current_thread() is threading.main_thread())
    if not use_alarm:
        yield start + seconds
        return

    armed = True

    def on_alarm(signum, frame):
        if armed:  # not once we are cleaning up: the restoring below must run to the end
            raise _TimeUp

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield start + seconds
    finally:
        try:
            armed = False
        finally:  # the one-shot alarm may have fired just above; it cannot fire twice
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_handler if old_handler is not None else signal.SIG_DFL)
            if old_delay > 0:  # someone else's timer: give back what is left of it (fires at once if spent)
                signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - start), 1e-6), old_interval)


@dataclass
class _Frame:
    time: float  # seconds from the stream start
    frame: av.VideoFrame


class _Sampler:
    """One video: opens it, finds its duration, walks its frames (seeking over long gaps)."""

    def __init__(self, path: str, max_pixels: int, deadline: float):
        self.path, self.max_pixels, self.deadline = path, max_pixels, deadline
        self.container = self.stream = None
        self.failed_packets, self.first_failure, self.read_failure = 0, "", ""  # for the reason, if it comes to one
        self.seekable = False  # by timestamps, through an index: not raw streams, nor frames without pts
        self.end_seen = 0.0  # where the latest decoded frame ends (its time + its duration)

    def run(self, policy: SamplingPolicy, seek_threshold_s: float) -> DecodedVideo:
        try:
            self._open()
            duration, source = self._header_duration()
            self.seekable = not self.container.format.flags & _AVFMT_NOTIMESTAMPS
            if duration is None:
                duration, source = self._demuxed_duration(), "the packets' timestamps (demuxed, not decoded)"
                self._open()
            if duration is None:  # no timestamps on the packets either (a raw stream): count the frames
                duration, source = self._decoded_duration(), "decoding every frame"
                self._open()
            log.debug("%s: duration %.3f s from %s", self.path, duration, source)
            targets = policy.target_times(duration)
            chosen = self._sample(targets, seek_threshold_s, duration)
            return DecodedVideo([image for _, image in chosen], [t for t, _ in chosen], duration)
        except _AV_ERRORS as e:
            raise VideoDecodeError(f"cannot decode: {_short(e)}") from None
        finally:
            if self.container is not None:
                self.container.close()

    def _open(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None
        try:
            container = av.open(self.path, metadata_errors="ignore")
        except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
            raise VideoDecodeError(file_error_reason(e, "a video file")) from None
        except av.error.InvalidDataError:
            if _mp4_without_moov(self.path):
                raise VideoDecodeError("incomplete MP4: no moov atom (its index; the file was cut short or never "
                                       "finished)") from None
            raise VideoDecodeError("not a video FFmpeg can read") from None
        except _AV_ERRORS as e:
            raise VideoDecodeError(f"cannot open: {_short(e)}") from None
        self.container = container
        if container.format.name in _NOT_VIDEOS:
            raise VideoDecodeError(f"not a video FFmpeg can read ({_NOT_VIDEOS[container.format.name]})")
        videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
        if not videos:
            audio, art = container.streams.audio, container.streams.video
            raise VideoDecodeError("no video stream" + (" (audio with cover art only)" if audio and art else
                                                         " (audio only)" if audio else ""))
        self.stream = videos[0]
        self._check_size(self.stream.codec_context.width, self.stream.codec_context.height)
        self.time_base = self.stream.time_base or Fraction(1, av.time_base)
        self.origin = self.stream.start_time or 0  # times count from the stream's start, as the pts do
        rate = self.stream.guessed_rate or self.stream.average_rate
        self.step = 1 / Fraction(rate) if rate else Fraction(1, 25)  # a frame's duration when it carries none
        self.next_time = Fraction(0)  # for frames without pts: just after the previous one (exact sums)

    def _check_size(self, w: int, h: int) -> None:
        if w * h > self.max_pixels:
            raise VideoDecodeError(f"frame is {w}x{h} = {w * h:,} pixels, over the limit of {self.max_pixels:,} "
                                   "(a decompression bomb guard; raise --max-pixels if the video is genuine)")

    def _header_duration(self) -> tuple[float | None, str]:
        s = self.stream
        if s.duration and s.duration > 0:
            return float(s.duration * self.time_base), "the video stream's header"
        tag = _clock_seconds(s.metadata.get("DURATION", ""))
        if tag:  # Matroska / WebM keep each stream's duration as a tag
            return tag, "the video stream's DURATION tag"
        if self.container.duration and self.container.duration > 0:
            return self.container.duration / av.time_base, "the container header"
        return None, ""

    def _demuxed_duration(self) -> float | None:
        first = end = None
        for packet in self.container.demux(self.stream):
            self._check_deadline()
            if packet.pts is None:
                continue
            first = packet.pts if first is None else min(first, packet.pts)
            packet_end = packet.pts + (packet.duration or 0)
            end = packet_end if end is None else max(end, packet_end)
        if end is None:
            return None
        origin = self.stream.start_time if self.stream.start_time is not None else first
        return float((end - origin) * self.time_base)

    def _decoded_duration(self) -> float:
        if sum(1 for _ in self._frames()) == 0:  # every frame decoded, for end_seen
            raise VideoDecodeError(self._no_frames())
        return self.end_seen

    def _decoded(self) -> Iterator[av.VideoFrame]:
        """Frames in presentation order. A packet FFmpeg cannot decode is skipped, as the ffmpeg
        command does (a later keyframe recovers); a read error ends the data there."""
        packets = self.container.demux(self.stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except _AV_ERRORS as e:
                self.read_failure = _short(e)
                packet = None  # flush the decoder: the frames it holds are good
            try:
                frames = self.stream.decode(packet)
            except _AV_ERRORS as e:
                self.failed_packets += 1
                self.first_failure = self.first_failure or _short(e)
                frames = []
            yield from frames
            if packet is None:
                return

    def _frames(self) -> Iterator[_Frame]:
        """The decoded frames with their times."""
        for frame in self._decoded():
            self._check_deadline()
            self._check_size(frame.width, frame.height)
            if frame.pts is not None:
                t = (frame.pts - self.origin) * self.time_base
            else:  # counted, not read: such times would be wrong after a seek
                t, self.seekable = self.next_time, False
            dur = frame.duration * self.time_base if frame.duration else Fraction(0)
            self.next_time = t + (dur or self.step)
            self.end_seen = max(self.end_seen, float(self.next_time))
            yield _Frame(float(t), frame)

    def _check_deadline(self) -> None:
        if time.monotonic() > self.deadline:
            raise _TimeUp

    def _sample(self, targets: list[float], threshold: float, duration: float) -> list[tuple[float, Image.Image]]:
        """For each target, the last frame with time <= t (or the first frame); each frame once."""
        chosen: list[tuple[float, Image.Image]] = []

        def take(f: _Frame) -> None:  # converted at once: decoded frames are not held (64 of 4K would be 1 GB)
            if not chosen or f.time > chosen[-1][0]:
                chosen.append((f.time, self._image(f.frame)))
            assert f.time >= chosen[-1][0], (f.time, chosen[-1][0])

        frames = self._frames()
        prev = pending = None  # the last frame at or before the current target; the first one after it
        position = 0.0  # time of the last decoded frame
        i, ran_out = 0, False
        while i < len(targets) and not ran_out:
            t = targets[i]
            if self.seekable and t - position > threshold:
                frames, pending = self._seek(frames, t)
                prev = None
                if pending is not None:
                    position = pending.time
                    # A keyframe that far back can come again: seek only over gaps longer than that.
                    threshold = max(threshold, t - position)
            elif pending is None:
                pending = next(frames, None)
                if pending is not None:
                    position = pending.time
            if pending is None:
                ran_out = True
            elif pending.time <= t + _EPS:
                prev, pending = pending, None
            else:
                take(prev if prev is not None else pending)  # prev is None only at the stream's first frame
                i += 1
        if ran_out:  # the remaining targets take the last frame, unless the frames ended long before them
            if prev is not None:
                take(prev)
            if not chosen:
                raise VideoDecodeError(self._no_frames())
            if targets[-1] - self.end_seen > TRUNCATION_SLACK_S:
                raise VideoDecodeError(f"truncated: decoded frames end at {self.end_seen:.2f} s, before the sample "
                                       f"at {targets[-1]:.2f} s of the {duration:.2f} s the metadata promises"
                                       + self._problems())
        return chosen

    def _seek(self, frames: Iterator[_Frame], t: float) -> tuple[Iterator[_Frame], _Frame | None]:
        """New frames from a keyframe at or before t, and the first of them (None: nothing after).
        The index may land after t (decode vs display times, inexact seeking in MPEG-TS): then
        seek further back, down to the start if need be."""
        back = SEEK_PREROLL_S
        while True:
            frames.close()
            to = max(t - back, 0.0)
            log.debug("%s: seek to %.3f s for a target at %.3f s", self.path, to, t)
            try:
                self.container.seek(self.origin + math.floor(Fraction(to) / self.time_base), backward=True,
                                    stream=self.stream)
            except _AV_ERRORS as e:  # decode from the start instead, without seeking again
                log.debug("%s: seek failed (%s); decoding from the start", self.path, _short(e))
                self._open()
                self.seekable, to = False, 0.0
            frames = self._frames()
            first = next(frames, None)
            if to == 0.0 or (first is not None and first.time <= t + _EPS):
                return frames, first
            back = max(4 * back, 1.0)

    def _image(self, frame: av.VideoFrame) -> Image.Image:
        image = frame.to_image()  # RGB
        # frame.rotation: degrees the display matrix turns the picture counterclockwise (FFmpeg's
        # av_display_rotation_get); PIL's ROTATE_90 turns counterclockwise too. Flips are not applied.
        quarter = round((frame.rotation or 0) / 90) % 4
        if quarter:
            image = image.transpose((None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                                     Image.Transpose.ROTATE_270)[quarter])
        return image

    def _no_frames(self) -> str:
        return "no decodable frames" + self._problems()

    def _problems(self) -> str:
        said = []
        if self.failed_packets:
            plural = "s" if self.failed_packets > 1 else ""
            said.append(f"{self.failed_packets} undecodable packet{plural}: {self.first_failure}")
        if self.read_failure:
            said.append(f"reading failed: {self.read_failure}")
        return f" ({'; '.join(said)})" if said else ""


def _clock_seconds(text: str) -> float | None:
    """'00:01:02.500000000' -> 62.5"""
    m = re.fullmatch(r"\s*(\d+):(\d\d):(\d\d(?:\.\d+)?)\s*", text)
    if not m:
        return None
    seconds = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    return seconds if seconds > 0 else None


def _mp4_without_moov(path: str) -> bool:
    """An MP4/MOV (first box ftyp) whose top-level boxes hold no moov: cut before its index
    was written (the default, unless +faststart moves it to the front)."""
    try:
        with open(path, "rb") as f:
            size_total, pos, first = os.fstat(f.fileno()).st_size, 0, True
            while pos + 8 <= size_total:
                f.seek(pos)
                size, kind = struct.unpack(">I4s", f.read(8))
                if first and kind != b"ftyp":
                    return False
                first = False
                if kind == b"moov":
                    return False
                if size == 1:
                    size = struct.unpack(">Q", f.read(8))[0]
                elif size == 0:  # runs to the end of the file
                    break
                if size < 8:
                    break
                pos += size
            return not first
    except (OSError, struct.error):
        return False


def _short(e: BaseException) -> str:
    """FFmpeg's own words without the file name, or the exception's type and message."""
    if isinstance(e, av.error.FFmpegError) and getattr(e, "strerror", None):
        text = e.strerror
    else:
        text = f"{type(e).__name__}: {e}"
    return text if len(text) <= 200 else text[:197] + "..."
