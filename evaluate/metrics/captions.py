"""Captioning metrics against every reference: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D and,
when its models are installed, SPICE, through `pycocoevalcap` (the COCO caption
evaluation), for COCO, TVC and YouCook2 captions alike.

What `COCOEvalCap.evaluate` does, with four changes that leave every score the same:

- the PTB tokenizer (Stanford CoreNLP 3.4.1, lower-casing, then punctuation tokens
  dropped) runs once for predictions and references together, reading stdin, where
  `COCOEvalCap` runs it twice through a temporary file in the package folder. Every
  character Java's readers take as a line break (\\r, \\v, \\f, U+2028, U+2029, not
  only \\n) becomes a space first, since one would shift every later line onto the
  wrong caption; a prediction that is blank is not sent at all (it tokenizes to "");
- BLEU is computed without printing its statistics;
- SPICE runs only when the Stanford CoreNLP 3.6.0 jars it needs are already there
  (`get_stanford_models` would download them at run time); otherwise it is skipped
  with a note in the result. SPICE is known to fail on Java newer than 11
  (salaniz/pycocoevalcap#25); a failure of an automatic SPICE run is a note too;
- one METEOR Java process serves every scoring in this Python process (it takes seconds
  to start: the demo scores six caption runs), and is closed at exit or when it fails,
  not left to the garbage collector.

CIDEr here is CIDEr-D (sigma 6, clipped counts, x10) with document frequencies from
the references scored, so it depends on the set of images scored. All scores are on
0-100 (CIDEr-D up to 1000), rounded to two decimals; "overall" is CIDEr-D.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from vl.evaluate.metrics.common import Predictions, check_predictions, check_references, examples_by_id
from vl.shared.errors import VLError

METRICS = ("bleu", "meteor", "rouge_l", "cider", "spice")
BLEU_KEYS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4")
# Line terminators of Java's PTB lexer besides "\n" (tested on CoreNLP 3.4.1).
_LINE_BREAKS = str.maketrans({c: " " for c in "\n\r\x0b\x0c\u2028\u2029"})
SPICE_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
JAVA_HINT = ("the caption metrics run pycocoevalcap's PTB tokenizer and METEOR on Java, which is not on "
             "PATH: install a Java runtime (e.g. `apt-get install default-jre-headless`; Java 8 or 11 "
             "also runs SPICE)")


def require_java() -> None:
    """Java on PATH and pycocoevalcap installed, or a VLError saying how to get them."""
    if shutil.which("java") is None:
        raise VLError(JAVA_HINT)
    _pycocoevalcap_dir()


def _pycocoevalcap_dir() -> str:
    try:
        import pycocoevalcap.tokenizer.ptbtokenizer as ptb
    except ImportError:
        raise VLError("the caption metrics need pycocoevalcap: `pip install pycocoevalcap`") from None
    return os.path.dirname(os.path.dirname(os.path.abspath(ptb.__file__)))


def spice_missing_files() -> list[str]:
    """The Stanford CoreNLP jars SPICE needs that are not installed ([] when it can run)."""
    lib = os.path.join(_pycocoevalcap_dir(), "spice", "lib")
    return [os.path.join(lib, jar) for jar in SPICE_JARS if not os.path.isfile(os.path.join(lib, jar))]


def ptb_tokenize(sentences: Sequence[str]) -> list[str]:
    """pycocoevalcap's PTB tokenization of each sentence, in one Java run: lower-cased
    tokens joined by spaces, punctuation tokens dropped."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, STANFORD_CORENLP_3_4_1_JAR

    lines = [s.translate(_LINE_BREAKS) for s in sentences]
    sent = [i for i, line in enumerate(lines) if line.strip()]
    out = [""] * len(lines)
    if not sent:
        return out
    jar = os.path.join(_pycocoevalcap_dir(), "tokenizer", STANFORD_CORENLP_3_4_1_JAR)
    cmd = ["java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
    run = subprocess.run(cmd, input="\n".join(lines[i] for i in sent) + "\n", capture_output=True,
                         encoding="utf-8")
    tokenized = run.stdout.split("\n")[:-1]  # the output ends with a line break
    if run.returncode != 0 or len(tokenized) != len(sent):
        raise VLError(f"the PTB tokenizer (java, exit status {run.returncode}) gave {len(tokenized)} lines for "
                      f"{len(sent)} sentences: {run.stderr.strip()[-500:]}")
    punctuation = set(PUNCTUATIONS)
    for i, line in zip(sent, tokenized):
        out[i] = " ".join(w for w in line.rstrip().split(" ") if w not in punctuation)
    return out


_METEOR: Any = None  # the running pycocoevalcap Meteor scorer, see _meteor


def _meteor(gts: dict[str, list[str]], res: dict[str, list[str]]) -> float:
    """METEOR 1.5 over every caption, from the one Java process this Python process keeps
    (started on first use, again if it has exited). Each call's score depends only on its
    captions: the process keeps no state between EVAL lines."""
    global _METEOR
    from pycocoevalcap.meteor.meteor import Meteor

    if _METEOR is None or _METEOR.meteor_p.poll() is not None:
        _close_meteor()
        _METEOR = Meteor()
    scorer = _METEOR
    try:
        score, _ = scorer.compute_score(gts, res)
    except (ValueError, BrokenPipeError) as e:  # the Java process died: its answer line is empty
        if scorer.lock.locked():  # compute_score leaves its lock held when it raises
            scorer.lock.release()
        _close_meteor()
        raise VLError(f"METEOR's Java process failed ({e}): {scorer.meteor_p.stderr.read().decode()[-500:]}"
                      ) from None
    return score


def _close_meteor() -> None:
    """Stop the kept METEOR process, if any (at exit, or after it failed)."""
    global _METEOR
    scorer, _METEOR = _METEOR, None
    if scorer is None:
        return
    process = scorer.meteor_p
    with contextlib.suppress(OSError):  # a dead process leaves a broken pipe
        process.stdin.close()
    process.kill()
    process.wait()


atexit.register(_close_meteor)


def _spice(gts: dict[str, list[str]], res: dict[str, list[str]]) -> float:
    from pycocoevalcap.spice.spice import Spice

    score, _ = Spice().compute_score(gts, res)
    return float(score)


def caption_scores(predictions: Predictions[str], references: Mapping[str, Sequence[str]], *,
                   metrics: Collection[str] | None = None, allow_missing: bool = False) -> dict[str, Any]:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr-D and SPICE of `predictions` ({id: caption})
    against `references` ({id: [every reference caption]}).

    `metrics` picks from "bleu", "meteor", "rouge_l", "cider", "spice"; CIDEr-D, the
    main score, is always computed. None means all, with SPICE only when its models
    are installed (else a note in "notes"); naming "spice" requires it. Returns
    {"overall" (= "cider"), "count", "missing", "notes", and one key per score:
    "bleu_1".."bleu_4", "meteor", "rouge_l", "cider", "spice"}. A missing prediction
    (only with `allow_missing`) is scored as an empty caption."""
    wanted = set(METRICS) if metrics is None else set(metrics) | {"cider"}
    unknown = sorted(wanted - set(METRICS))
    if unknown:
        raise VLError(f"unknown caption metric {unknown[0]!r}; choose from: {', '.join(METRICS)}")
    require_java()
    check_references(references, is_valid=lambda r: isinstance(r, (list, tuple)) and len(r) > 0 and all(
        isinstance(s, str) and s.strip() for s in r), expected="non-empty lists of non-blank captions",
        what="caption references")
    preds, missing = check_predictions(predictions, references, is_valid=lambda p: isinstance(p, str),
                                       expected="strings", allow_missing=allow_missing)
    notes = []
    if "spice" in wanted and spice_missing_files():
        missing_jars = ", ".join(spice_missing_files())
        if metrics is not None:
            raise VLError(f"SPICE needs Stanford CoreNLP 3.6.0, not installed ({missing_jars}); fetch it once with "
                          "`python -c 'from pycocoevalcap.spice.get_stanford_models import get_stanford_models; "
                          "get_stanford_models()'`, or leave 'spice' out")
        wanted.discard("spice")
        notes.append(f"SPICE skipped: Stanford CoreNLP 3.6.0 is not installed ({missing_jars}); fetch it with "
                     "pycocoevalcap.spice.get_stanford_models.get_stanford_models() to score SPICE")

    # One tokenizer run over every prediction and reference, in a fixed order.
    ids = list(references)
    sentences = [preds.get(i, "") for i in ids] + [r for i in ids for r in references[i]]
    tokens = iter(ptb_tokenize(sentences))
    res = {i: [next(tokens)] for i in ids}
    gts = {i: [next(tokens) for _ in references[i]] for i in ids}

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    scores: dict[str, float] = {}
    if "bleu" in wanted:
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        scores.update(zip(BLEU_KEYS, bleu))
    if "meteor" in wanted:
        scores["meteor"] = _meteor(gts, res)
    if "rouge_l" in wanted:
        scores["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    scores["cider"] = float(Cider().compute_score(gts, res)[0])
    if "spice" in wanted:
        try:
            scores["spice"] = _spice(gts, res)
        except (subprocess.CalledProcessError, OSError, ValueError) as e:
            if metrics is not None:
                raise VLError(f"SPICE failed ({e}); it is known to fail on Java newer than 11: run it "
                              "with Java 8 or 11, or leave 'spice' out") from None
            notes.append(f"SPICE failed and was skipped ({e}); it is known to fail on Java newer than 11")

    result: dict[str, Any] = {name: round(100 * value, 2) for name, value in scores.items()}
    result.update(overall=result["cider"], count=len(ids), missing=len(missing), notes=notes)
    return result


def score_examples(predictions: Predictions[str], examples: Iterable[Mapping[str, Any]], *,
                   metrics: Collection[str] | None = None, allow_missing: bool = False) -> dict[str, Any]:
    """`caption_scores` against `caption` / `tvc` / `yc2c` manifest examples (`targets`)."""
    by_id = examples_by_id(examples, "targets", "caption")
    return caption_scores(predictions, {eid: ex["targets"] for eid, ex in by_id.items()},
                          metrics=metrics, allow_missing=allow_missing)
