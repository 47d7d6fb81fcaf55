"""Reading a big JSON release file one element at a time (`vl.data_manifests.json_stream`):
the same values as `json.load` whatever the buffer cuts (tiny buffers force elements, strings,
escapes, numbers and multi-byte characters across its end), one VLError naming the file, line,
byte and element for a file that is not a list, is truncated or malformed, and a memory peak
that is a small fraction of `json.load`'s for the same file (VG's 5.4M regions are GBs whole)."""
from __future__ import annotations

import json
import tracemalloc

import pytest

from test_convert_images import write_json
from vl.data_manifests.json_stream import iter_json_array, iter_json_object
from vl.data_manifests.registry import ConvertRequest, get_converter
from vl.shared import VLError

TRICKY = [
    [],
    [{}],
    [1, -2.5e-3, 12345678901234567890, True, False, None, "", [], [[]], {"": {}}],
    ["a]b", "c[d", "e\"]f", "\\", "\\\"", "}{", ",", "ü ✓ 𝄞", "\u0000\n\t", '"],["'],
    [{"phrase": "the \"clock\" says ] and [", "regions": [{"id": i, "x": i * 1.5} for i in range(5)]}] * 3,
    [{"id": i, "s": "x" * i, "u": "é" * (i % 7)} for i in range(60)],
]


@pytest.mark.parametrize("doc", TRICKY, ids=range(len(TRICKY)))
@pytest.mark.parametrize("indent", [None, 2])
def test_every_element_comes_back_whatever_the_buffer_cuts(tmp_path, doc, indent):
    path = tmp_path / "f.json"
    path.write_text(json.dumps(doc, indent=indent, ensure_ascii=False), encoding="utf-8")
    for chunk_size in (1, 2, 3, 5, 8, 64, 1 << 20):
        assert list(iter_json_array(path, what="test file", chunk_size=chunk_size)) == doc, chunk_size


def test_an_object_streams_its_members_in_order_repeated_keys_each_time(tmp_path):
    path = tmp_path / "q.json"
    path.write_text('{"1": {"imageId": "n1", "q": "is it \\"}\\"?"}, "k\\":": [1, {"a": "]"}],\n "1": 3}')
    for chunk_size in (1, 4, 1 << 20):
        assert list(iter_json_object(path, what="test file", chunk_size=chunk_size)) == [
            ("1", {"imageId": "n1", "q": 'is it "}"?'}), ('k":', [1, {"a": "]"}]), ("1", 3)]
    path.write_text(" {} ")
    assert list(iter_json_object(path, what="test file")) == []


def errors(path, reader=iter_json_array, must_be="a JSON list of images") -> set[str]:
    """The error for each buffer size (one message, however the buffer cuts the file)."""
    found = set()
    for chunk_size in (1, 3, 1 << 20):
        with pytest.raises(VLError) as err:
            list(reader(path, what="Visual Genome test.json", must_be=must_be, chunk_size=chunk_size))
        found.add(str(err.value).replace(str(path), "F"))
    return found


