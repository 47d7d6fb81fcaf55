"""What people say about a scene, in each image dataset's style: VQA questions with
ten human-style answers, GQA questions, COCO-style captions and NLVR2 statements. Every
answer follows from the scene; an object is named only by a description that fits it alone."""
from __future__ import annotations

from collections import Counter
from typing import Callable

from vl.data_manifests.demo.scenes import (
    BOUND, COLORS, GQA_STREAM, NUMBER_WORDS, SHAPES, VQA_STREAM, Scene, Shape, capitalized, item_rng, join_words,
    other_than, pick, plural, sample, with_article,
)

import re

# --------------------------------------------------------------------------- referring to objects

NO_COLOR = (("shape",), ("size", "shape"))
NO_SHAPE = (("color",), ("size", "color"))
ANY_FORM = (("shape",), ("color",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape"))


def _refs(obj: Shape, objects: list[Shape], forms, noun: str = "shape") -> list[str]:
    """Descriptions ("circle", "red shape", "large red circle") that fit `obj` and no other object."""
    out = []
    for form in forms:
        if sum(all(getattr(o, a) == getattr(obj, a) for a in form) for o in objects) == 1:
            words = [getattr(obj, a) for a in form]
            out.append(" ".join(words if "shape" in form else words + [noun]))
    return out


def _referable(rng, objects: list[Shape], forms, noun: str = "shape",
               where: Callable[[Shape], bool] = lambda o: True) -> tuple[Shape, str] | None:
    options = [(o, ref) for o in objects if where(o) for ref in _refs(o, objects, forms, noun)]
    return pick(rng, options) if options else None


def _left_of(a: Shape, b: Shape) -> bool:
    """a is clearly left of b: their extents do not overlap horizontally."""
    return a.x + BOUND * a.r + 2 <= b.x - BOUND * b.r


def _side(o: Shape, width: int) -> str | None:
    return "left" if o.x < 0.4 * width else "right" if o.x > 0.6 * width else None


def _count(objects: list[Shape], **attrs) -> int:
    return sum(all(getattr(o, k) == v for k, v in attrs.items()) for o in objects)


# --------------------------------------------------------------------------- VQA v2

def _vqa_number(rng, sc: Scene, want: bool):
    objs = sc.objects
    kind = pick(rng, ("all", "shape", "color"))
    if kind == "all":
        q = pick(rng, ("How many shapes are there?", "How many shapes are in the picture?",
                        "How many objects can you see?", "How many shapes are in this image?"))
        return q, str(len(objs)), "number", "how many"
    if kind == "shape":  # mostly shapes that are there, sometimes one that is not (answer 0)
        s = pick(rng, [o.shape for o in objs] * 2 + list(SHAPES))
        q = pick(rng, ("How many {}s are there?", "How many {}s are in the image?")).format(s)
        return q, str(_count(objs, shape=s)), "number", "how many"
    c = pick(rng, [o.color for o in objs] * 2 + list(COLORS))
    q = pick(rng, ("How many {} shapes are there?", "How many {} objects can you see?")).format(c)
    return q, str(_count(objs, color=c)), "number", "how many"


def _vqa_yes_no(rng, sc: Scene, want: bool):
    objs = sc.objects
    kind = pick(rng, ("exists", "any", "is_color", "side"))
    answer = "yes" if want else "no"
    if kind == "exists":
        present = {(o.color, o.shape) for o in objs}
        pool = sorted(present) if want else [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
        c, s = pick(rng, pool)
        q = pick(rng, ("Is there {}?", "Is there {} in the picture?", "Do you see {}?")).format(with_article(f"{c} {s}"))
        return q, answer, "yes/no", "do you see a" if q.startswith("Do") else "is there a"
    if kind == "any":
        present = {o.shape for o in objs}
        pool = sorted(present) if want else [s for s in SHAPES if s not in present]
        if not pool:
            return None
        q = pick(rng, ("Are there any {}s?", "Are there any {}s in the image?")).format(pick(rng, pool))
        return q, answer, "yes/no", "are there any"
    if kind == "is_color":
        hit = _referable(rng, objs, NO_COLOR)
        if hit is None:
            return None
        o, ref = hit
        color = o.color if want else other_than(rng, list(COLORS), o.color)
        return f"Is the {ref} {color}?", answer, "yes/no", "is the"
    hit = _referable(rng, objs, ANY_FORM, where=lambda o: _side(o, sc.width) is not None)
    if hit is None:
        return None
    o, ref = hit
    side = _side(o, sc.width) if want else other_than(rng, ("left", "right"), _side(o, sc.width))
    q = pick(rng, ("Is the {} on the {}?", "Is the {} on the {} side of the picture?")).format(ref, side)
    return q, answer, "yes/no", "is the"


def _vqa_other(rng, sc: Scene, want: bool):
    objs = sc.objects
    kind = pick(rng, ("color", "shape", "side"))
    if kind == "color":
        hit = _referable(rng, objs, NO_COLOR)
        if hit is None:
            return None
        o, ref = hit
        if rng.random() < 0.5:
            return f"What color is the {ref}?", o.color, "other", "what color is the"
        return f"What is the color of the {ref}?", o.color, "other", "what is the"
    if kind == "shape":
        hit = _referable(rng, objs, NO_SHAPE, noun="object")
        if hit is None:
            return None
        o, ref = hit
        if rng.random() < 0.5:
            return f"What shape is the {ref}?", o.shape, "other", "what shape is the"
        return f"What kind of shape is the {ref}?", o.shape, "other", "what kind of"
    hit = _referable(rng, objs, ANY_FORM, where=lambda o: _side(o, sc.width) is not None)
    if hit is None:
        return None
    o, ref = hit
    return f"Which side of the picture is the {ref} on?", _side(o, sc.width), "other", "which"


ANSWER_VARIANTS = {  # what people also type for the same thing (VQA's normaliser maps some back)
    "0": ["zero", "none"], "1": ["one"], "2": ["two"], "3": ["three"], "4": ["four"],
    "yes": ["yes", "Yes"], "no": ["no", "No"], "purple": ["violet", "Purple"], "red": ["Red", "dark red"],
    "green": ["Green", "dark green"], "blue": ["Blue", "dark blue"], "yellow": ["Yellow", "gold"],
    "orange": ["Orange", "orange."], "circle": ["round", "a circle"], "square": ["rectangle", "a square"],
    "triangle": ["triangular", "a triangle"], "left": ["on left", "left side"], "right": ["on right", "right side"],
}


def _wrong_answer(rng, answer: str) -> str:
    if answer.isdigit():
        return str(max(0, int(answer) + pick(rng, (-1, 1))))
    for group in (("yes", "no"), tuple(COLORS), SHAPES, ("left", "right")):
        if answer in group:
            return other_than(rng, group, answer)
    raise AssertionError(answer)


def _human_answers(rng, answer: str) -> list[dict]:
    """Ten answers, at least seven the canonical one; the rest other wordings or mistakes,
    so the soft scores (0.3 per matching answer) are not all 1.0."""
    given = [(answer, "yes")] * 10
    for i in sample(rng, range(10), int(pick(rng, (0, 0, 1, 1, 2, 3)))):
        roll = rng.random()
        if roll < 0.45:
            given[i] = (pick(rng, ANSWER_VARIANTS[answer]), "yes")
        elif roll < 0.85:
            given[i] = (_wrong_answer(rng, answer), pick(rng, ("maybe", "no", "yes")))
        else:
            given[i] = (answer, "maybe")
    return [{"answer": a, "answer_confidence": c, "answer_id": k + 1} for k, (a, c) in enumerate(given)]


def vqa_for_image(seed: int, index: int, image_id: int, scene: Scene) -> list[tuple[dict, dict]]:
    """(question record, annotation record) pairs; the three answer types take turns, and
    yes/no questions keep the answer they aim for until one is made, so yes and no stay even."""
    rng = item_rng(seed, VQA_STREAM, index)
    makers = [_vqa_number, _vqa_yes_no, _vqa_other]
    order = [makers[int(i)] for i in rng.permutation(3)]
    n, out, seen = int(rng.integers(3, 6)), [], set()
    want = bool(rng.random() < 0.5)
    for k in range(60):
        if len(out) == n:
            break
        made = order[len(out) % 3](rng, scene, want)
        if made is None or made[0] in seen:
            continue
        question, answer, answer_type, question_type = made
        seen.add(question)
        want = (not want) if answer_type == "yes/no" else want
        qid = image_id * 1000 + len(out)
        out.append(({"image_id": image_id, "question": question, "question_id": qid},
                    {"question_id": qid, "image_id": image_id, "question_type": question_type,
                     "answer_type": answer_type, "multiple_choice_answer": answer,
                     "answers": _human_answers(rng, answer)}))
    return out


# --------------------------------------------------------------------------- GQA

def _gqa_query_color(rng, sc, want):
    hit = _referable(rng, sc.objects, NO_COLOR)
    if hit is None:
        return None
    o, ref = hit
    q = pick(rng, ("What color is the {}?", "Which color is the {}?", "The {} is what color?")).format(ref)
    return q, o.color, f"The {ref} is {o.color}.", ("query", "attr", "queryAttr"), "color"


def _gqa_relation_query(rng, sc, want):
    options = []
    for anchor in sc.objects:
        for side, rel in (("left", lambda o: _left_of(o, anchor)), ("right", lambda o: _left_of(anchor, o))):
            targets = [o for o in sc.objects if o is not anchor and rel(o)]
            if len(targets) == 1:
                options += [(ref, side, targets[0]) for ref in _refs(anchor, sc.objects, ANY_FORM)]
    if not options:
        return None
    ref, side, t = pick(rng, options)
    if rng.random() < 0.5:
        return (f"What color is the shape to the {side} of the {ref}?", t.color,
                f"The shape to the {side} of the {ref} is {t.color}.", ("query", "rel", "relS"), "color")
    return (f"What shape is to the {side} of the {ref}?", t.shape,
            f"The shape to the {side} of the {ref} is {with_article(t.shape)}.", ("query", "rel", "relO"), "shape")


def _gqa_relation_verify(rng, sc, want):
    options = [(a, b, ra, rb) for a in sc.objects for b in sc.objects if a is not b and _left_of(a, b)
               for ra in _refs(a, sc.objects, ANY_FORM) for rb in _refs(b, sc.objects, ANY_FORM)]
    if not options:
        return None
    _, _, left, right = pick(rng, options)  # `left` is clearly left of `right`
    x, y, rel = (left, right, "left") if rng.random() < 0.5 else (right, left, "right")
    if not want:
        rel = "right" if rel == "left" else "left"
    truth = rel if want else ("right" if rel == "left" else "left")
    full = f"{'Yes' if want else 'No'}, the {x} is to the {truth} of the {y}."
    return f"Is the {x} to the {rel} of the {y}?", "yes" if want else "no", full, ("verify", "rel", "relVerify"), None


def _gqa_verify_color(rng, sc, want):
    hit = _referable(rng, sc.objects, NO_COLOR)
    if hit is None:
        return None
    o, ref = hit
    color = o.color if want else other_than(rng, list(COLORS), o.color)
    full = f"Yes, the {ref} is {color}." if want else f"No, the {ref} is {o.color}."
    return f"Is the {ref} {color}?", "yes" if want else "no", full, ("verify", "attr", "verifyAttr"), None


def _gqa_logic(rng, sc, want):
    present = sorted({(o.color, o.shape) for o in sc.objects})
    absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
    name = lambda cs: f"{cs[0]} {cs[1]}"  # noqa: E731
    if rng.random() < 0.5:  # "or": yes when at least one is there
        x, y = (pick(rng, present), pick(rng, absent)) if want else sample(rng, absent, 2)
        if want and rng.random() < 0.5:
            x, y = y, x
        full = (f"Yes, there is {with_article(name(x if x in present else y))}." if want
                else f"No, there are no {name(x)}s or {name(y)}s.")
        return (f"Is there {with_article(name(x))} or {with_article(name(y))}?", "yes" if want else "no", full,
                ("logical", "obj", "logicOr"), None)
    if want:  # "and": yes when both are there
        if len(present) < 2:
            return None
        x, y = sample(rng, present, 2)
        full = f"Yes, there are both {with_article(name(x))} and {with_article(name(y))}."
    else:
        x, y = pick(rng, present), pick(rng, absent)
        if rng.random() < 0.5:
            x, y = y, x
        there, missing = (x, y) if y in absent else (y, x)
        full = f"No, there is {with_article(name(there))} but no {name(missing)}."
    return (f"Are there both {with_article(name(x))} and {with_article(name(y))}?", "yes" if want else "no", full,
            ("logical", "obj", "logicAnd"), None)


def _gqa_same_color(rng, sc, want):
    options = [(a, b, ra, rb) for a in sc.objects for b in sc.objects if a is not b and (a.color == b.color) == want
               for ra in _refs(a, sc.objects, NO_COLOR) for rb in _refs(b, sc.objects, NO_COLOR) if ra != rb]
    if not options:
        return None
    a, b, ra, rb = pick(rng, options)
    q = pick(rng, ("Do the {} and the {} have the same color?", "Are the {} and the {} the same color?")).format(ra, rb)
    full = (f"Yes, both the {ra} and the {rb} are {a.color}." if want
            else f"No, the {ra} is {a.color} and the {rb} is {b.color}.")
    return q, "yes" if want else "no", full, ("compare", "attr", "sameColor"), None


def _gqa_choose_color(rng, sc, want):
    hit = _referable(rng, sc.objects, NO_COLOR)
    if hit is None:
        return None
    o, ref = hit
    pair = [o.color, other_than(rng, list(COLORS), o.color)]
    if rng.random() < 0.5:
        pair.reverse()
    return (f"Is the {ref} {pair[0]} or {pair[1]}?", o.color, f"The {ref} is {o.color}.",
            ("choose", "attr", "chooseAttr"), "color")


def _gqa_position(rng, sc, want):
    hit = _referable(rng, sc.objects, ANY_FORM, where=lambda o: _side(o, sc.width) is not None)
    if hit is None:
        return None
    o, ref = hit
    side = _side(o, sc.width)
    q = pick(rng, ("On which side is the {}?", "Which side is the {} on?")).format(ref)
    return q, side, f"The {ref} is on the {side} of the image.", ("query", "rel", "positionQuery"), "side"


def _gqa_category(rng, sc, want):
    hit = _referable(rng, sc.objects, NO_SHAPE, noun="object")
    if hit is None:
        return None
    o, ref = hit
    return (f"What shape is the {ref}?", o.shape, f"The {ref} is {with_article(o.shape)}.",
            ("query", "cat", "categoryAttr"), "shape")


GQA_MAKERS = (_gqa_query_color, _gqa_relation_query, _gqa_relation_verify, _gqa_verify_color,
              _gqa_logic, _gqa_same_color, _gqa_choose_color, _gqa_position, _gqa_category)


def gqa_for_image(seed: int, index: int, image_id: int, stem: str, scene: Scene) -> dict[str, dict]:
    rng = item_rng(seed, GQA_STREAM, index)
    n, out, seen = int(rng.integers(2, 5)), {}, set()
    want = bool(rng.random() < 0.5)  # kept until a yes/no question is made (as for VQA)
    for _ in range(60):
        if len(out) == n:
            break
        made = pick(rng, GQA_MAKERS)(rng, scene, want)
        if made is None or made[0] in seen:
            continue
        question, answer, full, (structural, semantic, detailed), group = made
        seen.add(question)
        want = (not want) if answer in ("yes", "no") else want
        qid = str(image_id * 100 + len(out))
        out[qid] = {
            "semantic": [], "entailed": [], "equivalent": [qid], "question": question, "imageId": stem,
            "isBalanced": True, "groups": {"global": group, "local": f"{len(out):02d}-{detailed}"},
            "answer": answer, "semanticStr": "", "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
            "types": {"structural": structural, "semantic": semantic, "detailed": detailed}, "fullAnswer": full,
        }
    return out


# --------------------------------------------------------------------------- COCO captions (Karpathy)

def _inventory(objects: list[Shape], sizes: bool = False) -> str:
    """'a red circle, two blue squares and a large green triangle', left to right."""
    groups: Counter = Counter()
    for o in sorted(objects, key=lambda o: o.x):
        groups[(o.size if sizes else "", o.color, o.shape)] += 1
    parts = []
    for (size, color, shape), n in groups.items():
        words = " ".join(w for w in (size, color, plural(shape, n)) if w)
        parts.append(with_article(words) if n == 1 else f"{NUMBER_WORDS[n]} {words}")
    return join_words(parts)


def make_captions(rng, sc: Scene) -> list[str]:
    objs, n = sc.objects, len(sc.objects)
    bg = ("softly shaded " if sc.background.graded else "") + sc.background.name
    inv, inv_sized = _inventory(objs), _inventory(objs, sizes=True)
    options = [
        f"{capitalized(inv)} on {with_article(bg)} background.",
        f"There {'are' if inv.split()[0] in NUMBER_WORDS else 'is'} {inv} in this picture.",
        f"A simple drawing of {NUMBER_WORDS[n]} {plural('shape', n)}: {inv}.",
        f"An image showing {inv_sized}.",
        f"{capitalized(with_article(sc.background.name))} background with {inv}.",
        f"{capitalized(NUMBER_WORDS[n])} colored {plural('shape', n)} drawn on {with_article(sc.background.name)} background.",
    ]
    ordered = sorted(objs, key=lambda o: o.x)
    if n == 1:
        o = objs[0]
        options.append(f"A single {o.size} {o.color} {o.shape} on {with_article(bg)} background.")
    else:
        options.append("From left to right: " + join_words([with_article(f"{o.size} {o.color} {o.shape}") for o in ordered]) + ".")
        if _left_of(ordered[0], ordered[-1]):
            a, b = ordered[0], ordered[-1]
            options.append(f"{capitalized(with_article(f'{a.color} {a.shape}'))} to the left of {with_article(f'{b.color} {b.shape}')}.")
    return sample(rng, options, 5)


def caption_tokens(raw: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", raw.lower())


# --------------------------------------------------------------------------- NLVR2

def _nlvr2_statement(rng, left: list[Shape], right: list[Shape]) -> tuple[str, bool]:
    both = left + right
    kind = int(rng.integers(8))
    s = pick(rng, [o.shape for o in both] + list(SHAPES))
    c = pick(rng, [o.color for o in both] + list(COLORS))
    if kind == 0:
        a, b = (left, right) if rng.random() < 0.5 else (right, left)
        side = "left" if a is left else "right"
        other = "right" if side == "left" else "left"
        return (f"The {side} image has more {s}s than the {other} image.",
                _count(a, shape=s) > _count(b, shape=s))
    if kind == 1:
        return f"Both images contain {with_article(c)} shape.", _count(left, color=c) > 0 and _count(right, color=c) > 0
    if kind == 2:
        return f"Each image contains at least one {s}.", _count(left, shape=s) > 0 and _count(right, shape=s) > 0
    if kind == 3:
        n = min(8, max(1, len(both) + pick(rng, (-1, 0, 0, 1))))
        return f"There are exactly {NUMBER_WORDS[n]} {plural('shape', n)} in total.", len(both) == n
    if kind == 4:
        return (f"Exactly one image contains {with_article(f'{c} {s}')}.",
                (_count(left, color=c, shape=s) > 0) != (_count(right, color=c, shape=s) > 0))
    if kind == 5:
        side, objs = ("left", left) if rng.random() < 0.5 else ("right", right)
        n = max(0, _count(objs, shape=s) + pick(rng, (-1, 0, 0, 1)))
        what = f"no {s}s" if n == 0 else f"exactly {NUMBER_WORDS[n]} {plural(s, n)}"
        return f"The {side} image contains {what}.", _count(objs, shape=s) == n
    if kind == 6:
        return (f"One of the images contains only {c} shapes.",
                any(all(o.color == c for o in objs) for objs in (left, right)))
    return f"Neither image contains {with_article(c)} shape.", _count(both, color=c) == 0


def nlvr2_sentences(rng, left: list[Shape], right: list[Shape]) -> list[tuple[str, bool]]:
    """One true and one false statement about the pair (in random order), so only the
    pixels tell which is which."""
    found: dict[bool, str] = {}
    for _ in range(200):
        sentence, label = _nlvr2_statement(rng, left, right)
        if label not in found and sentence not in found.values():
            found[label] = sentence
        if len(found) == 2:
            break
    assert len(found) == 2, "the exact-total statement is always both true and false for some N"
    order = [True, False] if rng.random() < 0.5 else [False, True]
    return [(found[label], label) for label in order]


