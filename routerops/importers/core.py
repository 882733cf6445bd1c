"""Import one file into the preference store: one transaction, one ImportBatch, bulk inserts.

A file is identified by (format, sha256 of its bytes): importing it again adds nothing. Every record
a parser rejects is counted by reason (with the first examples and their line numbers); every other
failure (unreadable or truncated file, database error) rolls the whole file back.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session
from tqdm import tqdm

from routerops.db.models import ImportBatch, OutcomeLog, PreferenceLog
from routerops.db.session import session_scope
from routerops.importers import alpaca_eval, arena_battles, judgment_scores, native, routerbench, scores
from routerops.importers.records import ImportFailed, ImportOptions, Outcome, Pair, Reject
from routerops.model_names import ModelCatalog, UnknownModelError, load_catalog, save_catalog
from routerops.settings import Settings
from routerops.text import normalize_prompt, prompt_hash

log = logging.getLogger(__name__)

Parser = Callable[[Path, ImportOptions], Iterator[Pair | Outcome | Reject]]


@dataclass(frozen=True)
class Format:
    name: str
    source: str
    parse: Parser


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("native", native.SOURCE, native.parse),
        Format("alpaca-eval", alpaca_eval.SOURCE, alpaca_eval.parse),
        Format("arena-battles", arena_battles.SOURCE, arena_battles.parse),
        Format("judgment-scores", judgment_scores.SOURCE, judgment_scores.parse),
        Format("routerbench", routerbench.SOURCE, routerbench.parse),
        Format("scores", scores.SOURCE, scores.parse),
    )
}

MAX_EXAMPLES = 20
CHUNK_ROWS = 5000
# Column widths of the schema: longer values are rejected, not truncated.
MAX_MODEL_CHARS = 200
MAX_JUDGE_CHARS = 200
MAX_SOURCE_CHARS = 80


@dataclass
class ImportReport:
    path: str
    fmt: str
    batch_id: int | None
    accepted: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    skipped_duplicate_file: bool = False
    new_models: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        name = Path(self.path).name
        if self.skipped_duplicate_file:
            return f"{name}: already imported as batch {self.batch_id}; 0 added"
        line = (f"{name}: batch {self.batch_id}, {self.accepted} accepted, {self.rejected} rejected "
                f"in {self.seconds:.1f}s")
        if self.new_models:
            line += f"; {len(self.new_models)} new models"
        return line


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Tally:
    """Rejections by reason plus the first examples."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: list[dict[str, Any]] = []

    def add(self, reject: Reject) -> None:
        self.counts[reject.reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            example: dict[str, Any] = {"line": reject.line, "reason": reject.reason}
            if reject.detail:
                example["detail"] = reject.detail
            self.examples.append(example)


class _Names:
    """Canonical model names, resolved once per spelling."""

    def __init__(self, catalog: ModelCatalog, known_only: bool) -> None:
        self.catalog = catalog
        self.known_only = known_only
        self.before = set(catalog.aliases)
        self.cache: dict[str, str] = {}
        self.touched: set[str] = set()

    def resolve(self, raw: str, line: int) -> str | Reject:
        hit = self.cache.get(raw)
        if hit is not None:
            return hit
        if not raw or not raw.strip():
            return Reject(line, "empty model name")
        if len(raw) > MAX_MODEL_CHARS:
            return Reject(line, "model name too long", raw[:80])
        try:
            name = self.catalog.resolve(raw) if self.known_only else self.catalog.canonicalize(raw)
        except UnknownModelError:
            return Reject(line, "unknown model", raw[:80])
        if self.known_only:
            self.catalog.aliases[name].add(raw)  # resolve() does not record spellings
        self.cache[raw] = name
        self.touched.add(name)
        return name


def _prompt(text: str, hashes: dict[str, tuple[str, str]]) -> tuple[str, str]:
    cached = hashes.get(text)
    if cached is None:
        prompt = normalize_prompt(text) if text else ""
        cached = hashes[text] = (prompt, prompt_hash(prompt) if prompt else "")
    return cached


def _source(item: Pair | Outcome, fmt: Format) -> str | Reject:
    source = item.source or fmt.source
    if len(source) > MAX_SOURCE_CHARS:
        return Reject(item.line, "source too long", source[:80])
    return source


def _outcome_row(item: Outcome, names: _Names, fmt: Format, batch_id: int, now: datetime,
                 hashes: dict[str, tuple[str, str]]) -> dict[str, Any] | Reject:
    prompt, phash = _prompt(item.prompt, hashes)
    if not prompt:
        return Reject(item.line, "empty prompt")
    model = names.resolve(item.model, item.line)
    if isinstance(model, Reject):
        return model
    source = _source(item, fmt)
    if isinstance(source, Reject):
        return source
    return {"prompt": prompt, "prompt_hash": phash, "prompt_id": item.prompt_id, "model": model,
            "score": float(item.score), "source": source, "category": item.category, "answer": item.answer,
            "created_at": item.created_at or now, "import_batch_id": batch_id}


def _row(pair: Pair, names: _Names, fmt: Format, batch_id: int, now: datetime,
         hashes: dict[str, tuple[str, str]]) -> dict[str, Any] | Reject:
    prompt, phash = _prompt(pair.prompt, hashes)
    if not prompt:
        return Reject(pair.line, "empty prompt")
    if pair.winner not in ("a", "b", "tie"):
        return Reject(pair.line, "unknown winner", repr(pair.winner))
    model_a = names.resolve(pair.model_a, pair.line)
    if isinstance(model_a, Reject):
        return model_a
    model_b = names.resolve(pair.model_b, pair.line)
    if isinstance(model_b, Reject):
        return model_b
    source = _source(pair, fmt)
    if isinstance(source, Reject):
        return source
    if pair.category is not None and len(pair.category) > MAX_SOURCE_CHARS:
        return Reject(pair.line, "category too long", pair.category[:80])
    if pair.judge is not None and len(pair.judge) > MAX_JUDGE_CHARS:
        return Reject(pair.line, "judge too long", pair.judge[:80])
    return {
        "prompt": prompt, "prompt_hash": phash, "model_a": model_a, "model_b": model_b,
        "winner": pair.winner, "soft_label": pair.soft_label, "source": source, "judge": pair.judge,
        "answer_a": pair.answer_a, "answer_b": pair.answer_b, "created_at": pair.created_at or now,
        "import_batch_id": batch_id, "category": pair.category,
    }


def _import_in_session(session: Session, fmt: Format, path: Path, sha: str, options: ImportOptions,
                       progress: bool, chunk_rows: int) -> ImportReport:
    report = ImportReport(path=str(path), fmt=fmt.name, batch_id=None)
    existing = session.scalar(select(ImportBatch.id).where(ImportBatch.format == fmt.name,
                                                           ImportBatch.file_sha256 == sha))
    if existing is not None:
        report.batch_id, report.skipped_duplicate_file = existing, True
        return report
    batch = ImportBatch(format=fmt.name, file_path=str(path), file_sha256=sha, accepted=0, rejected=0, reasons={})
    session.add(batch)
    session.flush()  # the unique (format, sha256) guards concurrent imports of the same file here
    report.batch_id = batch.id
    names = _Names(load_catalog(session), options.known_models_only)
    tally, now, hashes = _Tally(), datetime.now(UTC), {}
    # one list per table: a format may yield pairs (preference_logs) or outcomes (outcome_logs)
    pending: dict[type, list[dict[str, Any]]] = {PreferenceLog: [], OutcomeLog: []}

    def flush(table: type) -> None:
        if pending[table]:
            session.execute(insert(table), pending[table])
            report.accepted += len(pending[table])
            pending[table] = []

    bar = tqdm(desc=path.name, unit=" rows", disable=not progress, leave=False)
    try:
        for item in fmt.parse(path, options):
            bar.update(1)
            if isinstance(item, Reject):
                tally.add(item)
                continue
            if isinstance(item, Outcome):
                table, row = OutcomeLog, _outcome_row(item, names, fmt, batch.id, now, hashes)
            else:
                table, row = PreferenceLog, _row(item, names, fmt, batch.id, now, hashes)
            if isinstance(row, Reject):
                tally.add(row)
                continue
            pending[table].append(row)
            if len(pending[table]) >= chunk_rows:
                flush(table)
        flush(PreferenceLog)
        flush(OutcomeLog)
    finally:
        bar.close()
    new_models = sorted(set(names.catalog.aliases) - names.before)
    save_catalog(session, names.catalog, only=names.touched)
    report.rejected = sum(tally.counts.values())
    report.reasons, report.examples = dict(tally.counts), tally.examples
    report.new_models, report.notes = new_models, list(options.notes)
    batch.accepted, batch.rejected = report.accepted, report.rejected
    batch.reasons = {**report.reasons, "examples": tally.examples, **({"notes": report.notes} if report.notes else {})}
    session.flush()
    return report


def import_file(target: Session | Settings | str | None, fmt: str, path: str | Path,
                questions: str | Path | None = None, *, options: ImportOptions | None = None,
                progress: bool = True, chunk_rows: int = CHUNK_ROWS) -> ImportReport:
    """Import one file in one transaction; returns what landed and what was rejected, by reason.

    target: a Session (committed here on success, rolled back on failure), Settings, a database URL,
    or None (settings from the environment). Raises ImportFailed, with nothing written, when the
    file cannot be read through (missing, truncated, wrong format) or the database refuses it.
    """
    if fmt not in FORMATS:
        raise ImportFailed(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    path = Path(path)
    if not path.is_file():
        raise ImportFailed(f"file not found: {path}")
    options = options or ImportOptions()
    if questions is not None:
        options.questions = Path(questions)
    options.notes = []
    started = time.perf_counter()
    sha = file_sha256(path)

    def run(session: Session) -> ImportReport:
        try:
            report = _import_in_session(session, FORMATS[fmt], path, sha, options, progress, chunk_rows)
            session.commit()
        except IntegrityError as exc:
            session.rollback()
            existing = session.scalar(select(ImportBatch.id).where(ImportBatch.format == fmt,
                                                                   ImportBatch.file_sha256 == sha))
            if existing is not None:  # another process imported the same file meanwhile
                return ImportReport(str(path), fmt, existing, skipped_duplicate_file=True)
            raise ImportFailed(f"{path}: database refused the import, nothing written: {exc.orig}") from exc
        except ImportFailed:
            session.rollback()
            raise
        except SQLAlchemyError as exc:
            session.rollback()
            raise ImportFailed(f"{path}: database error, nothing written: {exc}") from exc
        except (OSError, EOFError, ValueError, UnicodeDecodeError) as exc:
            session.rollback()
            raise ImportFailed(f"{path}: cannot read {fmt} file, nothing written: {exc}") from exc
        except BaseException:
            session.rollback()
            raise
        report.seconds = time.perf_counter() - started
        return report

    if isinstance(target, Session):
        return run(target)

    url = target if isinstance(target, str) else None
    settings = target if isinstance(target, Settings) else None
    with session_scope(settings=settings, url=url) as session:
        return run(session)