BAD = [
    ('{"regions": []}', "F: must be a JSON list of images, not a JSON object; is this the Visual Genome test.json?"),
    ("", "F: must be a JSON list of images, not an empty file; is this the Visual Genome test.json?"),
    ('"x"', "F: must be a JSON list of images, not a JSON string; is this the Visual Genome test.json?"),
    ("[", "F:1: byte 1: ends before the first item (no closing ']'): the file is truncated"),
    ('[{"id": 1},\n {"id": 2}', "F:2: byte 22: the file ends after element [1] without the closing ']': the file "
                                "is truncated"),
    ('[{"id": 1},\n {"id": 2, "phrase": "a ma', "F:2: byte 33: element [1]: the file ends inside it (Unterminated "
                                                "string starting at): the file is truncated"),
    ('[{"id": 1},\n {"id": 2},', "F:2: byte 23: element [2]: the file ends inside it (Expecting value)"),
    ('[{"id": 1},\n {"id": 2},]', "F:2: byte 23: a ',' before the closing ']' (after element [1]): not valid JSON"),
    ('[{"id": 1},\n {"id" 2}, {"id": 3}]', "F:2: byte 19: element [1]: not valid JSON (Expecting ':' delimiter)"),
    ('["ü✓", 1 2]', "F:1: byte 12: element [1]: not valid JSON (expected ',' or ']' after it)"),  # ü is 2 bytes, ✓ 3: at character 9
    ('[1, 2] [3]', "F:1: byte 7: text after the closing ']': not valid JSON"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[b[0][:12] for b in BAD])
def test_a_bad_file_is_one_error_naming_the_file_line_byte_and_element(tmp_path, text, message):
    path = tmp_path / "test.json"
    path.write_text(text, encoding="utf-8")
    (found,) = errors(path)  # the same message for every buffer size
    assert found.startswith(message), found
    assert found.endswith("is this the Visual Genome test.json?")


def test_bad_utf8_and_a_missing_file_and_an_object_that_is_a_list(tmp_path):
    path = tmp_path / "test.json"
    path.write_bytes(b'[{"phrase": "ok"},\n {"phrase": "\xff"}]')
    assert errors(path) == {"F: byte 32: not UTF-8 text (invalid start byte); is this the Visual Genome test.json?"}
    with pytest.raises(VLError, match="gone.json: no such file"):
        next(iter_json_array(tmp_path / "gone.json", what="x"))
    path.write_text("[1]")
    assert errors(path, iter_json_object, "a JSON object keyed by question id") == {
        "F: must be a JSON object keyed by question id, not a JSON list; is this the Visual Genome test.json?"}
    path.write_text('{"a": 1, 2: 3}')
    assert {m.split(": member")[0] for m in errors(path, iter_json_object)} == {"F:1: byte 9"}


# -------------------------------------------------------------------- memory

def region_descriptions(images: int, regions: int) -> list[dict]:
    """Visual Genome's region_descriptions.json shape, phrases of 3-7 words, a few repeated."""
    words = "a man riding red moped on the street near green clock with white sign".split()
    return [{"id": i, "regions": [
        {"region_id": i * 100 + j, "image_id": i, "phrase": " ".join(words[(i + j) % 7:(i + j) % 7 + 3 + j % 5]),
         "x": j, "y": 2 * j, "width": 30 + j, "height": 40 + i % 50} for j in range(regions)]}
        for i in range(1, images + 1)]


def peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_a_small_fraction_of_the_parsed_file(tmp_path, monkeypatch):
    """Reading: the peak is the buffer and one element, not the file (a ratio to json.load's
    peak on the same file, no timing). Converting vg-caption: what stays is the examples written.
    The buffer is a constant (1 MiB by default): 64 KiB here, in scale with a file of a few MB."""
    import vl.data_manifests.json_stream as json_stream

    monkeypatch.setattr(json_stream, "CHUNK_SIZE", 1 << 16)
    doc = region_descriptions(images=400, regions=50)  # 20k regions, about 2.4 MB of JSON
    path = tmp_path / "region_descriptions.json"
    path.write_text(json.dumps(doc))
    image_data = write_json(tmp_path / "image_data.json", [{"image_id": r["id"], "coco_id": None} for r in doc])
    del doc

    def load_whole():
        with open(path, encoding="utf-8") as f:
            assert len(json.load(f)) == 400

    def stream():
        assert sum(1 for _ in iter_json_array(path, what="test")) == 400

    whole = peak_bytes(load_whole)
    assert whole > 4 * path.stat().st_size  # Python objects: several times the file's bytes
    assert peak_bytes(stream) < 0.05 * whole
    # the converter itself (convert_dataset adds constant buffers: sha256 of the sources in 1 MiB blocks)
    req = ConvertRequest(split="train", annotations=[path], image_data=image_data)
    converted = []
    assert peak_bytes(lambda: converted.append(get_converter("vg-caption").convert(req))) < 0.25 * whole
    assert len(converted[0].examples) == 400  # what stays: the phrases kept for the manifest, not the regions


def test_the_converters_write_the_same_manifest_through_a_tiny_buffer(tmp_path, monkeypatch):
    """vg-caption, vg-qa (both VG files) and gqa read their files through the stream: a buffer
    of a few bytes, cutting every record, gives the same manifest lines as the default one."""
    import vl.data_manifests.json_stream as json_stream
    from test_convert_images import GQA
    from test_convert_vg import IMAGE_DATA, QAS, REGIONS

    image_data = write_json(tmp_path / "image_data.json", IMAGE_DATA)
    requests = {
        "vg-caption": ConvertRequest(split="train", annotations=[write_json(tmp_path / "r.json", REGIONS)],
                                     image_data=image_data),
        "vg-qa": ConvertRequest(split="train", questions=[write_json(tmp_path / "q.json", QAS)], image_data=image_data),
        "gqa": ConvertRequest(split="val", questions=[write_json(tmp_path / "g.json", GQA)]),
    }
    for name, req in requests.items():
        default = get_converter(name).convert(req).examples
        with monkeypatch.context() as m:
            m.setattr(json_stream, "CHUNK_SIZE", 3)
            assert get_converter(name).convert(req).examples == default and default, name
