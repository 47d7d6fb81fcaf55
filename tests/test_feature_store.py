"""The FeatureStore reader, on stores built directly by the store builder (no model)."""
from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import torch

from vl.extract.store_builder import StoreBuilder, chunk_rows
from vl.shared import FeatureStore, VLError
from vl.shared.feature_store import check_store_matches, parts_dir, settings_differences

SETTINGS = {"encoder": {"model": "toy"}, "preprocess": {"size": [8, 8]}, "features": {"layer": "both"}}


def build(path, n=20, seed=0, shard_rows=7, failures=()):
    rng = np.random.default_rng(seed)
    grid = rng.standard_normal((n, 4, 3)).astype(np.float32)
    pooled = rng.standard_normal((n, 5)).astype(np.float32)
    ids = [f"m{i:03d}" for i in range(n)]
    with StoreBuilder(path, dict(SETTINGS), {"grid": (4, 3), "pooled": (5,)}, "float32", shard_rows=shard_rows) as b:
        for s in range(0, n, 3):
            b.add(ids[s:s + 3], {"grid": grid[s:s + 3], "pooled": pooled[s:s + 3]})
        b.add_failures([{"id": f, "path": f"/x/{f}.jpg", "reason": "corrupt image"} for f in failures])
        b.finish({"extracted": n}, retried_ids=set(ids) | set(failures))
    return ids, grid, pooled


def test_reader_api(tmp_path):
    path = tmp_path / "s.h5"
    ids, grid, pooled = build(path, failures=["bad1"])
    store = FeatureStore(path)
    assert store.ids == ids and len(store) == 20
    assert "m005" in store and "bad1" not in store and 5 not in store
    assert store.features == ("grid", "pooled") and store.default_feature == "grid"
    assert store.item_shape() == (4, 3) and store.item_shape("pooled") == (5,)
    np.testing.assert_array_equal(store.get("m007"), grid[7])
    np.testing.assert_array_equal(store.get("m007", "pooled"), pooled[7])
    order = ["m019", "m002", "m002", "m010"]  # any order, repeats allowed
    np.testing.assert_array_equal(store.get_many(order), grid[[19, 2, 2, 10]])
    assert store.get_many([]).shape == (0, 4, 3)
    assert store.provenance["encoder"] == {"model": "toy"}
    store.provenance["encoder"]["model"] = "changed"  # a copy
    assert store.provenance["encoder"] == {"model": "toy"}
    assert store.failures == [{"id": "bad1", "path": "/x/bad1.jpg", "reason": "corrupt image"}]
    with pytest.raises(KeyError, match="its extraction failed: corrupt image"):
        store.get("bad1")
    with pytest.raises(KeyError, match="'nope' is not in feature store"):
        store.get_many(["m001", "nope"])
    with pytest.raises(VLError, match="has no 'patches' features; it has: grid, pooled"):
        store.get("m001", "patches")
    assert not parts_dir(path).exists()


class _Items(torch.utils.data.Dataset):
    def __init__(self, store, ids):
        self.store, self.ids = store, ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return torch.from_numpy(self.store.get(self.ids[i]))


def test_safe_in_dataloader_workers_and_picklable(tmp_path):
    path = tmp_path / "s.h5"
    ids, grid, _ = build(path)
    store = FeatureStore(path)
    store.get("m000")  # open a handle in the parent first: workers must not reuse it
    clone = pickle.loads(pickle.dumps(store))
    assert clone._h5 is None and clone.ids == ids
    loader = torch.utils.data.DataLoader(_Items(store, ids), batch_size=4, num_workers=2)
    got = torch.cat(list(loader)).numpy()
    np.testing.assert_array_equal(got, grid)


