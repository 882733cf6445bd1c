"""Judge-labelled preference data (RouteLLM's augmentation): weak and strong answers to a prompt, a
pairwise verdict from an OpenAI-compatible judge, stored as a preference row of source `judge:<model>`.

- Answers: generated through the configured weak/strong backends, or taken from the request log
  (`from_requests`: an answer logged for the role and the configured model is reused, the missing
  side is generated).
- Verdict: MT-Bench's published "pair-v2" pairwise prompt (FastChat llm_judge/data/judge_prompts.jsonl),
  asked twice with the answers swapped. Both orders agree: that verdict; they disagree: a tie (the
  judge's position bias cancels instead of landing as a label).
- A verdict without a "[[A]]"/"[[B]]"/"[[C]]" tag is counted and the prompt skipped; an unreachable
  judge (or one refusing the request) stops the run with a clear error. Rows land one prompt at a time,
  so a stopped run keeps what it labelled, and re-running skips prompts already labelled for the same
  pair and judge.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from routerops.backends.base import Backend, BackendError, GenerationParams
from routerops.backends.factory import make_backend
from routerops.db.models import PreferenceLog, RequestLog
from routerops.importers.readers import is_csv, iter_csv_records, iter_json_records, question_text
from routerops.importers.records import ImportFailed, Reject
from routerops.model_names import ModelCatalog, load_catalog, save_catalog
from routerops.pairwise_judge import (  # noqa: F401 - re-exported: the label CLI and tests read them here
    JUDGE_PROMPT_NAME,
    JUDGE_PROMPT_TEMPLATE,
    JUDGE_SYSTEM_PROMPT,
    PairVerdict,
    PairwiseJudge,
    parse_verdict,
)
from routerops.settings import Settings
from routerops.text import normalize_prompt, prompt_hash

MAX_SOURCE_CHARS = 80  # preference_logs.source
MAX_EXAMPLES = 20
MAX_CONSECUTIVE_ANSWER_FAILURES = 5  # a dead answer backend stops the run instead of failing every prompt


class LabelError(Exception):
    """The run cannot start or must stop (bad input, unreachable judge, dead answer backend)."""


@dataclass
class LabelItem:
    """One prompt to label, with any answers already known (from the request log)."""

    line: int  # position in the prompts file, or 0 for the request log
    prompt: str
    weak_answer: str | None = None
    strong_answer: str | None = None


@dataclass
class LabelReport:
    source: str
    weak: str
    strong: str
    considered: int = 0  # distinct prompts read
    attempted: int = 0  # of those, not labelled before: answers and a verdict were sought
    labelled: int = 0
    already_labelled: int = 0
    winners: Counter[str] = field(default_factory=Counter)  # a (weak) | b (strong) | tie
    order_swap_ties: int = 0  # the two orders disagreed
    unparseable_verdicts: int = 0
    answers_from_log: int = 0
    answers_generated: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> prompts not labelled
    examples: list[dict[str, Any]] = field(default_factory=list)
    stopped_by_limit: bool = False
    seconds: float = 0.0

    def skip(self, reason: str, line: int, detail: str = "") -> None:
        self.skipped[reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"line": line, "reason": reason, **({"detail": detail[:300]} if detail else {})})

    def summary(self) -> str:
        w = self.winners
        lines = [
            f"{self.source}: {self.labelled} labelled ({self.weak} vs {self.strong}): weak wins {w['a']}, "
            f"strong wins {w['b']}, ties {w['tie']} (of which {self.order_swap_ties} from order-swap disagreement) "
            f"in {self.seconds:.1f}s",
            f"  {self.considered} prompts read, {self.already_labelled} already labelled (skipped), "
            f"{sum(self.skipped.values())} not labelled; answers: {self.answers_from_log} from the request log, "
            f"{self.answers_generated} generated",
        ]
        if self.stopped_by_limit:
            lines.append("  stopped at --limit; run again for the rest")
        lines += [f"  not labelled because {reason}: {n}" for reason, n in sorted(self.skipped.items())]
        return "\n".join(lines)


# --- where prompts come from --------------------------------------------------------------------
def prompts_from_file(path: Path) -> Iterator[LabelItem | tuple[int, str]]:
    """JSONL / JSON array / CSV (gzipped or not) with a `prompt` (or `instruction`, `question`, arena
    `turns`) per record. Yields LabelItems, or (line, reason) for records without a usable prompt."""

    if not path.is_file():
        raise LabelError(f"prompts file not found: {path}")
    try:
        records = iter_csv_records(path) if is_csv(path) else iter_json_records(path)
        for line, obj in records:
            if isinstance(obj, Reject):
                yield line, obj.reason
                continue
            text = question_text(obj)
            if not text or not text.strip():
                yield line, "no prompt"
                continue
            yield LabelItem(line=line, prompt=text)
    except ImportFailed as exc:
        raise LabelError(str(exc)) from None
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise LabelError(f"{path}: cannot read prompts: {exc}") from None


def prompts_from_requests(session: Session, catalog: ModelCatalog, weak_model: str,
                          strong_model: str) -> tuple[list[LabelItem], int]:
    """Distinct logged prompts, oldest first, with the logged answer of the configured weak / strong
    model where one was served. Returns (items, requests whose prompt was not stored)."""
    weak_c, strong_c = catalog.canonicalize(weak_model), catalog.canonicalize(strong_model)
    by_hash: dict[str, LabelItem] = {}
    not_stored = 0
    rows = session.execute(select(RequestLog.prompt, RequestLog.completion, RequestLog.model_chosen,
                                  RequestLog.extra).order_by(RequestLog.created_at, RequestLog.id))
    for prompt, completion, chosen, extra in rows:
        if prompt is None:
            not_stored += 1
            continue
        if not prompt.strip():
            continue
        item = by_hash.setdefault(prompt_hash(prompt), LabelItem(line=0, prompt=prompt))
        if not completion or not chosen:
            continue
        # Only an answer of the configured model counts: the pair may have changed since it was served.
        served = catalog.canonicalize(chosen)
        role = (extra or {}).get("role")
        if served == weak_c and role in (None, "weak") and item.weak_answer is None:
            item.weak_answer = completion
        elif served == strong_c and role in (None, "strong") and item.strong_answer is None:
            item.strong_answer = completion
    return list(by_hash.values()), not_stored


# --- the job ------------------------------------------------------------------------------------
class _Answerer:
    """Backends built on first need, so a run whose answers are all logged loads no model. Calls to
    in-process models are serialized (one forward pass at a time); HTTP and replay backends are not."""

    def __init__(self, settings: Settings, backends: dict[str, Backend] | None, max_new_tokens: int):
        self.settings = settings
        self.backends = dict(backends or {})
        self._given = set(self.backends)
        self.params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0)
        self._build_lock = threading.Lock()
        self._locks = {"weak": threading.Lock(), "strong": threading.Lock()}

    def _backend(self, role: str) -> Backend:
        with self._build_lock:
            backend = self.backends.get(role)
            if backend is None:
                try:
                    backend = self.backends[role] = make_backend(self.settings, role)  # type: ignore[arg-type]
                except (ValueError, BackendError, OSError) as exc:
                    raise LabelError(f"cannot build the {role} backend: {exc}") from None
            return backend

    def answer(self, role: str, prompt: str) -> str:
        backend = self._backend(role)
        messages = [{"role": "user", "content": prompt}]
        if getattr(self.settings, f"{role}_backend") == "local" and role not in self._given:
            with self._locks[role]:
                return backend.generate(messages, self.params).text
        return backend.generate(messages, self.params).text


def _labelled_hashes(session: Session, source: str, weak: str, strong: str) -> set[str]:
    pair = or_(and_(PreferenceLog.model_a == weak, PreferenceLog.model_b == strong),
               and_(PreferenceLog.model_a == strong, PreferenceLog.model_b == weak))
    return set(session.scalars(select(PreferenceLog.prompt_hash).where(PreferenceLog.source == source, pair)))


def judge_source(judge_model: str) -> str:
    source = f"judge:{judge_model.strip()}"
    if not judge_model.strip():
        raise LabelError("the judge model name is empty")
    if len(source) > MAX_SOURCE_CHARS:
        raise LabelError(f"source {source[:40]!r}... is over {MAX_SOURCE_CHARS} characters; use a shorter "
                         "--judge-model name")
    return source


@dataclass
class _Outcome:
    """What a worker found for one prompt; recorded (report, database) by the calling thread only."""

    item: LabelItem
    prompt: str
    phash: str
    answers: dict[str, str] = field(default_factory=dict)
    from_log: int = 0
    generated: int = 0
    failed_role: str | None = None
    error: str | None = None
    judge_error: str | None = None
    verdict: PairVerdict | None = None
    texts: list[str] = field(default_factory=list)


@dataclass
class _Job:
    session: Session
    judge: PairwiseJudge
    judge_model: str
    answerer: _Answerer
    report: LabelReport
    done: set[str]
    consecutive_failures: int = 0

    def work(self, item: LabelItem, prompt: str, phash: str) -> _Outcome:
        """Answers and both verdicts for one prompt (network only: runs in a worker thread)."""
        out = _Outcome(item, prompt, phash)
        for role, logged in (("weak", item.weak_answer), ("strong", item.strong_answer)):
            if logged is not None:
                out.answers[role] = logged
                out.from_log += 1
                continue
            try:
                out.answers[role] = self.answerer.answer(role, prompt)
            except BackendError as exc:
                out.failed_role, out.error = role, str(exc)
                return out
            out.generated += 1
        try:
            out.verdict, out.texts = self.judge.judge(prompt, out.answers["weak"], out.answers["strong"])
        except BackendError as exc:
            out.judge_error = str(exc)
        return out

    def record(self, out: _Outcome) -> None:
        report = self.report
        report.answers_from_log += out.from_log
        report.answers_generated += out.generated
        if out.failed_role is not None:
            report.skip(f"{out.failed_role} answer failed", out.item.line, out.error or "")
            self.consecutive_failures += 1
            if self.consecutive_failures >= MAX_CONSECUTIVE_ANSWER_FAILURES:
                raise LabelError(f"the {out.failed_role} backend failed {self.consecutive_failures} prompts in a "
                                 f"row (last: {out.error}); {report.labelled} row(s) stored before it stopped")
            return
        self.consecutive_failures = 0
        if out.judge_error is not None:
            raise LabelError(f"judge {self.judge_model} unreachable or refusing requests: {out.judge_error}. "
                             f"{report.labelled} row(s) stored before it failed; run again to continue "
                             "(labelled prompts are skipped)")
        verdict = out.verdict
        assert verdict is not None
        if not verdict.parsed:
            report.unparseable_verdicts += 1
            report.skip("unparseable verdict (no [[A]]/[[B]]/[[C]])", out.item.line,
                        out.texts[0] if verdict.weak_first is None else out.texts[1])
            return
        self.session.add(PreferenceLog(
            prompt=out.prompt, prompt_hash=out.phash, model_a=report.weak, model_b=report.strong,
            winner=verdict.winner, source=report.source, judge=f"{self.judge_model} ({JUDGE_PROMPT_NAME})",
            answer_a=out.answers["weak"], answer_b=out.answers["strong"]))
        self.session.commit()  # one row at a time: a stopped run keeps its labels
        self.done.add(out.phash)
        report.labelled += 1
        report.winners[verdict.winner] += 1
        report.order_swap_ties += int(not verdict.consistent)


def run_labeling(session: Session, settings: Settings, judge: PairwiseJudge, judge_model: str, *,
                 prompts_file: Path | None = None, from_requests: bool = False, limit: int | None = None,
                 workers: int = 1, backends: dict[str, Backend] | None = None, max_new_tokens: int | None = None,
                 progress: Callable[[LabelReport], None] | None = None) -> LabelReport:
    """Label prompts into the preference store (committing each row as it lands); see the module doc.

    Rows name the pair by the router's vocabulary (ROUTEROPS_ROUTER_WEAK_NAME / _STRONG_NAME, default the
    backend model names), canonical, with model_a = weak and model_b = strong. `limit` caps the prompts
    taken up (those not labelled before); `workers` prompts are answered and judged at a time (threads;
    only this thread writes to the database). `backends` ({"weak": ..., "strong": ...}) overrides the
    configured ones. progress(report) is called after each prompt taken up. Raises LabelError for a
    judge that cannot be reached or refuses the request; rows stored before that stay.
    """
    if (prompts_file is None) == (not from_requests):
        raise LabelError("give exactly one of --prompts FILE or --from-requests")
    if limit is not None and limit < 1:
        raise LabelError(f"--limit must be at least 1, not {limit}")
    if workers < 1:
        raise LabelError(f"--workers must be at least 1, not {workers}")
    started = time.perf_counter()
    source = judge_source(judge_model)
    catalog = load_catalog(session)
    weak, strong = catalog.canonicalize(settings.weak_router_name), catalog.canonicalize(settings.strong_router_name)
    if weak == strong:
        raise LabelError(f"the weak and strong router names are the same model ({weak}); nothing to compare "
                         "(set ROUTEROPS_ROUTER_WEAK_NAME / _STRONG_NAME)")
    save_catalog(session, catalog, only={weak, strong})
    session.commit()
    report = LabelReport(source=source, weak=weak, strong=strong)
    job = _Job(session, judge, judge_model, _Answerer(settings, backends, max_new_tokens or settings.max_new_tokens),
               report, _labelled_hashes(session, source, weak, strong))

    if from_requests:
        items, not_stored = prompts_from_requests(session, catalog, settings.weak_model, settings.strong_model)
        if not_stored:
            report.skipped["prompt not stored in the request log"] += not_stored
        stream: Iterator[LabelItem | tuple[int, str]] = iter(items)
    else:
        stream = prompts_from_file(prompts_file)  # type: ignore[arg-type]

    def todo() -> Iterator[tuple[LabelItem, str, str]]:
        seen: set[str] = set()
        for item in stream:
            if isinstance(item, tuple):
                report.skip(item[1], item[0])
                continue
            prompt = normalize_prompt(item.prompt)
            phash = prompt_hash(prompt)
            if phash in seen:
                continue
            seen.add(phash)
            report.considered += 1
            if phash in job.done:
                report.already_labelled += 1
                continue
            if limit is not None and report.attempted >= limit:
                report.stopped_by_limit = True
                return
            report.attempted += 1
            yield item, prompt, phash

    def record(future: Future[_Outcome]) -> None:
        job.record(future.result())
        if progress is not None:
            progress(report)

    pending: set[Future[_Outcome]] = set()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="label") as pool:
        try:
            for args in todo():
                pending.add(pool.submit(job.work, *args))
                if len(pending) >= 2 * workers:  # bounded read-ahead
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        record(future)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    record(future)
        except BaseException:
            for future in pending:
                future.cancel()  # prompts not yet started; running ones finish and are dropped
            raise
    report.seconds = time.perf_counter() - started
    return report
