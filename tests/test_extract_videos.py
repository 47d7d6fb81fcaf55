"""`vl extract videos` on the demo world's MP4s with a tiny ViT: frame features with
timestamps, packing across videos, bad inputs, refusal, kill and resume, torchrun."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import torch

from conftest import model_args, run_vl, vl_subprocess
from vl.extract.videos import FramePacker
from vl.shared import FeatureStore
from vl.shared.feature_store import parts_dir


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    from vl.data_manifests.demo import write_demo_world

    root = tmp_path_factory.mktemp("videoworld")
    write_demo_world(root, images=8, videos=6, seed=3)
    return root / "videos"


def _args(tiny_models, folder, out, *extra, fps=2):
    sampling = ["--fps", fps] if fps else []
    return ["extract", "videos", "--videos", folder, "--out", out, *model_args(tiny_models, "tiny-vit"),
            *sampling, "--max-frames", 8, "--workers", 0, "--dtype", "float32", *map(str, extra)]


def test_packer_fills_batches_across_videos_and_splits_long_ones():
    packer = FramePacker(batch_size=4)
    packer.push("a", torch.arange(3))
    assert list(packer.batches()) == []  # 3 frames: not a full batch yet
    packer.push("b", torch.arange(10, 20))
    out = list(packer.batches())
    assert [b.tolist() for b, _ in out] == [[0, 1, 2, 10], [11, 12, 13, 14], [15, 16, 17, 18]]
    assert [s for _, s in out] == [[("a", 0, 3), ("b", 0, 1)], [("b", 1, 5)], [("b", 5, 9)]]
    packer.push("c", torch.arange(20, 21))
    final = list(packer.batches(final=True))
    assert [b.tolist() for b, _ in final] == [[19, 20]] and final[0][1] == [("b", 9, 10), ("c", 0, 1)]
    assert list(packer.batches(final=True)) == []


def test_videos_extract_with_timestamps_equal_to_each_frame_alone(tiny_models, videos, tmp_path):
    from vl.extract.encoder import EncoderSpec, load_encoder
    from vl.extract.video_decode import SamplingPolicy, decode_video

    out = tmp_path / "v.h5"
    run_vl(_args(tiny_models, videos, out, "--batch-size", 3))
    store = FeatureStore(out)
    files = sorted(videos.glob("*.mp4"))
    assert store.layout == "frames" and sorted(store.ids) == sorted(p.stem for p in files)
    assert store.item_shape() == (24,)  # the tiny ViT's pooled embedding
    prov = store.provenance
    assert prov["preprocess"]["sampling"]["fps"] == 2 and prov["preprocess"]["sampling"]["max_frames"] == 8
    assert "av" in " ".join(prov["versions"]).lower()

    enc = load_encoder(EncoderSpec(model="tiny-vit", model_config=str(tiny_models["tiny-vit"]["config"]),
                                   pretrained=str(tiny_models["tiny-vit"]["checkpoint"]), layer="pooled",
                                   device="cpu"))
    for path in files:
        decoded = decode_video(str(path), SamplingPolicy(fps=2, max_frames=8))
        ts = store.timestamps(path.stem)
        np.testing.assert_allclose(ts, decoded.timestamps)
        assert len(ts) == min(8, max(1, int(np.ceil(decoded.duration * 2 - 1e-9))))
        assert np.all(np.diff(ts) > 0) and ts[-1] <= store.duration(path.stem)
        alone = np.stack([enc.encode(enc.transform(im)[None])["pooled"][0].numpy() for im in decoded.frames])
        np.testing.assert_allclose(store.get(path.stem), alone, rtol=1e-4, atol=1e-4)


def test_batch_size_does_not_change_features(tiny_models, videos, tmp_path):
    run_vl(_args(tiny_models, videos, tmp_path / "b1.h5", "--batch-size", 1))
    run_vl(_args(tiny_models, videos, tmp_path / "b7.h5", "--batch-size", 7, "--frames", 3, fps=None))
    run_vl(_args(tiny_models, videos, tmp_path / "b7fps.h5", "--batch-size", 7))
    a, b = FeatureStore(tmp_path / "b1.h5"), FeatureStore(tmp_path / "b7fps.h5")
    for vid in a.ids:
        np.testing.assert_allclose(a.get(vid), b.get(vid), rtol=1e-4, atol=1e-4)
    three = FeatureStore(tmp_path / "b7.h5")
    assert {three.num_frames(v) for v in three.ids} == {3}
    # --fps and --frames make different stores: a rerun with other sampling is refused
    refused = run_vl(_args(tiny_models, videos, tmp_path / "b7.h5", "--batch-size", 7), expect=1)
    assert "preprocess.sampling" in refused.stderr


def test_broken_videos_are_recorded_and_the_rest_extract(tiny_models, videos, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = sorted(videos.glob("*.mp4"))[:2]
    for p in good:
        (folder / p.name).symlink_to(p)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("not a video")
    data = good[0].read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    out = tmp_path / "m.h5"
    result = run_vl(_args(tiny_models, folder, out, "--batch-size", 4))
    store = FeatureStore(out)
    assert sorted(store.ids) == sorted(p.stem for p in good)
    assert sorted(f["id"] for f in store.failures) == ["empty", "text", "truncated"]
    assert all(f["reason"] for f in store.failures)
    assert "3 input(s) failed" in result.stderr


def test_kill_9_then_rerun_equals_uninterrupted(tiny_models, videos, tmp_path):
    run_vl(_args(tiny_models, videos, tmp_path / "ref.h5", "--batch-size", 4))
    out = tmp_path / "killed.h5"
    proc = vl_subprocess(_args(tiny_models, videos, out, "--batch-size", 4, "--shard-size", 1),
                         env={"VL_TEST_DECODE_DELAY_S": "0.4"})
    deadline = time.monotonic() + 120
    while len(list(parts_dir(out).glob("shard-*.h5"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not out.exists()
    rerun = run_vl(_args(tiny_models, videos, out, "--batch-size", 4))
    assert "already in store" in rerun.stderr and " 0 already" not in rerun.stderr
    ref, got = FeatureStore(tmp_path / "ref.h5"), FeatureStore(out)
    assert sorted(ref.ids) == sorted(got.ids)
    for vid in ref.ids:
        np.testing.assert_allclose(got.get(vid), ref.get(vid), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got.timestamps(vid), ref.timestamps(vid))


def test_two_rank_torchrun_videos_equal_one_process(tiny_models, videos, tmp_path):
    from test_extract_distributed import torchrun

    run_vl(_args(tiny_models, videos, tmp_path / "one.h5", "--batch-size", 4))
    proc = torchrun(_args(tiny_models, videos, tmp_path / "two.h5", "--batch-size", 4))
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    one, two = FeatureStore(tmp_path / "one.h5"), FeatureStore(tmp_path / "two.h5")
    assert sorted(one.ids) == sorted(two.ids)
    for vid in one.ids:
        np.testing.assert_allclose(two.get(vid), one.get(vid), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(two.timestamps(vid), one.timestamps(vid))
