"""vqaEval.py (GT-Vision-Lab/VQA a013f00) transcribed step by step: its 10 x 10 loop,
Python 2's sequential `sum` and Python 2's `round`. Slow on purpose: the reference that
`vl.evaluate.metrics.vqa` is checked against (tests/test_metrics.py, bench/eval_vqa.py).
Only the normalisation tables are shared with the fast scorer."""
from __future__ import annotations

import re
from fractions import Fraction
from math import floor

from vl.shared.answers import ARTICLES, CONTRACTIONS, NUMBER_WORDS, PUNCTUATION


def _py2_sum(values):
    total = 0
    for v in values:
        total = total + v
    return total


def _py2_round(x, n=2):
    """Half away from zero on the float's exact value (x >= 0 here)."""
    return float(Fraction(floor(Fraction(x) * 10 ** n + Fraction(1, 2)), 10 ** n))


def _process_punctuation(text):
    out = text
    for p in PUNCTUATION:
        if (p + " " in text or " " + p in text) or re.search(r"(\d)(\,)(\d)", text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return re.compile(r"(?!<=\d)(\.)(?!\d)").sub("", out, 32)


def _process_digit_article(text):
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(word)
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def official_vqa(predictions: dict, questions: dict) -> dict:
    """predictions {qid: answer}; questions {qid: {answers (10), answer_type, question_type}}."""
    acc_qa, acc_qtype, acc_atype, per_question = [], {}, {}, {}
    for qid, q in questions.items():
        gts = [{"answer": a, "answer_id": i + 1} for i, a in enumerate(q["answers"])]
        for d in gts:
            d["answer"] = d["answer"].replace("\n", " ").replace("\t", " ").strip()
        res = predictions[qid].replace("\n", " ").replace("\t", " ").strip()
        if len(set(d["answer"] for d in gts)) > 1:
            for d in gts:
                d["answer"] = _process_digit_article(_process_punctuation(d["answer"]))
            res = _process_digit_article(_process_punctuation(res))
        gt_acc = []
        for datum in gts:
            others = [d for d in gts if d != datum]
            matching = [d for d in others if d["answer"] == res]
            gt_acc.append(min(1, float(len(matching)) / 3))
        avg = float(_py2_sum(gt_acc)) / len(gt_acc)
        per_question[qid] = avg
        acc_qa.append(avg)
        acc_qtype.setdefault(q["question_type"], []).append(avg)
        acc_atype.setdefault(q["answer_type"], []).append(avg)
    return {
        "overall": _py2_round(100 * float(_py2_sum(acc_qa)) / len(acc_qa)),
        "per_question_type": {t: _py2_round(100 * float(_py2_sum(v)) / len(v)) for t, v in acc_qtype.items()},
        "per_answer_type": {t: _py2_round(100 * float(_py2_sum(v)) / len(v)) for t, v in acc_atype.items()},
        "per_question": per_question,
    }
