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
from vl.data_manifests.json_stream import iter_json_array, iter_json_array_member, iter_json_object, top_level_opener
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


# ------------------------------------------------------- the array under one key

MEMBER_DOCS = [  # the member first, last, in the middle; the same key inside other members is not it
    {"images": [{"cocoid": 1, "images": [9]}, "]}", []], "dataset": "coco"},
    {"info": {"images": [5], "s": "\"images\": ["}, "license": [{"images": 3}], "images": [1, {"a": "é"}]},
    {"data_subtype": "val2014", "images": [], "task_type": "Open-Ended", "n": [[{"images": {}}]]},
    {"images": [[1, 2], {"id": 3, "text": "𝄞 ,] }"}] * 20},
]


@pytest.mark.parametrize("doc", MEMBER_DOCS, ids=range(len(MEMBER_DOCS)))
@pytest.mark.parametrize("indent", [None, 2])
def test_the_array_under_a_key_streams_its_elements_and_keeps_the_other_members(tmp_path, doc, indent):
    path = tmp_path / "f.json"
    path.write_text(json.dumps(doc, indent=indent, ensure_ascii=False), encoding="utf-8")
    for chunk_size in (1, 2, 3, 5, 8, 64, 1 << 20):
        others = {}
        assert list(iter_json_array_member(path, "images", what="test file", others=others,
                                           chunk_size=chunk_size)) == doc["images"], chunk_size
        assert others == {k: v for k, v in doc.items() if k != "images"}, chunk_size
        assert list(iter_json_array_member(path, "images", what="test file", chunk_size=chunk_size)) == doc["images"]
    assert top_level_opener(path, what="test file") == "{"


BAD_MEMBER = [
    ('{"dataset": "coco", "info": {"images": []}}', "F: has no member 'images' (a JSON list of images); is this the "
                                                    "Karpathy test.json?"),
    ('{"dataset": "coco",\n "images": {"1": {}}}', "F:2: byte 31: member 'images' must be a JSON list of images, not "
                                                   "a JSON object"),
    ('{"images": "all"}', "F:1: byte 11: member 'images' must be a JSON list of images, not a JSON string"),
    ('{"images": 3}', "F:1: byte 11: member 'images' must be a JSON list of images, not a JSON string, number or "
                      "literal"),
    ('[{"images": []}]', "F: must be a JSON object with 'images': a JSON list of images, not a JSON list"),
    ('{"images": [{"id": 1},\n {"id": 2, "raw": "a ma', "F:2: byte 41: images[1]: the file ends inside it "
                                                         "(Unterminated string starting at): the file is truncated"),
    ('{"images": [{"id": 1}, {"id": 2}', "F:1: byte 32: the file ends after images[1] without the closing ']': the "
                                        "file is truncated"),
    ('{"images": [{"id": 1}]', "F:1: byte 22: the file ends after member 'images' without the closing '}': the file "
                              "is truncated"),
    ('{"images": [{"id": 1}],\n "dataset": "co', "F:2: byte 36: member 'dataset': the file ends inside it"),
    ('{"images": [1] "dataset": "coco"}', "F:1: byte 15: member 'images': not valid JSON (expected ',' or '}' after it)"),
    ('{"images": [1, 2,]}', "F:1: byte 17: a ',' before the closing ']' (after element [1]): not valid JSON"),
    ('{"images": [1], "images": [2]}', "F:1: byte 16: member 'images' appears a second time (json.load would keep "
                                       "only the last one)"),
    ('{"images": [1]} []', "F:1: byte 16: text after the closing '}': not valid JSON"),
]


@pytest.mark.parametrize("text, message", BAD_MEMBER, ids=[b[0][:16] for b in BAD_MEMBER])
def test_a_bad_member_file_is_one_error_naming_the_file_the_key_and_the_fix(tmp_path, text, message):
    path = tmp_path / "test.json"
    path.write_text(text, encoding="utf-8")
    found = set()
    for chunk_size in (1, 3, 1 << 20):
        with pytest.raises(VLError) as err:
            list(iter_json_array_member(path, "images", what="Karpathy test.json", must_be="a JSON list of images",
                                        chunk_size=chunk_size))
        found.add(str(err.value).replace(str(path), "F"))
    (one,) = found  # the same message for every buffer size
    assert one.startswith(message), one
    assert one.endswith("is this the Karpathy test.json?")


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