def test_clear_errors_for_missing_unfinished_and_foreign_files(tmp_path):
    with pytest.raises(VLError, match="not found: make it with `vl extract images"):
        FeatureStore(tmp_path / "none.h5")
    parts_dir(tmp_path / "half.h5").mkdir()
    with pytest.raises(VLError, match="is not finished.*rerun the same `vl extract` command"):
        FeatureStore(tmp_path / "half.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(VLError, match="not a readable HDF5 file"):
        FeatureStore(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = [1, 2]
    with pytest.raises(VLError, match="not a vl feature store"):
        FeatureStore(tmp_path / "other.h5")


def test_chunks_hold_about_256k_for_fast_random_reads(tmp_path):
    assert chunk_rows((36, 2048), np.float16, 10_000) == 1  # a 6x6 RN101 grid is 147 KB: one item a chunk
    assert chunk_rows((512,), np.float16, 10_000) == 256
    assert chunk_rows((512,), np.float16, 10) == 10
    path = tmp_path / "s.h5"
    build(path)
    with h5py.File(path) as f:
        assert f["features/grid"].chunks == (20, 4, 3)


def test_settings_differences_lists_each_leaf():
    a = {"encoder": {"model": "RN50", "weights": {"tag": "openai"}}, "features": {"pool": 6}}
    b = {"encoder": {"model": "RN101", "weights": {"tag": "openai"}}, "features": {"pool": None}}
    assert settings_differences(a, b) == [("encoder.model", "RN50", "RN101"), ("features.pool", 6, None)]
    assert settings_differences(a, a) == []


def test_another_writer_is_refused_while_one_holds_the_store(tmp_path):
    path = tmp_path / "s.h5"
    with StoreBuilder(path, dict(SETTINGS), {"grid": (4, 3)}, "float32"):
        with pytest.raises(VLError, match="another `vl extract` is writing"):
            with StoreBuilder(path, dict(SETTINGS), {"grid": (4, 3)}, "float32"):
                pass


def test_a_parts_folder_another_rank_removes_while_this_one_lists_it_is_no_error(tmp_path, monkeypatch):
    """torchrun ranks share the parts folder; one that found nothing to keep removes it, and
    another listing it at that moment saw FileNotFoundError from inside Path.glob."""
    import pathlib

    path = tmp_path / "s.h5"
    builder = StoreBuilder(path, dict(SETTINGS), {"grid": (4, 3)}, "float32", shard_rows=2, rank=1)
    with builder:
        parts_dir(path).mkdir(exist_ok=True)

        def vanished(self, pattern):
            raise FileNotFoundError(2, "No such file or directory", str(self))

        monkeypatch.setattr(pathlib.Path, "glob", vanished)
    assert builder._shards() == []


def test_damaged_shard_is_redone_not_trusted(tmp_path):
    path = tmp_path / "s.h5"
    builder = StoreBuilder(path, dict(SETTINGS), {"grid": (4, 3)}, "float32", shard_rows=2)
    with builder:
        builder.add(["a", "b"], {"grid": np.zeros((2, 4, 3))})
        builder.add(["c", "d"], {"grid": np.ones((2, 4, 3))})
    shards = sorted(parts_dir(path).glob("shard-*.h5"))
    assert len(shards) == 2
    shards[1].write_bytes(b"garbage")  # as if the disk lost it
    again = StoreBuilder(path, dict(SETTINGS), {"grid": (4, 3)}, "float32")
    with again:
        assert again.done_ids == {"a", "b"}
        assert again.discarded_shards == [shards[1].name]


def test_stale_or_missing_sidecar_is_rewritten_from_the_store(tmp_path):
    import json

    from vl.shared.feature_store import sidecar_path

    path = tmp_path / "s.h5"
    build(path, failures=["bad1"])
    good = json.loads(sidecar_path(path).read_text())
    assert good["provenance"]["count"] == 20 and good["failures"][0]["id"] == "bad1"
    sidecar_path(path).unlink()  # as if killed between the store's rename and the sidecar's
    with StoreBuilder(path, dict(SETTINGS), {"grid": (4, 3), "pooled": (5,)}, "float32"):
        pass
    assert json.loads(sidecar_path(path).read_text()) == good


def test_rows_added_before_an_error_are_kept_for_the_rerun(tmp_path):
    path = tmp_path / "s.h5"
    with pytest.raises(RuntimeError, match="boom"):
        with StoreBuilder(path, dict(SETTINGS), {"grid": (4, 3)}, "float32") as b:
            b.add(["a", "b"], {"grid": np.zeros((2, 4, 3))})
            raise RuntimeError("boom")
    with StoreBuilder(path, dict(SETTINGS), {"grid": (4, 3)}, "float32") as again:
        assert again.done_ids == {"a", "b"}


def test_a_dead_decoding_worker_becomes_a_clear_error():
    from vl.extract.pipeline import guarded as _guarded

    def dying():
        yield 1
        raise RuntimeError("DataLoader worker (pid 123) is killed by signal: Segmentation fault.")

    it = _guarded(dying())
    assert next(it) == 1
    with pytest.raises(VLError, match="Finished work is kept; run the same command again"):
        next(it)


def test_lock_excludes_other_processes_and_dies_with_its_holder(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "s.h5"
    code = ("import sys, time; from vl.extract.store_builder import StoreBuilder\n"
            f"with StoreBuilder({str(path)!r}, {SETTINGS!r}, {{'grid': (4, 3)}}, 'float32'):\n"
            "    print('locked', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(VLError, match="another `vl extract` is writing"):
            with StoreBuilder(path, dict(SETTINGS), {"grid": (4, 3)}, "float32"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with StoreBuilder(path, dict(SETTINGS), {"grid": (4, 3)}, "float32"):  # released by the kill
        pass


def _video_batch(rng, names, lengths):
    from vl.extract.store_builder import FrameInfo

    feats = rng.standard_normal((sum(lengths), 5)).astype(np.float32)
    times = [t * 1.5 for n in lengths for t in range(n)]
    return feats, FrameInfo(list(lengths), times, [n * 1.5 + 0.2 for n in lengths])


def test_frames_layout_round_trip_across_shards_and_an_extension(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "v.h5"
    want = {}
    with StoreBuilder(path, dict(SETTINGS), {"pooled": (5,)}, "float32", layout="frames", shard_rows=2) as b:
        for names, lengths in ((["v1", "v2"], [3, 1]), (["v3"], [4]), (["v4", "v5"], [2, 5])):
            feats, info = _video_batch(rng, names, lengths)
            b.add(names, {"pooled": feats}, info)
            for name, chunk in zip(names, np.split(feats, np.cumsum(lengths)[:-1])):
                want[name] = chunk
        b.add_failures([{"id": "broken", "path": "/x/broken.mp4", "reason": "no video stream"}])
        b.finish({}, retried_ids=set(want) | {"broken"})
    with StoreBuilder(path, dict(SETTINGS), {"pooled": (5,)}, "float32", layout="frames") as b:
        assert b.done_ids == set(want)
        feats, info = _video_batch(rng, ["v6"], [2])
        b.add(["v6"], {"pooled": feats}, info)
        want["v6"] = feats
        b.finish({}, retried_ids={"v6"})

    store = FeatureStore(path)
    assert store.layout == "frames" and sorted(store.ids) == sorted(want)
    for name, feats in want.items():
        np.testing.assert_array_equal(store.get(name), feats)
        assert store.num_frames(name) == len(feats)
        np.testing.assert_array_equal(store.timestamps(name), [1.5 * t for t in range(len(feats))])
        assert store.duration(name) == pytest.approx(len(feats) * 1.5 + 0.2)
    assert [len(x) for x in store.get_many(["v3", "v2"])] == [4, 1]
    assert store.failures[0]["id"] == "broken"
    assert [r["extracted"] for r in store.provenance["runs"]] == [5, 1]

    feats, times = store.get_span("v5", 1.4, 4.6)  # frames at 1.5, 3.0, 4.5
    np.testing.assert_array_equal(times, [1.5, 3.0, 4.5])
    np.testing.assert_array_equal(feats, want["v5"][1:4])
    _, times = store.get_span("v5", 1.6, 2.0)  # between two frames: the nearest to the middle
    np.testing.assert_array_equal(times, [1.5])

    padded, mask = store.get_padded(["v2", "v5"], max_frames=3)
    assert padded.shape == (2, 3, 5) and mask.tolist() == [[True, False, False], [True, True, True]]
    np.testing.assert_array_equal(padded[1], want["v5"][[0, 2, 4]])
    with pytest.raises(VLError, match="holds images, not videos"):
        build(tmp_path / "img.h5")
        FeatureStore(tmp_path / "img.h5").timestamps("m000")


def test_held_in_memory_reads_equal_file_reads_and_touch_no_file(tmp_path, monkeypatch):
    from vl.shared import feature_store

    ids, grid, pooled = build(tmp_path / "s.h5")
    store = FeatureStore(tmp_path / "s.h5")
    assert store.bytes_of("grid") == grid.nbytes and store.bytes_of("pooled") == pooled.nbytes
    assert store.hold_in_memory("pooled") == pooled.nbytes
    monkeypatch.setattr(store, "_file", lambda: pytest.fail("a held feature was read from the file"))
    np.testing.assert_array_equal(store.get("m007", "pooled"), pooled[7])
    np.testing.assert_array_equal(store.get_many(["m019", "m002", "m002"], "pooled"), pooled[[19, 2, 2]])
    monkeypatch.undo()

    rng = np.random.default_rng(1)
    with StoreBuilder(tmp_path / "v.h5", dict(SETTINGS), {"pooled": (5,)}, "float32", layout="frames") as b:
        feats, info = _video_batch(rng, ["v1", "v2"], [3, 4])
        b.add(["v1", "v2"], {"pooled": feats}, info)
        b.finish({}, retried_ids={"v1", "v2"})
    video = FeatureStore(tmp_path / "v.h5")
    want = video.get_span("v2", 1.4, 4.6)
    video.hold_in_memory()
    monkeypatch.setattr(video, "_file", lambda: pytest.fail("a held video was read from the file"))
    for have, expected in zip(video.get_span("v2", 1.4, 4.6), want):
        np.testing.assert_array_equal(have, expected)

    small = FeatureStore(tmp_path / "s.h5")  # refused, naming the size, when it would not fit
    monkeypatch.setattr(feature_store, "available_memory_bytes", lambda: grid.nbytes)
    with pytest.raises(VLError, match="more than 50% of the .* available: it does not fit"):
        small.hold_in_memory("grid")


def build_store(path, model_name="toy-RN50", layer="grid"):
    settings = {"encoder": {"model": model_name, "pretrained": "none"}, "preprocess": {"size": [8, 8]},
                "features": {"layer": layer, "pool": 2}}
    ids = ["a", "b", "c"]
    with StoreBuilder(path, settings, {"grid": (4, 8)}, "float32") as b:
        b.add(ids, {"grid": np.zeros((3, 4, 8), np.float32)})
        b.finish({"extracted": 3}, retried_ids=set(ids))
    return FeatureStore(path)


def test_check_store_matches_names_the_differing_fields(tmp_path):
    store = build_store(tmp_path / "coco.h5", model_name="RN50", layer="grid")
    check_store_matches(store, {"encoder": {"model": "RN50"}, "features": {"layer": "grid"}})
    check_store_matches(store, {"preprocess": {"size": (8, 8)}})  # tuples compare as the JSON lists
    with pytest.raises(VLError) as e:
        check_store_matches(store, {"encoder": {"model": "RN101"}, "features": {"layer": "grid", "pool": 6,
                                                                             "dtype": "float16"}})
    msg = str(e.value)
    assert f"{store.path}: encoder.model is 'RN50', the config asks for 'RN101'" in msg
    assert "features.pool is 2, the config asks for 6" in msg
    assert "features.dtype is not recorded, the config asks for 'float16'" in msg
    assert "layer" not in msg.replace("features.", "")  # matching fields are not named
    assert "vl extract images" in msg and "change the config" in msg
