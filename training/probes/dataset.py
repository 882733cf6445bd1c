"""Probe datasets: (prompt, weak answer, was it good) rows, from a labelled task file or from the logs.

HEADLINES (FrugalGPT's gold-price headline task): the CSV rows are `"Q: <headline>\\nA:",label,id`
(no header). We ask the weak model with a short instruction and one example per label, and grade
its first word against the gold label.

Logs: preference rows that carry both answers and involve the weak model; the weak answer is good
when it won or tied (soft label >= 0.5 where the source gives one).
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import or_, select

from routerops.backends.base import Message, last_user_prompt
from routerops.db.models import PreferenceLog
from routerops.model_names import load_catalog, name_key

log = logging.getLogger(__name__)

HEADLINES_LABELS = ("up", "down", "neutral", "none")
HEADLINES_INSTRUCTION = (
    "Classify the direction of the gold price in a news headline. "
    "Answer with one word: up, down, neutral or none."
)
# One example per label; their ids are excluded from every split built from the task file.
HEADLINES_SHOTS: tuple[tuple[str, str, str], ...] = (
    ("9353", "gold futures down $10.70 at $897.50 an ounce", "down"),
    ("3631", "Gold retakes Rs 31,000 level on demand push, soars Rs 650", "up"),
    ("4963", "Gold futures little changed ahead of U.S. GDP data", "neutral"),
    ("5617", "barrick gold sees 2005 gold production 5.4m-5.5m", "none"),
)
HEADLINES_TEMPLATE_VERSION = "headlines-v1"


@dataclass
class ProbeExample:
    """One row of a probe dataset. `answer` is None until the weak model has answered."""

    id: str
    messages: list[Message]
    gold: str | None = None
    answer: str | None = None
    label: int | None = None  # 1 = the weak answer was good
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The last user turn: what a text probe embeds (few-shot turns are the same for every row)."""
        return last_user_prompt(self.messages)


class DatasetError(ValueError):
    pass


def headline_text(query: str) -> str:
    text = query.strip()
    text = text.removeprefix("Q:").strip()
    return re.sub(r"\n?A:\s*$", "", text).strip()


def headlines_messages(headline: str) -> list[Message]:
    messages: list[Message] = [{"role": "system", "content": HEADLINES_INSTRUCTION}]
    for _id, text, label in HEADLINES_SHOTS:
        messages += [{"role": "user", "content": text}, {"role": "assistant", "content": label}]
    messages.append({"role": "user", "content": headline})
    return messages


def grade_headline(answer: str, gold: str) -> int:
    """1 if the answer's first word (lower case, letters only) is the gold label."""
    words = re.findall(r"[a-z]+", (answer or "").lower())
    return int(bool(words) and words[0] == gold.strip().lower())


def load_headlines(path: Path | str, limit: int | None = None) -> list[ProbeExample]:
    """Rows of a HEADLINES CSV (header optional). Bad rows are logged and skipped."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"HEADLINES file {path} does not exist")
    shot_ids = {s[0] for s in HEADLINES_SHOTS}
    examples: list[ProbeExample] = []
    bad = 0
    with path.open(newline="", encoding="utf-8") as fh:
        for line_no, row in enumerate(csv.reader(fh), start=1):
            if line_no == 1 and [c.strip().lower() for c in row[:2]] == ["query", "label"]:
                continue
            if len(row) < 3 or row[1].strip().lower() not in HEADLINES_LABELS or not headline_text(row[0]):
                bad += 1
                if bad <= 5:
                    log.warning("%s row %d skipped: expected query,label(up/down/neutral/none),id; got %r",
                                path, line_no, row[:3])
                continue
            if row[2].strip() in shot_ids:
                continue
            examples.append(ProbeExample(id=row[2].strip(), messages=headlines_messages(headline_text(row[0])),
                                         gold=row[1].strip().lower()))
            if limit is not None and len(examples) >= limit:
                break
    if bad:
        log.warning("%s: %d bad rows skipped", path, bad)
    if not examples:
        raise DatasetError(f"{path} has no usable HEADLINES rows (query,label,id with label in {HEADLINES_LABELS})")
    return examples


def examples_from_logs(session, weak_model: str, limit: int | None = None) -> list[ProbeExample]:  # noqa: ANN001
    """Preference rows with answers where one side is `weak_model` (any spelling the catalog knows)."""

    catalog = load_catalog(session)
    try:
        weak = catalog.resolve(weak_model)
    except KeyError:
        weak = weak_model
    spellings = {name_key(s) for s in catalog.aliases.get(weak, {weak})} | {name_key(weak)}
    query = (select(PreferenceLog)
             .where(PreferenceLog.answer_a.is_not(None), PreferenceLog.answer_b.is_not(None))
             .order_by(PreferenceLog.id))
    names = sorted(catalog.aliases.get(weak, {weak}) | {weak})
    query = query.where(or_(PreferenceLog.model_a.in_(names), PreferenceLog.model_b.in_(names)))
    examples: list[ProbeExample] = []
    for row in session.scalars(query):
        side = "a" if name_key(row.model_a) in spellings else "b" if name_key(row.model_b) in spellings else None
        if side is None or row.winner not in {"a", "b", "tie"}:
            continue
        answer = row.answer_a if side == "a" else row.answer_b
        if not answer or not answer.strip():
            continue
        if row.soft_label is not None:
            p_weak = row.soft_label if side == "a" else 1.0 - row.soft_label
            label = int(p_weak >= 0.5)
        else:
            label = int(row.winner in {side, "tie"})
        examples.append(ProbeExample(id=f"log-{row.id}", messages=[{"role": "user", "content": row.prompt}],
                                     answer=answer, label=label, extra={"source": row.source}))
        if limit is not None and len(examples) >= limit:
            break
    return examples
