"""The pairwise judge: MT-Bench's "pair-v2" prompt asked of an OpenAI-compatible judge in both orders
(the two orders disagreeing is a tie). Used by `routerops label` and the exploration judge (training)
and by the monitor's replay of fleet models' new golden answers (monitoring).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from routerops.backends.base import Backend, BackendError, GenerationParams
from routerops.backends.openai_http import OpenAIHTTPBackend
from routerops.settings import Settings

JUDGE_PROMPT_NAME = "pair-v2"
# Verbatim from FastChat's MT-Bench judge prompts ("pair-v2"): a published, widely used pairwise
# prompt, so labels are comparable with MT-Bench's own pairwise judgements.
JUDGE_SYSTEM_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants "
    "to the user question displayed below. You should choose the assistant that follows the user's instructions "
    "and answers the user's question better. Your evaluation should consider factors such as the helpfulness, "
    "relevance, accuracy, depth, creativity, and level of detail of their responses. Begin your evaluation by "
    "comparing the two responses and provide a short explanation. Avoid any positional biases and ensure that "
    "the order in which the responses were presented does not influence your decision. Do not allow the length "
    "of the responses to influence your evaluation. Do not favor certain names of the assistants. Be as "
    "objective as possible. After providing your explanation, output your final verdict by strictly following "
    "this format: \"[[A]]\" if assistant A is better, \"[[B]]\" if assistant B is better, and \"[[C]]\" for a tie."
)
JUDGE_PROMPT_TEMPLATE = (
    "[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n{answer_a}\n"
    "[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n{answer_b}\n"
    "[The End of Assistant B's Answer]"
)
VERDICT_TAG = re.compile(r"\[\[([ABC])\]\]")


def parse_verdict(text: str) -> str | None:
    """"A", "B" or "tie" from a pair-v2 judgement; None when it holds no verdict tag.

    FastChat checks for [[A]], then [[B]], then [[C]], which favours A when a judge quotes the format;
    here the last tag wins, since the prompt asks for the verdict after the explanation.
    """
    tags = VERDICT_TAG.findall(text or "")
    if not tags:
        return None
    return {"A": "A", "B": "B", "C": "tie"}[tags[-1]]


@dataclass(frozen=True)
class PairVerdict:
    """Both orders' verdicts, mapped to the weak/strong pair: "weak" | "strong" | "tie" | None."""

    weak_first: str | None  # weak answer shown as A
    strong_first: str | None  # strong answer shown as A

    @property
    def parsed(self) -> bool:
        return self.weak_first is not None and self.strong_first is not None

    @property
    def consistent(self) -> bool:
        return self.weak_first == self.strong_first

    @property
    def winner(self) -> str:
        """Preference-row winner with model_a = weak, model_b = strong; disagreement is a tie."""
        if not self.consistent:
            return "tie"
        return {"weak": "a", "strong": "b", "tie": "tie"}[self.weak_first]  # type: ignore[index]


class PairwiseJudge:
    """Asks an OpenAI-compatible judge (any Backend) for a pair-v2 verdict in both orders."""

    def __init__(self, backend: Backend, max_tokens: int = 2048):
        self.backend = backend
        # FastChat judges greedily with up to 2048 tokens for the explanation and the verdict.
        self.params = GenerationParams(max_new_tokens=max_tokens, temperature=0.0)

    def ask(self, question: str, answer_a: str, answer_b: str) -> tuple[str | None, str]:
        """(verdict "A" | "B" | "tie" | None, the judge's text). BackendError when the judge fails."""
        messages = [
            {"role": "system", "content": JUDGE_SYSTEM_PROMPT},
            {"role": "user", "content": JUDGE_PROMPT_TEMPLATE.format(question=question, answer_a=answer_a,
                                                                     answer_b=answer_b)},
        ]
        text = self.backend.generate(messages, self.params).text
        return parse_verdict(text), text

    def judge(self, question: str, weak_answer: str, strong_answer: str) -> tuple[PairVerdict, list[str]]:
        first, text1 = self.ask(question, weak_answer, strong_answer)
        second, text2 = self.ask(question, strong_answer, weak_answer)
        as_weak_first = {"A": "weak", "B": "strong", "tie": "tie"}
        as_strong_first = {"A": "strong", "B": "weak", "tie": "tie"}
        return PairVerdict(as_weak_first.get(first or ""), as_strong_first.get(second or "")), [text1, text2]


def judge_backend(settings: Settings) -> Backend | None:
    """The configured judge endpoint, or None when none is configured."""
    if not (settings.judge_base_url and settings.judge_model):
        return None
    key = settings.judge_api_key.get_secret_value() if settings.judge_api_key is not None else None
    return OpenAIHTTPBackend(settings.judge_base_url, settings.judge_model, key, timeout_s=settings.http_timeout_s,
                             max_retries=settings.http_max_retries, backoff_s=settings.http_backoff_s)


class LiveJudge:
    """The monitoring Judge protocol (routerops.monitoring.quality.Judge) over a PairwiseJudge:
    P(weak wins) = 1, 0 or 0.5 by the verdict, None when a verdict has no tag or the judge fails."""

    def __init__(self, judge: PairwiseJudge):
        self.judge = judge
        self.calls = self.failures = 0

    def p_weak_wins(self, prompt: str, weak_model: str, weak_output: str, strong_model: str,
                    strong_output: str) -> float | None:
        self.calls += 1
        try:
            verdict, _ = self.judge.judge(prompt, weak_output, strong_output)
        except BackendError:
            self.failures += 1
            return None
        if not verdict.parsed:
            return None
        return {"a": 1.0, "b": 0.0, "tie": 0.5}[verdict.winner]
