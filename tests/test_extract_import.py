"""`vl extract import`: released per-video features, written by the tests in VALUE's layout
(`np.savez(path, features=<frames x width float16>)`, one file per vid_name, one frame every
1.5 s), into a frames-layout store that behaves as an extracted one: times, spans, provenance
marked imported with the source digest, bad files recorded, resume, the manifests' coverage,
a tiny training run on it, and the refusal to mix it with extracted stores."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import run_vl
from vl.extract.import_features import ImportOptions, import_features
from vl.extract.store_builder import FrameInfo, StoreBuilder
from vl.shared import FeatureStore, ManifestMeta, VLError, write_manifest
from vl.shared.cli import cli
from vl.shared.digests import digest_strings
from vl.shared.feature_store import check_store_matches, mixed_origin_problems, parts_dir, sidecar_path

WIDTH = 12
LENGTHS = {"s01e01_seg02_clip_00": 7, "s01e01_seg02_clip_01": 4, "s03e02_seg01_clip_05": 10}


def write_value_release(folder: Path, lengths: dict[str, int] = LENGTHS, seed: int = 0) -> dict[str, np.ndarray]:
    """One `<vid_name>.npz` per video holding `features` (frames x WIDTH, float16), as VALUE ships them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for vid, n in lengths.items():
        arrays[vid] = rng.standard_normal((n, WIDTH)).astype(np.float16)
        np.savez(folder / f"{vid}.npz", features=arrays[vid])
    return arrays


def value_import(src: Path, out: Path, *more, expect: int | None = 0):
    return run_vl(["extract", "import", "--format", "value-npz", "--src", src, "--out", out, "-q", *more], expect=expect)


def expected_digest(src: Path) -> str:
    """The rule the provenance states, computed here independently."""
    lines = []
    for p in sorted(src.rglob("*.npz")):
        data = p.read_bytes()
        lines.append(f"{p.relative_to(src).as_posix()}\t{len(data)}\t{hashlib.sha256(data).hexdigest()}")
    return digest_strings(sorted(lines))


def test_value_npz_becomes_a_frames_store_with_derived_times_and_imported_provenance(tmp_path):
    arrays = write_value_release(tmp_path / "clip-vit")
    out = tmp_path / "features/tv_vitb32.h5"
    value_import(tmp_path / "clip-vit", out)
    store = FeatureStore(out)
    assert store.layout == "frames" and sorted(store.ids) == sorted(LENGTHS)
    assert store.features == ("pooled",) and store.item_shape() == (WIDTH,) and store.dtype() == np.float16
    for vid, arr in arrays.items():
        np.testing.assert_array_equal(store.get(vid), arr)  # float16 in, float16 stored: bit for bit
        np.testing.assert_allclose(store.timestamps(vid), 1.5 * np.arange(len(arr)))
        assert store.duration(vid) == pytest.approx(1.5 * len(arr))
    # a clip's span picks the frames inside it, as for an extracted store
    feats, times = store.get_span("s03e02_seg01_clip_05", 2.9, 6.1)
    np.testing.assert_allclose(times, [3.0, 4.5, 6.0])
    np.testing.assert_array_equal(feats, arrays["s03e02_seg01_clip_05"][2:5])

    prov = store.provenance
    assert prov["encoder"] == {"origin": "imported", "format": "value-npz", "model": "ViT-B-32",
                               "weights": {"source": "claimed", "tag": "openai"}}
    assert prov["preprocess"]["sampling"]["fps"] == pytest.approx(2 / 3)
    assert "t_k = k / fps" in prov["preprocess"]["sampling"]["rule"]
    assert prov["features"]["shapes"] == {"pooled": [WIDTH]} and prov["layout"] == "frames"
    imported = prov["import"]
    assert imported["source_sha256"] == expected_digest(tmp_path / "clip-vit")
    assert imported["verified"] is False and imported["claimed"] == {"model": "ViT-B-32", "pretrained": "openai"}
    assert imported["source"] == str((tmp_path / "clip-vit").resolve()) and imported["files"] == 3
    assert prov["runs"][-1]["source"]["source_sha256"] == imported["source_sha256"]
    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar["provenance"]["import"]["source_sha256"] == imported["source_sha256"]
    assert not parts_dir(out).exists()


