"""Golden traces: the JSONL format, loading with per-line validation, and recording.

One trace per line (golden_traces/README.md documents every field):
  trace_id, category, prompt, decoding {max_new_tokens, temperature, top_p}, seed,
  weak {model, output}, strong {model, output}, label {gold_answer} | {judged_winner, p_weak_wins, judge},
  router_score (P(strong wins) at record time, or null), router_version, recorded_at.

Two ways to record: against the configured pair (`record_with_pair`, fixed seeds), or from replayed
real outputs with their judge labels (`record_from_alpaca_eval`: AlpacaEval model_outputs files and
annotation files), which is how the tests stage a real drift scenario.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from routerops.backends.base import GenerationParams
from routerops.db import session_scope
from routerops.metrics import quality_gap_problem
from routerops.models.embeddings import embed_cached
from routerops.monitoring.quality import gold_match, read_judge_labels  # noqa: F401 - read here by callers
from routerops.text import prompt_hash

log = logging.getLogger(__name__)

WINNERS = ("weak", "strong", "tie")


class GoldenFormatError(ValueError):
    """A golden file (or one of its lines) does not follow the documented format."""


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0


@dataclass(frozen=True)
class Output:
    model: str
    output: str


@dataclass(frozen=True)
class Label:
    """Either a gold answer (str or alternatives) or a judged winner with P(weak wins)."""

    gold_answer: str | list[str] | None = None
    judged_winner: str | None = None
    p_weak_wins: float | None = None
    judge: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.gold_answer is not None:
            return {"gold_answer": self.gold_answer}
        return {"judged_winner": self.judged_winner, "p_weak_wins": self.p_weak_wins, "judge": self.judge}


@dataclass(frozen=True)
class GoldenTrace:
    trace_id: str
    category: str
    prompt: str
    decoding: Decoding
    seed: int
    weak: Output
    strong: Output
    label: Label
    router_score: float | None = None
    router_version: str | None = None
    recorded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["label"] = self.label.to_dict()
        return d


def _parse_label(raw: object) -> Label:
    if not isinstance(raw, dict):
        raise GoldenFormatError("label must be an object with gold_answer or judged_winner")
    if raw.get("gold_answer") is not None:
        gold = raw["gold_answer"]
        if isinstance(gold, str) and gold.strip():
            return Label(gold_answer=gold)
        if isinstance(gold, list) and gold and all(isinstance(g, str) and g.strip() for g in gold):
            return Label(gold_answer=list(gold))
        raise GoldenFormatError("label.gold_answer must be a non-empty string or list of strings")
    winner = raw.get("judged_winner")
    if winner not in WINNERS:
        raise GoldenFormatError(f"label needs gold_answer or judged_winner in {WINNERS}, got {winner!r}")
    p = raw.get("p_weak_wins")
    if p is None:
        p = {"weak": 1.0, "strong": 0.0, "tie": 0.5}[winner]
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise GoldenFormatError(f"label.p_weak_wins must be in [0, 1], got {p}")
    return Label(judged_winner=winner, p_weak_wins=p, judge=raw.get("judge"))


def _parse_output(raw: object, which: str) -> Output:
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), str) or not isinstance(raw.get("output"), str):
        raise GoldenFormatError(f"{which} must be an object with string fields model and output")
    return Output(model=raw["model"], output=raw["output"])


def parse_trace(raw: dict[str, Any]) -> GoldenTrace:
    for key in ("trace_id", "prompt", "weak", "strong", "label"):
        if key not in raw:
            raise GoldenFormatError(f"missing field {key!r}")
    if not isinstance(raw["prompt"], str) or not raw["prompt"].strip():
        raise GoldenFormatError("prompt must be a non-empty string")
    dec = raw.get("decoding") or {}
    try:
        decoding = Decoding(int(dec.get("max_new_tokens", 64)), float(dec.get("temperature", 0.0)),
                            float(dec.get("top_p", 1.0)))
        seed = int(raw.get("seed", 0))
        score = raw.get("router_score")
        score = None if score is None else float(score)
    except (TypeError, ValueError) as exc:
        raise GoldenFormatError(f"bad decoding/seed/router_score: {exc}") from None
    if score is not None and not 0.0 <= score <= 1.0:
        raise GoldenFormatError(f"router_score must be in [0, 1], got {score}")
    return GoldenTrace(
        trace_id=str(raw["trace_id"]), category=str(raw.get("category") or "general"), prompt=raw["prompt"],
        decoding=decoding, seed=seed, weak=_parse_output(raw["weak"], "weak"),
        strong=_parse_output(raw["strong"], "strong"), label=_parse_label(raw["label"]),
        router_score=score, router_version=None if raw.get("router_version") is None else str(raw["router_version"]),
        recorded_at=str(raw.get("recorded_at") or ""),
    )


def load_golden(path: Path | str) -> list[GoldenTrace]:
    """All traces of a golden file. The set is all-or-nothing: a monitor must not silently replay
    part of it, so any bad line raises GoldenFormatError naming every bad line (up to 10)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"golden set {path} does not exist (record one: routerops golden record)")
    traces: list[GoldenTrace] = []
    errors: list[str] = []
    seen: set[str] = set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            if not isinstance(raw, dict):
                raise GoldenFormatError("a line must be a JSON object")
            trace = parse_trace(raw)
            if trace.trace_id in seen:
                raise GoldenFormatError(f"duplicate trace_id {trace.trace_id!r}")
            seen.add(trace.trace_id)
            traces.append(trace)
        except (json.JSONDecodeError, GoldenFormatError) as exc:
            errors.append(f"line {lineno}: {exc}")
    if errors:
        more = f" (+{len(errors) - 10} more)" if len(errors) > 10 else ""
        raise GoldenFormatError(f"{path}: {len(errors)} bad line(s): " + "; ".join(errors[:10]) + more)
    if not traces:
        raise GoldenFormatError(f"{path} holds no traces")
    return traces


