"""Benchmark VQA scoring: `vl.evaluate.metrics.vqa` against a line-by-line transcription
of the official evaluation loop, on synthetic questions with ten human answers each.

The questions are drawn to look like VQA v2: about 38% yes/no, 12% number and 50% other
answer types, answers from a vocabulary of about 3000 strings (words, phrases, numbers
and number words, "yes"/"no") with the variants people type (capitals, "the"/"a",
trailing punctuation, hyphens, "1,000", "dont"), ten annotators who mostly agree, and
predictions that match the majority answer (often in another spelling) about 60% of
the time. Both scorers must give the same overall, per answer type and per question
type scores, to the last digit.

The transcription is the test suite's (tests/test_metrics.py): vqaEval.py's per-question
loop, normalising the ten answers and the prediction of every question whose answers
disagree, then comparing each answer with the other nine. Ours starts with an empty
normalisation cache.

Run from the repository root:
    .venv/bin/python bench/eval_vqa.py                # 200k questions
    .venv/bin/python bench/eval_vqa.py --n 20000 --json bench_out/eval_vqa.json
"""
from __future__ import annotations

import argparse
import random
import shlex
import sys
import time
from pathlib import Path

from cli_run import machine, markdown_table, write_results

from vl.evaluate.metrics import vqa
from vl.evaluate.metrics.vqa_official import official_vqa
from vl.shared.answers import NUMBER_WORDS

# ---------------------------------------------------------------- synthetic VQA

WORDS = """dog cat man woman person people child boy girl baby horse cow sheep elephant giraffe zebra bear bird
pizza sandwich cake donut banana apple orange broccoli carrot hot dog table chair bench couch bed toilet sink
car bus truck train plane boat bike motorcycle skateboard surfboard skis snowboard frisbee kite umbrella
tennis baseball soccer ball bat glove racket helmet hat shirt tie jacket dress shoes glasses phone laptop tv
clock vase book bottle cup bowl fork knife spoon plate window door wall floor grass tree sky cloud water
snow beach street road sidewalk building house kitchen bathroom bedroom living room park field ocean river
mountain hill fence sign pole light lamp computer keyboard mouse remote kitchen counter shelf box bag
suitcase backpack flowers plant wood metal plastic glass stone brick paper cloth leather""".split()
COLORS = "red blue green yellow white black brown gray orange pink purple silver gold tan beige".split()
ADJECTIVES = "big small large tall short old new wet dry open closed sunny cloudy happy wooden empty full".split()
PLACES = "on table in kitchen on ground in sky on street in water on plate on wall in field at beach".split()
ACTIONS = "eating sitting standing walking running playing flying surfing skiing skateboarding sleeping".split()
QUESTION_TYPES = {
    "yes/no": ["is the", "is this", "are there", "does the", "is there a", "are the", "can you", "do you",
               "is it", "was"],
    "number": ["how many", "how many people are", "what number is", "how many people are in"],
    "other": ["what color is the", "what is the", "what is", "what", "where is the", "what is the man",
              "what kind of", "what type of", "what are the", "why", "which", "who is", "what sport is",
              "what room is", "what is on the", "what animal is"],
}
ANSWER_TYPE_SHARE = (("yes/no", 0.38), ("number", 0.12), ("other", 0.50))


def vocabulary(rng: random.Random, size: int = 3000) -> list[str]:
    """About `size` distinct answers, most frequent first (a Zipf draw over this order
    makes the common answers common)."""
    base = ["yes", "no"] + [str(i) for i in range(0, 21)] + list(NUMBER_WORDS) + COLORS + WORDS
    phrases = ([f"{c} and {d}" for c in COLORS for d in COLORS if c != d]
               + [f"{a} {w}" for a in ADJECTIVES for w in WORDS] + [f"{c} {w}" for c in COLORS for w in WORDS]
               + [f"{w} {p}" for w in WORDS[:30] for p in PLACES] + ACTIONS + [str(i) for i in range(21, 400)]
               + ["1,000", "10:30", "3.5", "2.5", "100%", "t-shirt", "hot-dog", "dont know", "don't know", "isnt",
                  "its", "x-ray", "u-turn", "mr. bean", "st. louis", "new york", "1000"])
    rng.shuffle(phrases)
    seen, out = set(), []
    for answer in base + phrases:
        if answer not in seen:
            seen.add(answer)
            out.append(answer)
        if len(out) == size:
            break
    return out


def variant(answer: str, rng: random.Random) -> str:
    """Another way a person types the same answer; most variants normalise back to it."""
    r = rng.random()
    if r < 0.55:
        return answer
    if r < 0.65:
        return answer.capitalize()
    if r < 0.72:
        return answer + rng.choice([".", "!", " ", "?"])
    if r < 0.80:
        return rng.choice(["the ", "a ", "an "]) + answer
    if r < 0.85:
        words = {v: k for k, v in NUMBER_WORDS.items() if k != "none"}
        return words.get(answer, answer.replace(" ", "-"))
    if r < 0.90:
        return answer.replace(" ", "")  # "hotdog": no longer the same answer
    if r < 0.95:
        return f"{answer}\n"
    return answer.upper()