def test_the_source_digest_follows_the_files_content(tmp_path):
    src = tmp_path / "src"
    write_value_release(src)
    value_import(src, tmp_path / "a.h5")
    np.savez(src / "s01e01_seg02_clip_01.npz", features=np.zeros((4, WIDTH), np.float16))  # same name and shape
    value_import(src, tmp_path / "b.h5")
    a, b = (FeatureStore(tmp_path / n).provenance["import"]["source_sha256"] for n in ("a.h5", "b.h5"))
    assert a != b and b == expected_digest(src)


BAD_FILES = {
    "no_features": (lambda p: np.savez(p, feats=np.ones((3, WIDTH), np.float16)),
                    "has no 'features' array (it holds: feats)"),
    "wrong_width": (lambda p: np.savez(p, features=np.ones((3, WIDTH + 4), np.float16)),
                    f"features are {WIDTH + 4} wide, the other files' are {WIDTH}"),
    "one_d": (lambda p: np.savez(p, features=np.ones(WIDTH, np.float16)),
              f"features have shape ({WIDTH},): expected 2-D (frames x width)"),
    "three_d": (lambda p: np.savez(p, features=np.ones((2, 3, WIDTH), np.float16)),
                "expected 2-D (frames x width)"),
    "empty": (lambda p: np.savez(p, features=np.ones((0, WIDTH), np.float16)), "features are empty (0 frames)"),
    "not_a_zip": (lambda p: p.write_bytes(b"\x00 not an npz"), "not a readable .npz file (not a zip archive)"),
    "truncated": (lambda p: p.write_bytes(_npz_bytes(np.ones((50, WIDTH), np.float16))[:300]),
                  "not a readable .npz file"),
    "nan": (lambda p: np.savez(p, features=np.full((2, WIDTH), np.nan, np.float16)),
            "features hold NaN or infinite values"),
    "strings": (lambda p: np.savez(p, features=np.array([["a"] * WIDTH])), "not numbers"),
    "too_big_for_fp16": (lambda p: np.savez(p, features=np.full((2, WIDTH), 1e6, np.float32)),
                         "features exceed float16's range (|x| > 65504): import with --dtype float32"),
}


def _npz_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, features=arr)
    return buf.getvalue()


def test_each_bad_file_is_recorded_with_its_reason_and_the_rest_import(tmp_path):
    src = tmp_path / "src"
    good = write_value_release(src)
    for name, (write, _) in BAD_FILES.items():
        write(src / f"{name}.npz")
    out = tmp_path / "f.h5"
    result = value_import(src, out, "--strict", expect=1)  # --strict: failures make the exit code 1
    assert "10 file(s) failed; they are listed with reasons in" in result.output
    store = FeatureStore(out)
    assert sorted(store.ids) == sorted(good)
    reasons = {f["id"]: f["reason"] for f in store.failures}
    assert set(reasons) == set(BAD_FILES)
    for name, (_, reason) in BAD_FILES.items():
        assert reason in reasons[name], (name, reasons[name])
        assert str(src / f"{name}.npz") == next(f["path"] for f in store.failures if f["id"] == name)
    assert {f["id"] for f in json.loads(sidecar_path(out).read_text())["failures"]} == set(BAD_FILES)
    value_import(src, tmp_path / "g.h5")  # without --strict the same import exits 0


def test_a_folder_without_usable_features_is_one_error_and_writes_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    np.savez(src / "a.npz", feats=np.ones((3, 4)))
    result = value_import(src, tmp_path / "f.h5", expect=1)
    assert f"--src {src}: none of its 1 .npz files holds usable features" in result.output
    assert "has no 'features' array" in result.output and "VALUE release" in result.output
    assert not (tmp_path / "f.h5").exists() and not parts_dir(tmp_path / "f.h5").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no media files found (looked for .npz)" in value_import(empty, tmp_path / "f.h5", expect=1).output