def write_golden(path: Path | str, traces: Iterable[GoldenTrace]) -> int:
    """Write atomically (temp file then rename): a half-written golden set never replaces a good one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as fh:
        for trace in traces:
            fh.write(json.dumps(trace.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


@dataclass(frozen=True)
class QualityGap:
    """Mean recorded quality of each side over the labelled traces, and why PGR would be null."""

    n_labelled: int
    q_weak: float | None
    q_strong: float | None
    problem: str | None  # None: strong is better than weak, PGR is defined on this set


def recorded_quality_gap(traces: Sequence[GoldenTrace]) -> QualityGap:
    """The quality gap of the recorded answers (gold match, or the judge's P(weak wins)). A set with
    no gap gives a null PGR on every replay of it, whatever the router does."""

    weak_q, strong_q = [], []
    for t in traces:
        if t.label.gold_answer is not None:
            weak_q.append(gold_match(t.weak.output, t.label.gold_answer))
            strong_q.append(gold_match(t.strong.output, t.label.gold_answer))
        elif t.label.p_weak_wins is not None:
            weak_q.append(t.label.p_weak_wins)
            strong_q.append(1.0 - t.label.p_weak_wins)
    if not weak_q:
        return QualityGap(0, None, None, "no trace is labelled")
    qw, qs = sum(weak_q) / len(weak_q), sum(strong_q) / len(strong_q)
    return QualityGap(len(weak_q), qw, qs, quality_gap_problem(qw, qs))


# --- source prompts ---------------------------------------------------------------------------
@dataclass(frozen=True)
class GoldenPrompt:
    trace_id: str
    category: str
    prompt: str
    gold_answer: str | list[str]
    max_new_tokens: int | None = None


def load_prompts(path: Path | str) -> tuple[list[GoldenPrompt], list[str]]:
    """Source prompts (JSONL: trace_id, category, prompt, gold_answer[, max_new_tokens]).
    Bad rows are reported (returned as messages) and skipped; good rows are returned."""
    prompts: list[GoldenPrompt] = []
    problems: list[str] = []
    seen: set[str] = set()
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            prompt, gold = raw.get("prompt"), raw.get("gold_answer")
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError("prompt must be a non-empty string")
            if not (isinstance(gold, str) and gold.strip()) and not (isinstance(gold, list) and gold):
                raise ValueError("gold_answer must be a non-empty string or list")
            tid = str(raw.get("trace_id") or f"p{lineno:04d}")
            if tid in seen:
                raise ValueError(f"duplicate trace_id {tid!r}")
            seen.add(tid)
            mnt = raw.get("max_new_tokens")
            prompts.append(GoldenPrompt(tid, str(raw.get("category") or "general"), prompt, gold,
                                        None if mnt is None else int(mnt)))
        except (json.JSONDecodeError, ValueError, TypeError, AttributeError) as exc:
            problems.append(f"line {lineno}: {exc}")
    return prompts, problems


# --- recording --------------------------------------------------------------------------------
def score_prompts(router, prompts: Sequence[str], settings):  # noqa: ANN001, ANN201 - np.ndarray
    """P(strong wins) for the configured pair. Query embeddings go through the database cache, so a
    golden set replayed every hour is embedded once (and prompts seen in training not at all)."""

    strong, weak = router.pair(settings.strong_router_name, settings.weak_router_name)  # unknown name: fail first
    with session_scope(settings) as session:
        emb = embed_cached(session, router.embedder, list(prompts), progress=False)
    return np.asarray(router.score_embeddings(emb, strong, weak, prompts=list(prompts)), dtype=np.float64)


def _score_prompts(router, prompts: Sequence[str], settings) -> list[float | None]:  # noqa: ANN001
    if router is None:
        return [None] * len(prompts)
    return [float(x) for x in score_prompts(router, prompts, settings)]


def record_with_pair(prompts: Sequence[GoldenPrompt], weak, strong, *, settings, router=None,  # noqa: ANN001
                     decoding: Decoding | None = None, base_seed: int = 1234,
                     progress: bool = True) -> list[GoldenTrace]:
    """Generate both models' answers with fixed seeds (seed = base_seed + index) and the given
    decoding; the label is the prompt's gold answer."""

    decoding = decoding or Decoding(max_new_tokens=settings.max_new_tokens)
    scores = _score_prompts(router, [p.prompt for p in prompts], settings)
    now = datetime.now(UTC).isoformat()
    traces = []
    for i, (p, score) in enumerate(tqdm(list(zip(prompts, scores, strict=True)), desc="recording golden",
                                        disable=not progress)):
        dec = Decoding(p.max_new_tokens or decoding.max_new_tokens, decoding.temperature, decoding.top_p)
        seed = base_seed + i
        params = GenerationParams(max_new_tokens=dec.max_new_tokens, temperature=dec.temperature,
                                  top_p=dec.top_p, seed=seed)
        messages = [{"role": "user", "content": p.prompt}]
        w = weak.generate(messages, params)
        s = strong.generate(messages, params)
        traces.append(GoldenTrace(
            trace_id=p.trace_id, category=p.category, prompt=p.prompt, decoding=dec, seed=seed,
            weak=Output(w.model, w.text), strong=Output(s.model, s.text), label=Label(gold_answer=p.gold_answer),
            router_score=score, router_version=getattr(router, "version", None), recorded_at=now,
        ))
    return traces


def read_model_outputs(path: Path | str) -> tuple[str, dict[str, str]]:
    """AlpacaEval model_outputs (.json / .json.gz): (generator, {prompt hash: output})."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        rows = json.load(fh)
    if not isinstance(rows, list) or not rows:
        raise GoldenFormatError(f"{path}: expected a non-empty JSON list of {{instruction, output, generator}}")
    generators = {r.get("generator") for r in rows if isinstance(r, dict)}
    if len(generators) != 1:
        raise GoldenFormatError(f"{path}: expected one generator, found {sorted(map(str, generators))}")
    outputs = {prompt_hash(r["instruction"]): r["output"] for r in rows
               if isinstance(r.get("instruction"), str) and isinstance(r.get("output"), str)}
    return str(generators.pop()), outputs


def winner_of(p_weak: float) -> str:
    return "weak" if p_weak > 0.5 else "strong" if p_weak < 0.5 else "tie"


def record_from_alpaca_eval(weak_outputs: Path | str, strong_outputs: Path | str, annotations: Sequence[Path | str],
                            *, settings=None, router=None, limit: int | None = None,  # noqa: ANN001
                            base_seed: int = 0, label_model: str | None = None) -> list[GoldenTrace]:
    """Golden traces from recorded real outputs: prompts both files answer and the judge labelled
    (weak generator vs strong generator; `label_model` names the weak model in the annotations when
    it differs from the outputs' generator). Prompts in file order; `limit` keeps the first N."""
    weak_name, weak_out = read_model_outputs(weak_outputs)
    strong_name, strong_out = read_model_outputs(strong_outputs)
    labels = read_judge_labels(annotations, label_model or weak_name, strong_name)
    path = Path(strong_outputs)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        rows = json.load(fh)
    instructions = [r["instruction"] for r in rows]
    # AlpacaEval's `dataset` (helpful_base, koala, oasst, selfinstruct, vicuna) is the trace's category
    dataset = {prompt_hash(r["instruction"]): str(r.get("dataset") or "alpaca_eval") for r in rows}
    picked = []
    for instruction in instructions:
        h = prompt_hash(instruction)
        if h in weak_out and h in labels:
            picked.append((instruction, h))
        if limit is not None and len(picked) >= limit:
            break
    if not picked:
        raise GoldenFormatError(f"no prompt has outputs from both {weak_name} and {strong_name} and a judge label")
    scores = _score_prompts(router, [p for p, _ in picked], settings) if router is not None else [None] * len(picked)
    now = datetime.now(UTC).isoformat()
    traces = []
    for i, ((instruction, h), score) in enumerate(zip(picked, scores, strict=True)):
        p_weak, judge = labels[h]
        traces.append(GoldenTrace(
            trace_id=f"ae-{h[:12]}", category=dataset[h], prompt=instruction,
            decoding=Decoding(max_new_tokens=2048), seed=base_seed + i,
            weak=Output(weak_name, weak_out[h]), strong=Output(strong_name, strong_out[h]),
            label=Label(judged_winner=winner_of(p_weak), p_weak_wins=p_weak, judge=judge),
            router_score=score, router_version=getattr(router, "version", None), recorded_at=now,
        ))
    return traces
