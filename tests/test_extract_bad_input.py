"""Broken and odd images: odd modes are extracted, broken files are recorded with a
reason, the run goes on, and only --strict turns failures into a non-zero exit."""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import model_args, photo, run_vl, write_photos
from vl.extract.decode import ImageDecodeError, load_rgb
from vl.shared import FeatureStore


def write_odd_modes(folder: Path) -> dict[str, Image.Image]:
    """One image per odd mode; returns what each should look like as RGB."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(photo(70, 50, seed=5))
    gray = rgb.convert("L")
    expected = {}
    gray.save(folder / "gray.png")
    expected["gray"] = gray.convert("RGB")
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(np.full((50, 70), 128, np.uint8)))
    rgba.save(folder / "rgba.png")
    expected["rgba"] = rgb
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    pal.save(folder / "palette.png")
    expected["palette"] = pal.convert("RGB")
    cmyk = rgb.convert("CMYK")
    cmyk.save(folder / "cmyk.jpg", quality=95)
    expected["cmyk"] = Image.open(folder / "cmyk.jpg").convert("RGB")
    sixteen = (np.asarray(gray, dtype=np.uint32) * 257).astype(np.uint16)  # full 16-bit range
    Image.fromarray(sixteen).save(folder / "sixteen.png")
    expected["sixteen"] = gray.convert("RGB")
    return expected


def write_broken(folder: Path) -> dict[str, str]:
    """Broken inputs; returns id -> a fragment of the recorded reason."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not a picture\n")
    buf = io.BytesIO()
    Image.fromarray(photo(120, 90, seed=3)).save(buf, format="JPEG", quality=95)
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    # A 1-bit PNG of 9500 x 9500 = 90.25 M pixels: tiny on disk, over Pillow's bomb threshold.
    Image.new("1", (9500, 9500)).save(folder / "bomb.png")
    return {"empty": "empty file", "text": "not an image", "truncated": "corrupt image", "bomb": "over the limit"}


def test_odd_modes_convert_to_rgb_exactly(tmp_path):
    folder = tmp_path
    expected = write_odd_modes(folder)
    for ident, want in expected.items():
        path = next(folder.glob(f"{ident}.*"))
        got = load_rgb(str(path))
        assert got.mode == "RGB", ident
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=ident)


@pytest.mark.parametrize("maker", ["empty", "text", "truncated", "bomb", "missing", "folder"])
def test_each_broken_input_raises_a_reason(tmp_path, maker):
    reasons = write_broken(tmp_path)
    (tmp_path / "folder.jpg").mkdir()
    path = tmp_path / (f"{maker}.png" if maker == "bomb" else f"{maker}.jpg")
    with pytest.raises(ImageDecodeError) as err:
        load_rgb(str(path))
    expected = {**reasons, "missing": "file not found", "folder": "is a folder"}[maker]
    assert expected in str(err.value)