def test_vqa2_and_coco_caption_hold_their_examples_not_the_files(tmp_path, monkeypatch):
    """vqa2 streams the questions and the annotations and joins them through compact
    annotations (the ten answers as shared strings, no per-answer records); coco-caption keeps
    each image's references, not its tokens. Before streaming, each peaked above json.load of
    its files (the files whole, then the examples: vqa2 1.3 times it); now vqa2 holds about
    half of it (the examples it returns), coco-caption a quarter."""
    import vl.data_manifests.json_stream as json_stream
    from test_convert_images import coco_image, human

    monkeypatch.setattr(json_stream, "CHUNK_SIZE", 1 << 16)
    answers = ["yes", "no", "2", "red", "blue", "dog", "cat", "3", "white", "1"]
    n = 1500
    q = write_json(tmp_path / "q.json", {"info": {}, "license": {}, "data_subtype": "val2014", "questions": [
        {"image_id": i // 5, "question": f"What is thing {i % 50} here?", "question_id": i} for i in range(n)]})
    a = write_json(tmp_path / "a.json", {"info": {}, "license": {}, "data_subtype": "val2014", "annotations": [
        {"question_id": i, "image_id": i // 5, "question_type": "what is the", "answer_type": "other",
         "multiple_choice_answer": answers[i % 10], "answers": human(answers[i % 10:] + answers[:i % 10])}
        for i in range(n)]})
    k = write_json(tmp_path / "k.json", {"dataset": "coco", "images": [
        coco_image(i, "train", [f"A man riding a red moped number {i + j} down the street." for j in range(5)],
                   first_sentid=5 * i) for i in range(500)]})

    def load_whole(*paths):
        for path in paths:
            with open(path, encoding="utf-8") as f:
                json.load(f)

    kept = []
    vqa = ConvertRequest(split="val", questions=[q], annotations=[a])
    assert peak_bytes(lambda: kept.append(get_converter("vqa2").convert(vqa))) < 0.65 * peak_bytes(lambda: load_whole(q, a))
    caption = ConvertRequest(split="train", karpathy=k)
    assert peak_bytes(lambda: kept.append(get_converter("coco-caption").convert(caption))) < 0.5 * peak_bytes(
        lambda: load_whole(k))
    assert len(kept[0].examples) == n and kept[0].examples[7]["answers"][0] == "3" and len(kept[1]) == 500


def test_the_converters_write_the_same_manifest_through_a_tiny_buffer(tmp_path, monkeypatch):
    """vg-caption, vg-qa (both VG files), gqa, coco-caption (Karpathy's "images"), vqa2 (the
    official "questions" and "annotations", the LXMERT list, Karpathy's split) read their files
    through the stream: a buffer of a few bytes, cutting every record, gives the same manifest
    lines as the default one."""
    import vl.data_manifests.json_stream as json_stream
    from test_convert_images import GQA, KARPATHY, VQA_EXPECTED, vqa_annotations, vqa_questions
    from test_convert_vg import IMAGE_DATA, QAS, REGIONS

    image_data = write_json(tmp_path / "image_data.json", IMAGE_DATA)
    karpathy = write_json(tmp_path / "dataset_coco.json", KARPATHY)
    questions = write_json(tmp_path / "vq.json", vqa_questions())
    lxmert = write_json(tmp_path / "lx.json", [{"img_id": "COCO_val2014_000000391895", "question_id": 7, "sent": "?",
                                                "label": {"no": 1}}])
    on_test_image = write_json(tmp_path / "vt.json", vqa_questions(questions=[
        {"image_id": 42, "question": "Why?", "question_id": 42}, {"image_id": 391895, "question": "Who?", "question_id": 1}]))
    requests = {
        "vg-caption": ConvertRequest(split="train", annotations=[write_json(tmp_path / "r.json", REGIONS)],
                                     image_data=image_data),
        "vg-qa": ConvertRequest(split="train", questions=[write_json(tmp_path / "q.json", QAS)], image_data=image_data),
        "gqa": ConvertRequest(split="val", questions=[write_json(tmp_path / "g.json", GQA)]),
        "coco-caption": ConvertRequest(split="train", karpathy=karpathy, restval_into_train=True),
        "vqa2": ConvertRequest(split="val", questions=[questions],
                               annotations=[write_json(tmp_path / "va.json", vqa_annotations())]),
        "vqa2 lxmert": ConvertRequest(split="val", questions=[lxmert]),
        "vqa2 --karpathy": ConvertRequest(split="test", questions=[on_test_image], karpathy=karpathy,
                                          karpathy_split="test"),
    }
    found = {}
    for name, req in requests.items():
        default = examples_of(get_converter(name.split()[0]).convert(req))
        with monkeypatch.context() as m:
            m.setattr(json_stream, "CHUNK_SIZE", 3)
            assert examples_of(get_converter(name.split()[0]).convert(req)) == default and default, name
        found[name] = default
    assert [ex["id"] for ex in found["coco-caption"]] == ["522418", "184613"]  # train + restval
    assert found["vqa2"] == VQA_EXPECTED and found["vqa2 lxmert"][0]["labels"] == {"no": 1}
    assert [ex["id"] for ex in found["vqa2 --karpathy"]] == ["1"]  # on Karpathy's test image 391895


def examples_of(converted) -> list[dict]:
    """A converter returns its examples, or a Converted holding them."""
    return converted if isinstance(converted, list) else converted.examples


def test_vqa2_reads_the_members_in_any_order(tmp_path):
    """data_subtype after the questions (the media ids need it), the annotations before the
    rest: the same examples as the official files' order."""
    from test_convert_images import VQA_EXPECTED, vqa_annotations, vqa_questions

    questions, annotations = vqa_questions(), vqa_annotations()
    q = write_json(tmp_path / "q.json", {k: questions[k] for k in reversed(questions)})
    a = write_json(tmp_path / "a.json", {k: annotations[k] for k in reversed(annotations)})
    assert list(json.loads(q.read_text()))[0] == "questions" and list(json.loads(a.read_text()))[0] == "annotations"
    req = ConvertRequest(split="val", questions=[q], annotations=[a])
    assert get_converter("vqa2").convert(req).examples == VQA_EXPECTED