def make_questions(n: int, seed: int) -> tuple[dict, dict, int]:
    """({qid: {"answers", "answer_type", "question_type"}}, {qid: prediction}, vocabulary size)."""
    rng = random.Random(seed)
    vocab = vocabulary(rng)
    numbers = [a for a in vocab if a.isdigit()][:40]
    others = [a for a in vocab if a not in ("yes", "no") and not a.isdigit()]
    zipf = [1 / (rank + 1) for rank in range(len(others))]
    cum_zipf, total = [], 0.0
    for w in zipf:
        total += w
        cum_zipf.append(total)
    types, shares = zip(*ANSWER_TYPE_SHARE)
    questions, predictions = {}, {}
    for i in range(n):
        answer_type = rng.choices(types, shares)[0]
        if answer_type == "yes/no":
            pool, truth = ["yes", "no"], rng.choice(["yes", "no"])
        elif answer_type == "number":
            pool = numbers
            truth = numbers[min(int(rng.expovariate(0.5)), len(numbers) - 1)]
        else:
            pool, truth = others, rng.choices(others, cum_weights=cum_zipf)[0]
        agreement = rng.choice([1.0, 1.0, 0.9, 0.8, 0.6, 0.4])  # share of annotators giving the majority answer
        if agreement == 1.0 and rng.random() < 0.6:
            answers = [truth] * 10  # all ten typed the same: the official script normalises nothing
        else:
            answers = [variant(truth, rng) if rng.random() < agreement else rng.choice(pool) for _ in range(10)]
        qid = str(1_000_000 + i * 7)
        questions[qid] = {"answers": answers, "answer_type": answer_type,
                          "question_type": rng.choice(QUESTION_TYPES[answer_type])}
        r = rng.random()
        predictions[qid] = (truth if r < 0.45 else variant(truth, rng) if r < 0.6
                            else rng.choice(answers) if r < 0.75 else rng.choice(pool))
    return questions, predictions, len(vocab)


def time_ours(questions: dict, predictions: dict) -> tuple[dict, float]:
    vqa._normalized.cache_clear()  # cold: every distinct string is normalised once, here
    answers = {q: v["answers"] for q, v in questions.items()}
    answer_types = {q: v["answer_type"] for q, v in questions.items()}
    question_types = {q: v["question_type"] for q, v in questions.items()}
    t0 = time.perf_counter()
    result = vqa.vqa_accuracy(predictions, answers, answer_types=answer_types, question_types=question_types)
    return result, time.perf_counter() - t0


def time_official(questions: dict, predictions: dict) -> tuple[dict, float]:
    t0 = time.perf_counter()
    result = official_vqa(predictions, questions)
    return result, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="questions (default 200000)")
    ap.add_argument("--official-n", type=int, default=None,
                    help="time the official loop on the first N questions only and extrapolate linearly "
                         "(default: all); the scores are then compared on those N")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the numbers here as JSON")
    args = ap.parse_args()
    command = shlex.join([sys.executable, *sys.argv])
    print(f"command: {command}\nmachine: {machine()}\n", flush=True)

    print(f"making {args.n:,} questions ...", file=sys.stderr, flush=True)
    questions, predictions, vocab_size = make_questions(args.n, args.seed)
    subset_n = min(args.official_n or args.n, args.n)
    subset = dict(list(questions.items())[:subset_n])
    subset_predictions = {q: predictions[q] for q in subset}

    print("scoring (ours) ...", file=sys.stderr, flush=True)
    ours, ours_s = time_ours(questions, predictions)
    print(f"  {ours_s:.2f} s", file=sys.stderr, flush=True)
    print(f"scoring (official loop, {subset_n:,} questions) ...", file=sys.stderr, flush=True)
    official, official_s = time_official(subset, subset_predictions)
    print(f"  {official_s:.2f} s", file=sys.stderr, flush=True)
    official_full_s = official_s * args.n / subset_n
    extrapolated = subset_n < args.n
    ours_on_subset = ours if not extrapolated else time_ours(subset, subset_predictions)[0]

    keys = ("overall", "per_answer_type", "per_question_type")
    equal = all(ours_on_subset[k] == official[k] for k in keys)
    distinct = len({a for q in questions.values() for a in q["answers"]} | set(predictions.values()))
    n_types = f"{len(official['per_answer_type'])} answer types, {len(official['per_question_type'])} question types"
    rows = [
        ("questions", f"{args.n:,}", f"10 answers each from a {vocab_size:,}-answer vocabulary; "
                                      f"{distinct:,} distinct strings with the typed variants", ""),
        ("official loop (transcribed)", f"{official_full_s:.1f} s",
         f"{1e6 * official_s / subset_n:.0f} us a question"
         + (f"; timed on {subset_n:,} questions ({official_s:.1f} s), extrapolated linearly" if extrapolated else ""),
         ""),
        ("vl.evaluate.metrics.vqa", f"{ours_s:.2f} s", f"{1e6 * ours_s / args.n:.1f} us a question, cold cache", ""),
        ("speed ratio", f"x{official_full_s / ours_s:.1f}", "official / ours", ""),
        ("same scores", f"overall {ours_on_subset['overall']:.2f}",
         f"overall, {n_types}" + (f", on the {subset_n:,} timed questions" if extrapolated else "")
         + f"; official {official['overall']:.2f}", "PASS" if equal else "FAIL"),
    ]
    print(markdown_table(rows))
    if args.json:
        write_results(args.json, command, machine(), args, {
            "ours_s": ours_s, "official_s": official_s, "official_questions": subset_n,
            "official_extrapolated_s": official_full_s, "ratio": official_full_s / ours_s, "equal": equal,
            "ours": ours, "official": official})
    if not equal:
        diff = {k: (ours_on_subset[k], official[k]) for k in keys if ours_on_subset[k] != official[k]}
        sys.exit(f"scores differ: {diff}")


if __name__ == "__main__":
    main()
