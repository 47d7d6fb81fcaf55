"""VQA answer normalisation and soft scores, as the official evaluation and LXMERT / VL-T5 do them.

`normalize_vqa_answer` follows the answer processing of the official VQA evaluation
script (GT-Vision-Lab/VQA, `PythonEvaluationTools/vqaEvaluation/vqaEval.py`:
`processPunctuation` then `processDigitArticle`), the same processing that
bottom-up-attention-vqa's `compute_softscore.py` applies before LXMERT and VL-T5
count answers. Its quirks are kept on purpose, because a prediction is scored against
answers normalised exactly this way; each is noted where it happens.

`vqa_soft_scores` is the label of one question: every distinct normalised human
answer with the score of `compute_softscore.py`'s `get_score` (1 match -> 0.3,
2 -> 0.6, 3 -> 0.9, 4 or more -> 1.0).

`vqa_answer_vocabulary` is the answer set those labels are limited to for training:
`compute_softscore.py`'s `filter_answers` keeps the normalised `multiple_choice_answer`s
that answer at least 9 questions of train2014 + val2014, which gives the 3,129 answers of
LXMERT's and VL-T5's `trainval_ans2label.json`.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

# The official list, in its order: each is removed or turned into a space (see below).
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
               ">", "<", "@", "`", ",", "?", "!")
# A comma between digits ("1,000") makes the script remove every punctuation mark
# instead of turning it into a space.
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
# The official pattern reads `(?!<=\d)`, a look-ahead for the text "<=digit" (meant as a
# look-behind), which never matches before a period: so every period not followed by a
# digit goes, "3.5" stays and "5." loses its period.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"(?!<=\d)(\.)(?!\d)")
# The script passes `re.UNICODE` (= 32) as `sub`'s third positional argument, which is
# the count: at most 32 periods are removed.
_OFFICIAL_PERIOD_COUNT = int(re.UNICODE)

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})

# The official contractions table, entry for entry. Its oddities stay: keys with capitals
# ("Im", "Ive", "Id've") can never match lower-cased text, and "somebody'd" maps to
# "somebodyd".
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't",
    "couldve": "could've", "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's",
    "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am",
    "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's",
    "somethingd": "something'd", "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've",
    "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}

# compute_softscore.py's get_score: how many of the ten humans gave the answer -> score.
_SCORE_BY_COUNT = {1: 0.3, 2: 0.6, 3: 0.9}


def _process_punctuation(text: str) -> str:
    """The official `processPunctuation`. Whether a mark is removed or becomes a space
    is decided on the text as given, not as already edited: a mark with a space on
    either side ("yes, it is"), or any comma between digits, removes it; otherwise
    ("hot-dog") it becomes a space."""
    removes = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if removes or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_OFFICIAL_PERIOD_COUNT)


def _process_digits_and_articles(text: str) -> str:
    """The official `processDigitArticle`: lower-case, split on whitespace, number
    words to digits, drop articles, then expand contractions word by word."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_vqa_answer(text: str) -> str:
    """An answer as the official VQA evaluation compares it: "Two dogs." -> "2 dogs",
    "the dog" -> "dog", "dont" -> "don't", "hot-dog" -> "hot dog"."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digits_and_articles(_process_punctuation(text))


def vqa_soft_scores(answers: list[str]) -> dict[str, float]:
    """{normalised answer: soft score} over the human answers of one question, as
    LXMERT / VL-T5 build their labels (0.3 per matching human answer, at most 1.0).

    Unlike `compute_softscore.py` no answer is dropped for being outside a vocabulary:
    the vocabulary is the model's business, not the manifest's."""
    counts = Counter(normalize_vqa_answer(a) for a in answers)
    return {answer: _SCORE_BY_COUNT.get(n, 1.0) for answer, n in counts.items()}


# filter_answers(answers, 9) in compute_softscore.py, over train2014 + val2014
PAPER_MIN_ANSWER_COUNT = 9


def vqa_answer_vocabulary(multiple_choice_answers: Iterable[str], min_count: int = PAPER_MIN_ANSWER_COUNT) -> list[str]:
    """The normalised answers that are the `multiple_choice_answer` of at least `min_count`
    questions (one answer given per question), sorted."""
    counts = Counter(normalize_vqa_answer(a) for a in multiple_choice_answers)
    return sorted(answer for answer, n in counts.items() if n >= min_count)
