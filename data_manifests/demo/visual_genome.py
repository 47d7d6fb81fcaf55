"""The shapes world in Visual Genome's release format (`vg-caption`, `vg-qa`): every scene
image is also a VG image, as about half of VG's images are COCO images, under its own VG id
(`VG_ID_BASE + index`, its file `vg/VG_100K/<id>.jpg` a copy of the COCO file) with its
COCO id in `image_data.json`, so `--exclude-images` of the world's val manifests leaves out
the val images by COCO id. Region descriptions name each shape and the background (some in
two words, which the converter drops as VL-T5 did); the questions ask a count, a colour and
a shape, in VG's style ("Red."), every answer following from the scene."""
from __future__ import annotations

from vl.data_manifests.demo.scenes import NUMBER_WORDS, VG_STREAM, Scene, capitalized, item_rng, sample, with_article

VG_ID_BASE = 2_000_000
VG_URL = "https://cs.stanford.edu/people/rak248/VG_100K/{}.jpg"


def vg_id(index: int) -> int:
    return VG_ID_BASE + index


def vg_image_path(index: int) -> str:
    return f"vg/VG_100K/{vg_id(index)}.jpg"


def vg_records(seed: int, index: int, coco_id: int, scene: Scene) -> tuple[dict, dict, dict]:
    """(image_data record, region_descriptions record, question_answers record) of one image."""
    ident = vg_id(index)
    image = {"image_id": ident, "url": VG_URL.format(ident), "width": scene.width, "height": scene.height,
             "coco_id": coco_id, "flickr_id": None}
    phrases = [(with_article(f"{o.size} {o.color} {o.shape}"), o) for o in sorted(scene.objects, key=lambda o: o.x)]
    phrases += [(f"{o.color} {o.shape}", o) for o in scene.objects]  # two words: dropped by vg-caption
    regions = [{"region_id": ident * 100 + k, "image_id": ident, "phrase": phrase,
                "x": o.x - o.r, "y": o.y - o.r, "width": 2 * o.r, "height": 2 * o.r}
               for k, (phrase, o) in enumerate(phrases)]
    regions.append({"region_id": ident * 100 + len(regions), "image_id": ident,
                    "phrase": f"{with_article(scene.background.name)} background",
                    "x": 0, "y": 0, "width": scene.width, "height": scene.height})
    qas = [{"qa_id": ident * 10 + k, "image_id": ident, "question": q, "answer": a, "q_objects": [], "a_objects": []}
           for k, (q, a) in enumerate(_questions(item_rng(seed, VG_STREAM, index), scene))]
    return image, {"id": ident, "regions": regions}, {"id": ident, "qas": qas}


def _questions(rng, scene: Scene) -> list[tuple[str, str]]:
    objs = scene.objects
    options = [("How many shapes are there?", f"{capitalized(NUMBER_WORDS[len(objs)])}.")]
    for o in objs:
        if sum(p.shape == o.shape for p in objs) == 1:
            options.append((f"What color is the {o.shape}?", f"{capitalized(o.color)}."))
        if sum(p.color == o.color for p in objs) == 1:
            options.append((f"What shape is the {o.color} shape?", f"{capitalized(with_article(o.shape))}."))
    return sample(rng, options, 3)
