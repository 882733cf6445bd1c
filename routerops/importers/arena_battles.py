"""Arena-Hard battles: {question_id, model_a, model_b, winner} plus a questions file for prompts.

winner: model_a / model_b / tie / "tie (bothbad)" (also a / b). Prompts come from --questions
(arena-hard `turns: [{"content": ...}]` or arena-bench `turns: ["..."]`, first turn).

question ids: the shared battles file keys questions by small integers (0..119) while the
arena-hard question file keys them by hex ids. With question_match "auto" an id found in the
questions file is used as is; an integer id the file does not hold is read as the question's
0-based position in the file ("index"). The import notes say when positions were used.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from routerops.importers.readers import iter_json_records, load_questions
from routerops.importers.records import ImportFailed, ImportOptions, Pair, Reject

SOURCE = "arena_hard"

WINNER_MAP = {"model_a": "a", "a": "a", "model_b": "b", "b": "b", "tie": "tie", "tie (bothbad)": "tie"}


def lookup_prompt(qid: object, by_id: dict[str, str], ordered: list[str | None], mode: str) -> tuple[str | None, bool]:
    """(prompt or None, whether the position was used)."""
    if mode in ("auto", "id") and qid is not None and str(qid) in by_id:
        return by_id[str(qid)], False
    if mode in ("auto", "index") and isinstance(qid, int) and not isinstance(qid, bool) and 0 <= qid < len(ordered):
        return ordered[qid], True
    return None, False


def parse(path: Path, options: ImportOptions) -> Iterator[Pair | Reject]:
    if options.question_match not in ("auto", "id", "index"):
        raise ImportFailed(f"question_match must be auto, id or index, not {options.question_match!r}")
    by_id, ordered = load_questions(options.questions, "arena-battles")
    by_position = 0
    for line, obj in iter_json_records(path):
        if isinstance(obj, Reject):
            yield obj
            continue
        winner = WINNER_MAP.get(str(obj.get("winner", "")).strip().lower())
        if winner is None:
            yield Reject(line, "unknown winner", repr(obj.get("winner"))[:80])
            continue
        prompt, used_position = lookup_prompt(obj.get("question_id"), by_id, ordered, options.question_match)
        if prompt is None:
            yield Reject(line, "no prompt for question id", repr(obj.get("question_id"))[:80])
            continue
        by_position += used_position
        yield Pair(line=line, prompt=prompt, model_a=obj.get("model_a") or "", model_b=obj.get("model_b") or "",
                   winner=winner, soft_label={"a": 1.0, "b": 0.0, "tie": 0.5}[winner],
                   judge=obj.get("judge") or None)
    if by_position:
        options.notes.append(
            f"{by_position} battles matched their integer question_id as a 0-based position in "
            f"{options.questions} (the file has no such ids); pass --question-match id to refuse that"
        )