def test_run_goes_on_records_failures_and_strict_fails(tiny_models, tmp_path):
    folder = tmp_path / "images"
    write_photos(folder, 5)
    expected_rgb = write_odd_modes(folder)
    reasons = write_broken(folder)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p) for p in sorted(folder.iterdir())) + f"\n{folder / 'missing.jpg'}\n")
    out = tmp_path / "f.h5"
    common = ["extract", "images", "--list", listing, "--out", out, *model_args(tiny_models), "--batch-size", 4]

    started = time.monotonic()
    result = run_vl([*common, "--workers", 2, "--dtype", "float32"])  # exit 0, with a warning
    assert time.monotonic() - started < 120  # the bomb is refused from its header, never decoded
    assert "warning: 5 input(s) failed" in result.stderr

    store = FeatureStore(out)
    assert sorted(store.ids) == sorted([f"img_{i:04d}" for i in range(5)] + list(expected_rgb))
    failures = {f["id"]: f["reason"] for f in store.failures}
    assert set(failures) == set(reasons) | {"missing"}
    for ident, fragment in reasons.items():
        assert fragment in failures[ident]
    assert failures["missing"] == "file not found"

    # The odd modes were extracted from the same pixels as their RGB versions.
    rgb_folder = tmp_path / "as_rgb"
    rgb_folder.mkdir()
    for ident, im in expected_rgb.items():
        im.save(rgb_folder / f"{ident}.png")
    run_vl(["extract", "images", "--images", rgb_folder, "--out", tmp_path / "rgb.h5", *model_args(tiny_models),
            "--workers", 0, "--dtype", "float32"])
    as_rgb = FeatureStore(tmp_path / "rgb.h5")
    ids = sorted(expected_rgb)
    np.testing.assert_allclose(store.get_many(ids), as_rgb.get_many(ids), rtol=1e-5, atol=1e-5)

    # Rerun: failures whose files did not change are not retried; --strict exits non-zero.
    strict = run_vl([*common, "--workers", 0, "--dtype", "float32", "--strict"], expect=1)
    assert "0 extracted" in strict.stderr and "5 failed (5 in an earlier run" in strict.stderr

    # A fixed file is picked up on the next run.
    Image.fromarray(photo(64, 64, seed=11)).save(folder / "text.jpg", format="JPEG")
    fixed = run_vl([*common, "--workers", 0, "--dtype", "float32"])
    assert "1 extracted" in fixed.stderr
    assert "text" in FeatureStore(out) and "text" not in {f["id"] for f in FeatureStore(out).failures}


def test_max_pixels_limit_is_configurable(tiny_models, tmp_path):
    folder = tmp_path / "images"
    write_photos(folder, 2)  # about 60x50 pixels each
    out = tmp_path / "f.h5"
    run_vl(["extract", "images", "--images", folder, "--out", out, *model_args(tiny_models),
            "--workers", 0, "--max-pixels", 1000])
    assert len(FeatureStore(out)) == 0
    assert all("over the limit of 1,000" in f["reason"] for f in FeatureStore(out).failures)


def test_fifos_and_devices_are_recorded_not_waited_on(tiny_models, tmp_path):
    """A FIFO named like an image blocks open() until someone writes; /dev/zero never ends:
    both are recorded with what they are, and the run finishes."""
    import os
    import subprocess
    import sys

    from vl.extract.video_decode import SamplingPolicy, VideoDecodeError, decode_video

    folder = tmp_path / "images"
    write_photos(folder, 2)
    os.mkfifo(folder / "pipe.png")
    listing = tmp_path / "list.txt"
    listing.write_text("zero\t/dev/zero\n")
    out = tmp_path / "f.h5"
    for source in (["--images", folder], ["--list", listing]):
        done = subprocess.run([sys.executable, "-m", "vl.shared.cli", "extract", "images", *map(str, source),
                               "--out", str(out), *map(str, model_args(tiny_models)), "--workers", "0"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    failures = {f["id"]: f["reason"] for f in FeatureStore(out).failures}
    assert failures == {"pipe": "is a FIFO (named pipe), not an image file",
                        "zero": "is a character device, not an image file"}
    assert len(FeatureStore(out)) == 2
    os.mkfifo(tmp_path / "clip.mp4")
    with pytest.raises(VideoDecodeError, match="is a FIFO"):
        decode_video(str(tmp_path / "clip.mp4"), SamplingPolicy(fps=1.0))


def test_links_that_loop_back_end_the_walk(tmp_path):
    """Two links to their own folder inside a media root once made the walk run forever."""
    import os

    from vl.extract.inputs import find_images
    from vl.shared.media import IMAGE_EXTENSIONS, index_media_files

    root = tmp_path / "media"
    write_photos(root / "sub", 2)
    os.symlink(root, root / "a")
    os.symlink(root, root / "sub" / "b")
    os.symlink(root / "sub", root / "c")  # a folder seen twice: its files listed once, by its own path
    assert sorted(x.id for x in find_images(root)) == ["img_0000", "img_0001"]
    index = index_media_files(root, IMAGE_EXTENSIONS)
    assert [str(p.relative_to(root)) for p in index["img_0000"]] == ["sub/img_0000.jpg"]