def test_npy_dir_needs_fps_and_times_frames_by_it(tmp_path):
    src = tmp_path / "npy"
    src.mkdir()
    rng = np.random.default_rng(1)
    arrays = {f"v{i}": rng.standard_normal((n, 6)).astype(np.float32) for i, n in enumerate([3, 5])}
    for vid, arr in arrays.items():
        np.save(src / f"{vid}.npy", arr)
    out = tmp_path / "f.h5"
    args = ["extract", "import", "--format", "npy-dir", "--src", src, "--out", out, "-q"]
    assert "--format npy-dir stores no frame rate: give --fps" in run_vl(args, expect=1).output
    run_vl(args + ["--fps", "2", "--dtype", "float32", "--model", "ViT-L-14", "--pretrained", "openai"])
    store = FeatureStore(out)
    np.testing.assert_array_equal(store.get("v1"), arrays["v1"])
    np.testing.assert_allclose(store.timestamps("v1"), [0, 0.5, 1.0, 1.5, 2.0])
    assert store.duration("v0") == 1.5
    assert store.provenance["encoder"]["model"] == "ViT-L-14" and store.provenance["import"]["format"] == "npy-dir"


def test_manifest_coverage_lists_missing_ids_as_data_check_words_them(tmp_path):
    src = tmp_path / "src"
    write_value_release(src)
    manifest = write_manifest(tmp_path / "tvqa_val.jsonl", [tvqa_example(i, vid) for i, vid in enumerate(
        ["s01e01_seg02_clip_00", "gone_clip_1", "gone_clip_2"])], ManifestMeta("tvqa", "tests"))
    out = tmp_path / "f.h5"
    result = value_import(src, out, "--manifest", manifest.path, "--strict", expect=1)
    assert f"{manifest.path}: media: 2 of 3 MISSING from {out}: gone_clip_1, gone_clip_2" in result.output
    covered = write_manifest(tmp_path / "ok.jsonl", [tvqa_example(0, "s01e01_seg02_clip_01")], ManifestMeta("t", "t"))
    result = run_vl(["extract", "import", "--format", "value-npz", "--src", src, "--out", out,
                     "--manifest", covered.path, "--strict"])
    assert f"{covered.path}: media: all 1 in {out}" in result.output
    assert "3 already in store (skipped)" in result.output
    missing_manifest = tmp_path / "nope.jsonl"
    assert f"--manifest {missing_manifest}: no such file" in value_import(
        src, tmp_path / "g.h5", "--manifest", missing_manifest, expect=1).output
    assert not (tmp_path / "g.h5").exists()


def test_rerun_extends_the_store_other_settings_are_refused_and_overwrite_replaces(tmp_path):
    src, more = tmp_path / "src", tmp_path / "more"
    write_value_release(src)
    extra = write_value_release(more, {"s09e09_seg01_clip_00": 2}, seed=5)
    out = tmp_path / "f.h5"
    value_import(src, out)
    value_import(more, out)
    store = FeatureStore(out)
    assert len(store) == 4 and len(store.provenance["runs"]) == 2
    np.testing.assert_array_equal(store.get("s09e09_seg01_clip_00"), extra["s09e09_seg01_clip_00"])
    result = value_import(src, out, "--fps", "1", expect=1)
    assert "preprocess.sampling.fps is 0.6666666666666666, this run asks for 1.0" in result.output
    value_import(more, out, "--fps", "1", "--overwrite")
    store = FeatureStore(out)
    assert store.ids == ["s09e09_seg01_clip_00"] and list(store.timestamps("s09e09_seg01_clip_00")) == [0.0, 1.0]


def test_an_interrupted_import_resumes_to_the_same_store(tmp_path, monkeypatch):
    import vl.extract.import_features as imp

    src = tmp_path / "src"
    write_value_release(src, {f"clip_{i:02d}": 2 + i for i in range(6)})
    whole = tmp_path / "whole.h5"
    import_features(ImportOptions("value-npz", src, whole, progress=False))
    real, calls = imp.load_array, []

    def dies_on_the_fifth(data, fmt):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(data, fmt)

    monkeypatch.setattr(imp, "load_array", dies_on_the_fifth)
    monkeypatch.setattr(imp, "ADD_VIDEOS", 1)
    killed = tmp_path / "killed.h5"
    with pytest.raises(KeyboardInterrupt):
        import_features(ImportOptions("value-npz", src, killed, shard_rows=2, progress=False))
    assert not killed.exists() and len(list(parts_dir(killed).glob("shard-*.h5"))) == 2  # 4 videos kept
    monkeypatch.setattr(imp, "load_array", real)
    summary = import_features(ImportOptions("value-npz", src, killed, progress=False))
    assert (summary.already_done, summary.imported) == (4, 2)
    a, b = FeatureStore(whole), FeatureStore(killed)
    assert a.ids == b.ids
    for vid in a.ids:
        np.testing.assert_array_equal(a.get(vid), b.get(vid))
        np.testing.assert_array_equal(a.timestamps(vid), b.timestamps(vid))
    assert a.provenance["import"]["source_sha256"] == b.provenance["import"]["source_sha256"]


