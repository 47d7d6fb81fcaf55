"""Extraction inputs at scale (issue #15, item 6): webdataset tar shards and lists of
http(s) URLs, against a local HTTP server in a thread. The features must equal those of
the same image files extracted from a folder; every bad shard, member and URL is one
recorded failure naming where it came from."""
from __future__ import annotations

import http.server
import io
import json
import tarfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import model_args, run_vl, write_photos
from vl.extract import sources
from vl.extract.inputs import MediaInput, read_list, url_id
from vl.extract.webdataset import expand_braces, find_shards, index_shards, split_key
from vl.shared import FeatureStore
from vl.shared.errors import VLError

# -- webdataset ---------------------------------------------------------------------------


def write_shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_brace_patterns_expand_as_webdataset_users_write_them():
    assert expand_braces("s/{00000..00002}.tar") == ["s/00000.tar", "s/00001.tar", "s/00002.tar"]
    assert expand_braces("s/{8..10}.tar") == ["s/8.tar", "s/9.tar", "s/10.tar"]  # no padding asked for
    assert expand_braces("{a,b}/{0..1}-{x,y{1,2}}.tar") == [
        "a/0-x.tar", "a/0-y1.tar", "a/0-y2.tar", "a/1-x.tar", "a/1-y1.tar", "a/1-y2.tar",
        "b/0-x.tar", "b/0-y1.tar", "b/0-y2.tar", "b/1-x.tar", "b/1-y1.tar", "b/1-y2.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(VLError, match="never closed"):
        expand_braces("s/{0..3.tar")


def test_keys_split_at_the_first_dot_of_the_file_name_folder_kept():
    assert split_key("000042.jpg") == ("000042", "jpg")
    assert split_key("train/a/000042.JPEG") == ("train/a/000042", "jpeg")
    assert split_key("dir.v2/000042.seg.png") == ("dir.v2/000042", "seg.png")
    assert split_key("README") == ("README", "")


def test_shards_by_file_folder_pattern_and_glob_and_a_clear_error_for_missing_ones(tmp_path):
    for i in range(3):
        write_shard(tmp_path / "s" / f"{i:05d}.tar", [("a.txt", b"x")])
    (tmp_path / "s" / "notes.txt").write_text("not a shard")
    names = [str(tmp_path / "s" / f"{i:05d}.tar") for i in range(3)]
    assert find_shards(tmp_path / "s") == names
    assert find_shards(names[1]) == [names[1]]
    assert find_shards(f"{tmp_path}/s/{{00000..00002}}.tar") == names
    assert find_shards(f"{tmp_path}/s/0000[01].tar") == names[:2]
    with pytest.raises(VLError) as err:
        find_shards(f"{tmp_path}/s/{{00000..00004}}.tar")
    assert "00003.tar" in str(err.value) and "00004.tar" in str(err.value) and "2 of the 5 shards" in str(err.value)
    with pytest.raises(VLError, match="no such file, folder or pattern"):
        find_shards(tmp_path / "nowhere.tar")


def test_index_records_duplicate_keys_and_bad_shards_and_ignores_other_members(tmp_path):
    # Listing reads headers only, so the members' bytes need not be images here.
    a = write_shard(tmp_path / "a.tar", [("k1.jpg", b"1"), ("k1.txt", b"cap"), ("k1.json", b"{}"), ("k1.cls", b"3"),
                                         ("sub/k2.png", b"2"), ("k3.jpg", b"3"), ("k3.png", b"3"), ("k4.seg.png", b"4"),
                                         ("sub/.jpg", b"no key"), ("sub", b"")])
    b = write_shard(tmp_path / "b.tar", [("k1.webp", b"5"), ("k5.jpeg", b"6")])
    not_tar = tmp_path / "c.tar"
    not_tar.write_bytes(b"this is no tar file" * 100)
    whole = write_shard(tmp_path / "d.tar", [("k6.jpg", b"x" * 3000), ("k7.jpg", b"y" * 3000)])
    cut = tmp_path / "e.tar"
    cut.write_bytes(whole.read_bytes()[:2500])  # cut inside k6's data
    damaged = tmp_path / "f.tar"
    raw = bytearray(write_shard(tmp_path / "g.tar", [("k8.jpg", b"8" * 100), ("k9.jpg", b"9" * 100)]).read_bytes())
    raw[1024:1124] = b"\xff" * 100  # k9's header: the tar reader would end here without a word
    damaged.write_bytes(bytes(raw))

    items = {x.id: x for x in index_shards([str(a), str(b), str(not_tar), str(cut), str(damaged)])}
    # k4.seg.png: key k4, extension seg.png (webdataset's rule): a mask beside an image, not one
    assert sorted(items) == sorted(["k1", "sub/k2", "k3", "k5", "k8", str(not_tar), str(cut), str(damaged)])
    assert {i for i, x in items.items() if not x.error} == {"sub/k2", "k5", "k8"}
    assert items["sub/k2"].member.name == "sub/k2.png" and items["sub/k2"].location == f"{a}#sub/k2.png"
    assert f"{a}#k1.jpg" in items["k1"].error and f"{b}#k1.webp" in items["k1"].error  # across shards too
    assert "2 image members" in items["k3"].error and "k3.png" in items["k3"].error
    assert items[str(not_tar)].error.startswith("not a tar file")
    assert "truncated" in items[str(cut)].error and "k6.jpg" in items[str(cut)].error
    assert items[str(damaged)].error == ("shard is damaged after 1 member (no valid tar header at byte 1,024); "
                                         "the members before it are kept")


# -- URL lists ------------------------------------------------------------------------------


def test_url_lines_keep_or_get_stable_ids_and_other_schemes_are_refused(tmp_path):
    listing = tmp_path / "urls.txt"
    listing.write_text("https://x.org/a/cat.jpg?s=2\nhttps://y.org/b/cat.jpg\nmine\thttp://x.org/dog.png\n"
                       "local.jpg\nhttps://x.org/\n")
    items = read_list(listing)
    ids = [x.id for x in items]
    assert ids[0] == "cat-4a221d3639" and ids[1].startswith("cat-") and ids[0] != ids[1]
    assert ids[0] == url_id("https://x.org/a/cat.jpg?s=2") == read_list(listing)[0].id  # stable
    assert ids[2] == "mine" and items[2].path == "http://x.org/dog.png" and items[2].is_url
    assert ids[3] == "local" and items[3].path == str(tmp_path / "local.jpg") and not items[3].is_url
    assert ids[4].startswith("url-")
    listing.write_text("s3://bucket/a.jpg\n")
    with pytest.raises(VLError, match=r"urls.txt:1: s3:// URLs are not fetched"):
        read_list(listing)
    listing.write_text("https://x.org/v.mp4\n")
    with pytest.raises(VLError, match="download these inputs first"):
        read_list(listing, allow_urls=False)
    listing.write_text("https://x.org/a.jpg\nhttps://x.org/a.jpg\n")
    with pytest.raises(VLError, match="a URL is listed twice"):
        read_list(listing)


class ImageServer:
    """A local HTTP server in a thread: /img/NAME serves a file of `folder`, /missing.jpg is a
    404, /slow.jpg answers after SLOW_S, /page.jpg is an HTML page, /flaky.jpg is a 503 the
    first time and an image after. Counts requests per path and keeps the user agents."""

    SLOW_S = 1.0

    def __init__(self, folder: Path):
        self.folder, self.hits, self.agents = folder, Counter(), set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                server.hits[self.path] += 1
                server.agents.add(self.headers.get("User-Agent"))
                if self.path.startswith("/img/"):
                    return self._send(200, "image/jpeg", (server.folder / self.path[5:]).read_bytes())
                if self.path == "/slow.jpg":
                    time.sleep(ImageServer.SLOW_S)
                    return self._send(200, "image/jpeg", (server.folder / "img_0000.jpg").read_bytes())
                if self.path == "/page.jpg":
                    return self._send(200, "text/html; charset=utf-8", b"<html><body>moved</body></html>")
                if self.path == "/flaky.jpg":
                    if server.hits[self.path] == 1:
                        return self._send(503, "text/plain", b"busy")
                    return self._send(200, "image/jpeg", (server.folder / "img_0001.jpg").read_bytes())
                return self._send(404, "text/plain", b"no such thing")

            def _send(self, code, content_type, body):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (the timeout case)
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(sources, "BACKOFF_S", 0.05)
    folder = tmp_path / "served"
    write_photos(folder, 4)
    with ImageServer(folder) as s:
        yield s


def test_fetch_retries_what_may_pass_and_not_a_404(server):
    slept = []
    got = sources.fetch_url(f"{server.url}/flaky.jpg", sources.FetchSettings(5, retries=2), sleep=slept.append)
    assert got.content_type == "image/jpeg" and got.body == (server.folder / "img_0001.jpg").read_bytes()
    assert server.hits["/flaky.jpg"] == 2 and slept == [0.05]
    with pytest.raises(sources.InputError, match="HTTP 404 Not Found$"):
        sources.fetch_url(f"{server.url}/missing.jpg", sources.FetchSettings(5, retries=3), sleep=slept.append)
    assert server.hits["/missing.jpg"] == 1  # final: not retried
    started = time.monotonic()
    with pytest.raises(sources.InputError, match=r"timed out after 0.3 s \(after 2 attempts\)"):
        sources.fetch_url(f"{server.url}/slow.jpg", sources.FetchSettings(0.3, retries=1))
    assert time.monotonic() - started < 0.3 * 2 + 0.05 + 0.5
    assert server.hits["/slow.jpg"] == 2
    with pytest.raises(sources.InputError, match="cannot connect"):
        sources.fetch_url("http://127.0.0.1:9/x.jpg", sources.FetchSettings(2, retries=0))
    assert server.agents == {sources.USER_AGENT}


# -- end to end -----------------------------------------------------------------------------


def _extract(tiny_models, out: Path, *inputs, expect=0, workers=0):
    return run_vl(["extract", "images", *map(str, inputs), "--out", out, *model_args(tiny_models),
                   "--workers", workers, "--batch-size", 3, "--dtype", "float32", "--device", "cpu"], expect=expect)


def _same_features(store: FeatureStore, reference: FeatureStore, ids_to_ref: dict[str, str]) -> None:
    ids = sorted(ids_to_ref)
    np.testing.assert_allclose(store.get_many(ids), reference.get_many([ids_to_ref[i] for i in ids]),
                               rtol=1e-5, atol=1e-5)


def test_webdataset_shards_equal_the_folder_and_record_bad_members(tiny_models, tmp_path):
    photos = write_photos(tmp_path / "photos", 5)
    _extract(tiny_models, tmp_path / "folder.h5", "--images", tmp_path / "photos")
    data = {p.stem: p.read_bytes() for p in photos}
    write_shard(tmp_path / "shards" / "00000.tar", [
        ("img_0000.jpg", data["img_0000"]), ("img_0000.txt", b"a caption"), ("img_0000.json", b"{}"),
        ("train/img_0001.jpg", data["img_0001"]), ("train/img_0001.cls", b"7"),
        ("fake.jpg", b"<html>not an image</html>"),
    ])
    write_shard(tmp_path / "shards" / "00001.tar", [
        ("img_0002.jpeg", data["img_0002"]), ("img_0003.jpg", data["img_0003"]),
        ("twice.jpg", data["img_0004"]), ("twice.png", data["img_0004"]),
    ])
    out = tmp_path / "wds.h5"
    spec = f"{tmp_path}/shards/{{00000..00001}}.tar"
    result = _extract(tiny_models, out, "--input-format", "webdataset", "--images", spec, workers=2)
    assert "4 extracted" in result.stderr and "2 failed" in result.stderr
    store = FeatureStore(out)
    assert sorted(store.ids) == ["img_0000", "img_0002", "img_0003", "train/img_0001"]
    _same_features(store, FeatureStore(tmp_path / "folder.h5"),
                   {"img_0000": "img_0000", "train/img_0001": "img_0001", "img_0002": "img_0002", "img_0003": "img_0003"})
    failures = {f["id"]: f for f in store.failures}
    assert set(failures) == {"fake", "twice"}
    assert failures["fake"]["path"] == f"{tmp_path}/shards/00000.tar#fake.jpg"
    assert failures["fake"]["reason"] == "not an image Pillow can read"
    assert "2 image members" in failures["twice"]["reason"] and "00001.tar#twice.png" in failures["twice"]["reason"]
    run = store.provenance["runs"][-1]
    assert run["source"]["input_format"] == "webdataset" and run["source"]["shards"] == 2
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert {f["id"] for f in sidecar["failures"]} == {"fake", "twice"}

    # Resume: a new shard adds its keys only; finished keys and unchanged failures are skipped.
    write_shard(tmp_path / "shards" / "00002.tar", [("img_0004.jpg", data["img_0004"])])
    more = _extract(tiny_models, out, "--input-format", "webdataset", "--images", tmp_path / "shards")
    assert "1 extracted, 4 already in store" in more.stderr
    assert "2 failed (2 in an earlier run" in more.stderr
    _same_features(FeatureStore(out), FeatureStore(tmp_path / "folder.h5"), {"img_0004": "img_0004"})


def test_webdataset_errors_name_the_fix_before_any_work(tiny_models, tmp_path):
    out = tmp_path / "f.h5"
    missing = _extract(tiny_models, out, "--input-format", "webdataset", "--images", f"{tmp_path}/{{0..1}}.tar",
                       expect=1)
    assert "0.tar (from" in missing.stderr and "no such file" in missing.stderr
    write_shard(tmp_path / "only_text.tar", [("a.txt", b"caption")])
    empty = _extract(tiny_models, out, "--input-format", "webdataset", "--images", tmp_path / "only_text.tar",
                     expect=1)
    assert "hold no image members" in empty.stderr
    listed = _extract(tiny_models, out, "--input-format", "webdataset", "--list", tmp_path / "x.txt", expect=1)
    assert "reads tar shards given with --images" in listed.stderr
    forgot = _extract(tiny_models, out, "--images", tmp_path / "only_text.tar", expect=1)
    assert "add --input-format webdataset" in forgot.stderr
    assert not out.exists()


def test_url_list_equals_the_folder_and_records_each_failed_url(tiny_models, tmp_path, server):
    photos = sorted(server.folder.glob("*.jpg"))
    _extract(tiny_models, tmp_path / "folder.h5", "--images", server.folder)
    listing = tmp_path / "urls.txt"
    listing.write_text("\n".join([
        f"{server.url}/img/img_0000.jpg",
        f"second\t{server.url}/img/img_0001.jpg",
        f"{server.url}/img/img_0002.jpg",
        f"{server.url}/img/img_0003.jpg",
        f"{server.url}/missing.jpg",
        f"{server.url}/slow.jpg",
        f"{server.url}/page.jpg",
        f"flaky\t{server.url}/flaky.jpg",
    ]) + "\n")
    out = tmp_path / "web.h5"
    common = ["--list", listing, "--timeout", 0.4, "--retries", 1]
    started = time.monotonic()
    result = _extract(tiny_models, out, *common, workers=2)  # downloads in the decoding processes
    assert time.monotonic() - started < 60
    assert "5 extracted" in result.stderr and "3 failed" in result.stderr
    store = FeatureStore(out)
    first = url_id(f"{server.url}/img/img_0000.jpg")
    assert first.startswith("img_0000-")
    _same_features(store, FeatureStore(tmp_path / "folder.h5"), {
        first: "img_0000", "second": "img_0001", url_id(f"{server.url}/img/img_0002.jpg"): "img_0002",
        url_id(f"{server.url}/img/img_0003.jpg"): "img_0003", "flaky": "img_0001"})
    assert len(photos) == 4 and server.hits["/flaky.jpg"] == 2  # a 503, then retried
    failures = {f["path"]: f["reason"] for f in store.failures}
    assert failures == {
        f"{server.url}/missing.jpg": "HTTP 404 Not Found",
        f"{server.url}/slow.jpg": "timed out after 0.4 s (after 2 attempts)",
        f"{server.url}/page.jpg": "not an image Pillow can read (the server sent text/html)",
    }
    assert server.hits["/missing.jpg"] == 1 and server.hits["/slow.jpg"] == 2
    source = store.provenance["runs"][-1]["source"]
    assert source["input_format"] == "urls" and source["timeout_s"] == 0.4 and source["retries"] == 1

    # A rerun skips finished and failed URLs; --retry-failed fetches the failed ones again.
    again = _extract(tiny_models, out, *common)
    assert "0 extracted" in again.stderr and server.hits["/missing.jpg"] == 1
    ImageServer.SLOW_S = 0.0
    try:
        retried = _extract(tiny_models, out, *common, "--retry-failed")
    finally:
        ImageServer.SLOW_S = 1.0
    assert "1 extracted" in retried.stderr and "2 failed" in retried.stderr
    assert server.hits["/missing.jpg"] == 2
    assert url_id(f"{server.url}/slow.jpg") in FeatureStore(out)


def test_url_lists_are_refused_for_videos(tiny_models, tmp_path):
    listing = tmp_path / "urls.txt"
    listing.write_text("https://example.org/clip.mp4\n")
    result = run_vl(["extract", "videos", "--list", listing, "--out", tmp_path / "v.h5", *model_args(tiny_models)],
                    expect=1)
    assert "URLs are read by `vl extract images` only" in result.stderr


def test_member_read_is_one_seek_and_a_short_shard_is_a_reason(tmp_path):
    shard = write_shard(tmp_path / "s.tar", [("a.txt", b"t" * 700), ("b.jpg", b"0123456789")])
    (item,) = index_shards([str(shard)])
    assert sources.read_member(item) == b"0123456789"
    short = MediaInput(item.id, item.path, type(item.member)(item.member.name, item.member.offset, 10_000))
    with pytest.raises(sources.InputError, match=r"ends inside member b.jpg \(truncated shard\)"):
        sources.read_member(short)


def test_two_rank_torchrun_splits_shard_members_like_one_process(tiny_models, tmp_path):
    from test_extract_distributed import _same, torchrun

    photos = write_photos(tmp_path / "photos", 7)
    for s in range(2):  # members of both shards go to both ranks (every 2nd pending input)
        write_shard(tmp_path / "shards" / f"{s}.tar", [(f"k/{p.stem}.jpg", p.read_bytes()) for p in photos[s::2]]
                    + [(f"bad{s}.jpg", b"no image"), (f"k/{photos[s].stem}.txt", b"caption")])
    common = ["extract", "images", "--input-format", "webdataset", "--images", f"{tmp_path}/shards/{{0..1}}.tar",
              *model_args(tiny_models), "--workers", 0, "--batch-size", 2, "--dtype", "float32"]
    run_vl([*common, "--out", tmp_path / "one.h5"])
    proc = torchrun([*common, "--out", tmp_path / "two.h5"])
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    assert "7 extracted" in err and "2 failed" in err
    two = FeatureStore(tmp_path / "two.h5")
    _same(FeatureStore(tmp_path / "one.h5"), two)
    assert sorted(two.ids) == sorted(f"k/{p.stem}" for p in photos)
    assert two.provenance["runs"][-1]["world_size"] == 2
