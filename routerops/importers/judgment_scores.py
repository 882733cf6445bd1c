"""Arena-bench single-answer scores {question_id, model, score 1-10} turned into pairs.

Per question, every two models with a valid score make one pair: winner = the higher score, tie
when equal. soft_label = P(model_a wins) = sigmoid((score_a - score_b) / SCORE_SCALE), so a 1-point
lead is 0.62, 3 points 0.82, 9 points 0.99: the margin survives, a tie is 0.5. Models are ordered
by name inside a pair. A score that is missing, not a number or outside 1-10 is rejected
("unparseable score"); so is a second score for the same (question, model).
With ImportOptions.answers (a folder of arena-bench `<model>.jsonl[.gz]` answer files:
{question_id, model_id, choices: [{turns: [...]}]}) answer_a / answer_b get the first turn's answer;
models are matched by spelling-insensitive key (routerops.model_names.name_key).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path

from routerops.importers.readers import iter_json_records, load_questions, question_text
from routerops.importers.records import ImportFailed, ImportOptions, Pair, Reject
from routerops.model_names import name_key

SOURCE = "arena_bench"
JUDGE = "gpt-4 single-answer score"
SCORE_SCALE = 2.0
SCORE_RANGE = (1.0, 10.0)


def parse_score(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        score = float(value)  # numbers, or numeric strings such as "8"
    except (TypeError, ValueError):
        return None
    if math.isnan(score) or not SCORE_RANGE[0] <= score <= SCORE_RANGE[1]:
        return None
    return score


def soft_label(score_a: float, score_b: float) -> float:
    return 1.0 / (1.0 + math.exp(-(score_a - score_b) / SCORE_SCALE))


def load_answers(folder: Path | None) -> dict[tuple[str, str], str]:
    """(question_id, model key) -> the first turn's answer, from every JSONL file in `folder`."""
    if folder is None:
        return {}
    if not Path(folder).is_dir():
        raise ImportFailed(f"answers folder not found: {folder}")
    answers: dict[tuple[str, str], str] = {}
    for file in sorted(Path(folder).iterdir()):
        if not (file.name.endswith(".jsonl") or file.name.endswith(".jsonl.gz")):
            continue
        for _line, obj in iter_json_records(file):
            if isinstance(obj, Reject) or not isinstance(obj.get("choices"), list) or not obj["choices"]:
                continue
            choice = obj["choices"][0]
            text = question_text(choice) if isinstance(choice, dict) else None
            model = obj.get("model_id") or obj.get("model")
            if text and isinstance(model, str):
                answers[(str(obj.get("question_id")), name_key(model))] = text
    return answers


def parse(path: Path, options: ImportOptions) -> Iterator[Pair | Reject]:
    by_id, _ordered = load_questions(options.questions, "judgment-scores")
    answers = load_answers(options.answers)
    # question -> model -> (score, line); pairs need every score of a question, so read all first
    scores: dict[str, dict[str, tuple[float, int]]] = defaultdict(dict)
    for line, obj in iter_json_records(path):
        if isinstance(obj, Reject):
            yield obj
            continue
        score = parse_score(obj.get("score"))
        if score is None:
            yield Reject(line, "unparseable score", repr(obj.get("score"))[:80])
            continue
        model = obj.get("model")
        if not isinstance(model, str) or not model.strip():
            yield Reject(line, "empty model name")
            continue
        qid = str(obj.get("question_id"))
        if qid not in by_id:
            yield Reject(line, "no prompt for question id", repr(obj.get("question_id"))[:80])
            continue
        if model in scores[qid]:
            yield Reject(line, "duplicate score", f"{qid} / {model}")
            continue
        scores[qid][model] = (score, line)
    for qid, per_model in scores.items():
        for a, b in combinations(sorted(per_model), 2):
            (sa, la), (sb, lb) = per_model[a], per_model[b]
            winner = "a" if sa > sb else "b" if sb > sa else "tie"
            yield Pair(line=max(la, lb), prompt=by_id[qid], model_a=a, model_b=b, winner=winner,
                       soft_label=soft_label(sa, sb), judge=JUDGE,
                       answer_a=answers.get((qid, name_key(a))), answer_b=answers.get((qid, name_key(b))))