def test_a_rerun_reads_only_new_or_changed_files_and_gives_the_same_digest(tmp_path, monkeypatch):
    """<out>.sources.json keeps each file's sha256 and header by (path, size, mtime_ns): a rerun
    of a finished import opens no file; a rewritten or touched file is read again and the
    digest is what reading every file gives. Counted, not timed."""
    import os

    import vl.extract.import_features as imp
    from vl.extract.source_cache import source_cache_path

    src, out = tmp_path / "src", tmp_path / "f.h5"
    write_value_release(src)
    settled = lambda p, age=100: os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns - age * 10**9))  # noqa: E731
    for p in src.iterdir():
        settled(p)  # released files are older than the run (one changed in the last 2 s is not cached)
    first = import_features(ImportOptions("value-npz", src, out, progress=False))
    assert source_cache_path(out).is_file() and first.source_sha256 == expected_digest(src)

    reads, headers = [], []
    real_read, real_header = imp._read_bytes, imp.read_header
    monkeypatch.setattr(imp, "_read_bytes", lambda path: reads.append(Path(path).name) or real_read(path))
    monkeypatch.setattr(imp, "read_header", lambda path, fmt: headers.append(Path(path).name) or real_header(path, fmt))

    def rerun() -> tuple[list[str], list[str], str]:
        reads.clear(), headers.clear()
        s = import_features(ImportOptions("value-npz", src, out, progress=False))
        assert s.already_done == len(LENGTHS) and s.imported == 0 and s.source_sha256 == expected_digest(src)
        return sorted(reads), sorted(headers), s.source_sha256

    assert rerun() == ([], [], first.source_sha256)  # nothing opened
    changed = src / "s01e01_seg02_clip_01.npz"
    np.savez(changed, features=np.zeros((4, WIDTH), np.float16))  # same name and size, other bytes
    read, surveyed, digest = rerun()
    assert read == surveyed == [changed.name] and digest != first.source_sha256  # noticed, as reading all does
    assert rerun()[0] == [changed.name]  # changed in the last 2 s: not cached, read again
    settled(changed)
    assert rerun()[0] == [changed.name] and rerun()[:2] == ([], [])
    touched = src / "s03e02_seg01_clip_05.npz"
    settled(touched, age=50)  # same bytes, another mtime
    assert rerun()[:2] == ([touched.name], [touched.name])
    source_cache_path(out).write_text("{not json")  # only a cache: ignored and rewritten
    assert rerun()[0] == sorted(p.name for p in src.iterdir()) and rerun()[0] == []


