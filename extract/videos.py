"""`vl extract videos`: sample frames by presentation time with PyAV in DataLoader
workers, pack the frames of several videos into full device batches, and store each
video's frame features with their timestamps and its duration (the `frames` layout).
The shared steps are in `pipeline`; decoding and sampling in `video_decode`."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from vl.extract.encoder import EncoderSpec, LoadedEncoder
from vl.extract.inputs import MediaInput
from vl.extract.pipeline import (
    STORE_DTYPES,
    ExtractOptions,
    ExtractSummary,
    MediaKind,
    file_signature,
    guarded,
    run_extraction,
    test_delay_s,
)
from vl.extract.store_builder import BackgroundWriter, FrameInfo, StoreBuilder
from vl.extract.video_decode import SamplingPolicy, VideoDecodeError, av_versions, decode_video
from vl.shared.progress import progress_bar
from vl.shared.stopping import check_stop, worker_signals


def extract_videos(inputs: list[MediaInput], spec: EncoderSpec, opts: ExtractOptions, policy: SamplingPolicy,
                   time_limit_s: float = 300.0, source: dict | None = None,
                   encoder: LoadedEncoder | None = None) -> ExtractSummary:
    """Extract sampled-frame features of videos into `opts.out`, skipping ids already there."""

    def run_batches(pending, encoder, builder, opts):
        return run_video_batches(pending, encoder, builder, opts, policy, time_limit_s), {}

    kind = MediaKind(name="videos", layout="frames", run_batches=run_batches,
                     preprocess={"sampling": policy.to_dict(), "decoder": "PyAV (FFmpeg)"},
                     versions=av_versions())
    return run_extraction(inputs, spec, opts, kind, source, encoder)


class VideoDataset(torch.utils.data.Dataset):
    """Item i: (i, frames (n, 3, H, W) or None, timestamps, duration, failure reason or None)."""

    def __init__(self, inputs: Sequence[MediaInput], transform: Callable, policy: SamplingPolicy,
                 time_limit_s: float, max_pixels: int, delay_s: float = 0.0):
        self.inputs, self.transform, self.policy = list(inputs), transform, policy
        self.time_limit_s, self.max_pixels, self.delay_s = time_limit_s, max_pixels, delay_s

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int):
        if self.delay_s:
            time.sleep(self.delay_s)
        try:
            video = decode_video(self.inputs[index].path, self.policy, time_limit_s=self.time_limit_s,
                                 max_pixels=self.max_pixels)
            frames = torch.stack([self.transform(im) for im in video.frames])
            return index, frames, list(video.timestamps), float(video.duration), None
        except VideoDecodeError as e:
            return index, None, [], 0.0, str(e)
        except Exception as e:  # noqa: BLE001 - a preprocessing bug must not end the run either
            return index, None, [], 0.0, f"preprocessing failed: {type(e).__name__}: {e}"


def _one(item):
    return item  # DataLoader with batch_size=None: videos arrive one by one, packing happens after


@dataclass
class FramePacker:
    """Packs the frames of consecutive videos into batches of exactly `batch_size` frames
    (the last may be smaller): a long video spans several batches, many short ones share
    one. `push` takes a video; `batches` yields (frames, [(key, start, stop), ...])."""

    batch_size: int
    _queue: list[tuple[object, torch.Tensor, int]] = field(default_factory=list)  # (key, frames, next frame)
    _buffered: int = 0

    def push(self, key: object, frames: torch.Tensor) -> None:
        self._queue.append((key, frames, 0))
        self._buffered += len(frames)

    def batches(self, final: bool = False) -> Iterator[tuple[torch.Tensor, list[tuple[object, int, int]]]]:
        while self._buffered >= self.batch_size or (final and self._buffered):
            parts, segments, room = [], [], self.batch_size
            while room and self._queue:
                key, frames, start = self._queue[0]
                take = min(room, len(frames) - start)
                parts.append(frames[start:start + take])
                segments.append((key, start, start + take))
                room -= take
                if start + take == len(frames):
                    self._queue.pop(0)
                else:
                    self._queue[0] = (key, frames, start + take)
            self._buffered -= self.batch_size - room
            yield torch.cat(parts), segments


def run_video_batches(pending: list[MediaInput], encoder: LoadedEncoder, builder: StoreBuilder,
                      opts: ExtractOptions, policy: SamplingPolicy, time_limit_s: float) -> list[dict]:
    dataset = VideoDataset(pending, encoder.transform, policy, time_limit_s, opts.max_pixels, test_delay_s())
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=opts.workers, collate_fn=_one, worker_init_fn=worker_signals,
        pin_memory=encoder.device.type == "cuda", prefetch_factor=2 if opts.workers > 0 else None,
        timeout=max(600.0, 2 * time_limit_s) if opts.workers > 0 else 0)
    store_dtype = STORE_DTYPES[opts.dtype]
    packer = FramePacker(opts.batch_size)
    videos: dict[int, dict] = {}  # index -> frames expected, chunks of features, timestamps, duration
    failures: list[dict] = []

    def encode(final: bool) -> None:
        done = []
        for frames, segments in packer.batches(final):
            features = {k: v.to(store_dtype).cpu().numpy() for k, v in encoder.encode(frames).items()}
            offset = 0
            for index, start, stop in segments:
                video = videos[index]
                video["chunks"].append({k: v[offset:offset + stop - start] for k, v in features.items()})
                offset += stop - start
                if stop == video["n"]:
                    done.append(index)
        if done:  # whole videos only go to the store
            names = videos[done[0]]["chunks"][0].keys()
            writer.add([pending[i].id for i in done],
                       {k: np.concatenate([c[k] for i in done for c in videos[i]["chunks"]]) for k in names},
                       FrameInfo([videos[i]["n"] for i in done],
                                 [t for i in done for t in videos[i]["timestamps"]],
                                 [videos[i]["duration"] for i in done]))
            for i in done:
                del videos[i]
            bar.update(len(done))

    with BackgroundWriter(builder) as writer, progress_bar(
            total=len(pending), unit="video", desc="extract", enabled=opts.progress, mininterval=0.5,
            smoothing=0.05) as bar:
        for index, frames, timestamps, duration, reason in guarded(loader):
            check_stop()  # SIGINT/SIGTERM: this chunk is dropped, the open shard committed
            if reason is not None:
                failure = {"id": pending[index].id, "path": pending[index].path, "reason": reason,
                           "file": file_signature(pending[index].path)}
                writer.add_failures([failure])
                failures.append(failure)
                bar.set_postfix(failed=len(failures), refresh=False)
                bar.update(1)
                continue
            videos[index] = {"n": len(frames), "chunks": [], "timestamps": timestamps, "duration": duration}
            packer.push(index, frames)
            encode(final=False)
        encode(final=True)
    assert not videos, "every video's frames were encoded"
    return failures