def test_a_rerun_warns_when_a_file_of_an_id_in_the_store_changed_since_it_was_imported(tmp_path, monkeypatch):
    """The rerun skips ids already in the store, so a changed file keeps its old features: one
    warning names how many, the first three paths, and --overwrite; it holds on every rerun
    (the sha256 at import is recorded in <out>.sources.json, compared with the cached one
    while the file is unchanged: no file is opened for it). Same bytes under a new mtime, or
    a file re-imported by --overwrite, is no change."""
    import os

    import vl.extract.import_features as imp

    src, out = tmp_path / "src", tmp_path / "f.h5"
    names = {f"clip_{i}": 3 + i for i in range(5)}
    arrays = write_value_release(src, names)
    value_import(src, out)  # the files are new: too recent for the size/mtime cache, recorded all the same
    for i in range(4):  # same size, other bytes; the last one keeps its bytes under another mtime
        np.savez(src / f"clip_{i}.npz", features=np.zeros((3 + i, WIDTH), np.float16))
    os.utime(src / "clip_4.npz", ns=(0, (src / "clip_4.npz").stat().st_mtime_ns - 10**10))
    for _ in range(2):  # the warning holds until the features are replaced
        result = value_import(src, out)
        (warning,) = [line for line in result.stderr.splitlines() if "changed since" in line]
        assert warning == (f"warning: 4 source file(s) changed since their features were imported, and {out} keeps "
                           f"the old features: {src / 'clip_0.npz'}, {src / 'clip_1.npz'}, {src / 'clip_2.npz'} and 1 "
                           "more; rerun with --overwrite to import them again")
        np.testing.assert_array_equal(FeatureStore(out).get("clip_2"), arrays["clip_2"])  # no error, old features
    settle = lambda p: os.utime(p, ns=(0, p.stat().st_mtime_ns - 10**11))  # noqa: E731
    for p in src.iterdir():
        settle(p)
    value_import(src, out)  # the cache learns the settled files
    reads = []
    real_read = imp._read_bytes
    monkeypatch.setattr(imp, "_read_bytes", lambda path: reads.append(path) or real_read(path))
    summary = import_features(ImportOptions("value-npz", src, out, progress=False))
    assert reads == [] and sorted(Path(p).name for p in summary.changed) == [f"clip_{i}.npz" for i in range(4)]
    assert "changed since" not in value_import(src, out, "--overwrite").stderr
    assert not FeatureStore(out).get("clip_2").any()  # the new bytes' features
    assert import_features(ImportOptions("value-npz", src, out, progress=False)).changed == []


def extracted_video_store(path: Path, ids: list[str], width: int = WIDTH) -> Path:
    """A store as `vl extract videos` writes them (its encoder section has no origin)."""
    prov = {"encoder": {"library": "open_clip", "model": "ViT-B-32", "weights": {"source": "tag", "tag": "openai"}},
            "preprocess": {"sampling": {"mode": "fps", "fps": 2 / 3}}, "features": {"layer": "pooled"}}
    rng = np.random.default_rng(3)
    with StoreBuilder(path, prov, {"pooled": (width,)}, "float16", layout="frames") as b:
        b.add(ids, {"pooled": rng.standard_normal((4 * len(ids), width))},
              FrameInfo([4] * len(ids), [1.5 * k for _ in ids for k in range(4)], [6.0] * len(ids)))
        b.finish({}, retried_ids=set(ids))
    return path


def test_store_checks_read_an_imported_store_like_any_other(tmp_path):
    write_value_release(tmp_path / "src")
    value_import(tmp_path / "src", tmp_path / "f.h5")
    store = FeatureStore(tmp_path / "f.h5")
    check_store_matches(store, {"encoder": {"model": "ViT-B-32", "weights": {"tag": "openai"}},
                                "features": {"layer": "pooled"}})
    with pytest.raises(VLError) as e:
        check_store_matches(store, {"encoder": {"model": "RN101", "origin": "extracted"}})
    assert "encoder.model is 'ViT-B-32', the config asks for 'RN101'" in str(e.value)
    assert "encoder.origin is 'imported', the config asks for 'extracted'" in str(e.value)
    assert "vl extract import" in str(e.value)
    extracted = FeatureStore(extracted_video_store(tmp_path / "x.h5", ["a"]))
    assert mixed_origin_problems([store, store]) == [] and mixed_origin_problems([extracted]) == []
    (problem,) = mixed_origin_problems([store, extracted])
    assert f"imported: {store.path}" in problem and f"extracted: {extracted.path}" in problem
    # an extraction into the imported store is refused by the store builder, naming the fields
    with pytest.raises(VLError, match="encoder.origin is 'imported', this run asks for None"):
        extracted_video_store(tmp_path / "f.h5", ["b"])


# -- training on an imported store --------------------------------------------------------------
SUBS = [{"start": 1.0 * i, "end": 1.0 * i + 0.9, "text": f"line {i}"} for i in range(8)]


def tvqa_example(i: int, vid: str, task: str = "tvqa") -> dict:
    n = 5 if task == "tvqa" else 4
    choices = ["amy", "raj", "penny", "leonard", "howard"][:n]
    return {"id": f"{task}{i}", "task": task, "split": "train", "media": [vid], "question": "who says hello",
            "choices": choices, "ts": [1.0, 4.5], "subtitles": SUBS, "answer_idx": i % n,
            "answers": [choices[i % n]]}


def train_config(tmp_path: Path, tasks: list[tuple[str, Path, Path]]) -> Path:
    cfg = {"run_dir": str(tmp_path / "run"), "epochs": 1, "seed": 0, "backbone": "tiny-t5", "init": "random",
           "tokenizer_vocab_size": 200, "data": {"max_frames": 4}, "val_every": 0,
           "tasks": [{"name": name, "train_manifest": str(m), "store": str(s), "batch_size": 4}
                     for name, m, s in tasks]}
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.usefixtures("one_torch_thread")
def test_a_tiny_run_trains_on_an_imported_store_and_refuses_to_mix_it_with_extracted(tmp_path):
    write_value_release(tmp_path / "src")
    store = tmp_path / "tv.h5"
    value_import(tmp_path / "src", store)
    vids = sorted(LENGTHS)
    manifest = write_manifest(tmp_path / "tvqa_train.jsonl", [tvqa_example(i, vids[i % 3]) for i in range(8)],
                              ManifestMeta("tvqa", "tests")).path
    result = CliRunner().invoke(cli, ["train", "-c", str(train_config(tmp_path, [("tvqa", manifest, store)]))],
                                prog_name="vl")
    assert result.exit_code == 0, result.output
    run_json = json.loads((tmp_path / "run/run.json").read_text())
    (info,) = run_json["feature_stores"].values()
    assert info["settings"]["encoder"]["origin"] == "imported"
    assert (tmp_path / "run/checkpoints/last/model.safetensors").is_file()
    # `vl predict` cannot make features like imported ones for a new video: one message, before any work
    (tmp_path / "new.mp4").write_bytes(b"")
    result = CliRunner().invoke(cli, ["predict", "--run", str(tmp_path / "run"), "--video", str(tmp_path / "new.mp4"),
                                      "--question", "q", "--choice", "a", "--choice", "b"], prog_name="vl")
    assert result.exit_code == 1 and "were not made by `vl extract` from an open_clip model" in result.output
    # --resume compares the imported store's settings as any store's: a re-import at another rate is refused
    value_import(tmp_path / "src", store, "--fps", "1", "--overwrite")
    result = CliRunner().invoke(cli, ["train", "--resume", str(tmp_path / "run"), "--set", "epochs=2"], prog_name="vl")
    assert result.exit_code == 1
    assert f"feature store {store}: preprocess.sampling.fps was 0.6666666666666666 when the run started, now 1.0" \
        in result.output
    value_import(tmp_path / "src", store, "--overwrite")

    other = extracted_video_store(tmp_path / "how2.h5", ["h0", "h1"])
    how2 = write_manifest(tmp_path / "how2qa_train.jsonl", [tvqa_example(i, f"h{i % 2}", "how2qa") for i in range(4)],
                          ManifestMeta("how2qa", "tests")).path
    (tmp_path / "mixed").mkdir()
    cfg = train_config(tmp_path / "mixed", [("tvqa", manifest, store), ("how2qa", how2, other)])
    result = CliRunner().invoke(cli, ["train", "-c", str(cfg)], prog_name="vl")
    assert result.exit_code == 1
    assert "the run's feature stores mix imported and extracted features" in result.output
    assert f"imported: {store}" in result.output and f"extracted: {other}" in result.output
    assert not (tmp_path / "mixed/run").exists()


def test_vl_extract_import_help_names_the_formats_and_the_failure_rule():
    import typing

    from vl.extract.import_features import FORMATS, ImportFormat

    result = CliRunner().invoke(cli, ["extract", "import", "--help"], prog_name="vl")
    assert result.exit_code == 0
    assert f"[{'|'.join(FORMATS)}]" in result.output and list(FORMATS) == list(typing.get_args(ImportFormat))
    for text in ("value-npz", "npy-dir", "recorded with its reason", "vl extract import --format value-npz"):
        assert text in result.output
