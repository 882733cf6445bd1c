"""The draft-and-verify loop: exact speculative decoding over a transformers causal LM.

Invariant between rounds: `context` = prompt + generated tokens; the target's KV cache holds
context[:-1] (the last token is pending). A round: the draft proposes x_1..x_g; the target runs
[context[-1], x_1..x_g] in ONE forward pass, giving its distributions after each prefix; the
acceptance rule keeps x_1..x_j and adds one token y (resampled or bonus); both caches are cropped
back to context + x_1..x_j, so rejected tokens leave no trace.

Metrics per request (SpecResult):
- acceptance_rate a: accepted / checked draft tokens (the target checks draft tokens up to and
  including the first rejection), the per-token acceptance probability of the speedup formula.
- mean_accepted_length: accepted draft tokens per verification round that had a proposal.
- tokens_per_target_pass: generated tokens / target verification passes (the prefill, which plain
  decoding pays too, is not counted).
- draft_cost_ratio c: mean time of one draft step (one proposed token) / mean target pass time.
- verify_cost_per_token v: what one more verified token adds to a target pass, in one-token passes
  (a line fitted across requests; ~0 on a GPU, not on a CPU). Gamma is chosen with the measured
  cost of each pass length, which is not linear on a CPU (adaptive.py).
- speedup_estimate: estimated target-only cost over actual cost, in one-token target passes:
  new_tokens / (sum over rounds of r(tokens verified) + c * draft_tokens), r from PassCost. The
  benchmark measures the real walltime ratio. expected_speedup is the formula (adaptive.py) at the
  measured a, mean gamma and c.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from routerops.serving.speculative.adaptive import AdaptiveGamma, PassCost, expected_speedup
from routerops.serving.speculative.drafts import Draft
from routerops.serving.speculative.kv import crop_to, forward_logits
from routerops.serving.speculative.sampling import (
    AcceptRule,
    Warp,
    exact_accept,
    greedy_accept,
    greedy_verdict,
    one_hot_draft,
)

Prompt = str | list[int] | list[dict[str, str]]


@dataclass
class SpecResult:
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (end-of-sequence token) or "length" (max_new_tokens)
    prompt_tokens: int
    draft: str
    acceptance_rate: float
    mean_accepted_length: float
    target_passes: int
    tokens_per_target_pass: float
    draft_tokens: int
    accepted_tokens: int
    checked_tokens: int
    draft_rounds: int  # verification rounds that had a proposal (prompt lookup may find none)
    gamma_mean: float
    draft_cost_ratio: float
    verify_cost_per_token: float  # extra target-pass cost of one more verified token (PassCost)
    speedup_estimate: float
    expected_speedup: float
    prefill_s: float
    wall_s: float
    model: str = ""  # set by the serving wrapper: the target's name
    role: str | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def stats(self) -> dict[str, Any]:
        return self.metrics()

    def metrics(self) -> dict[str, Any]:
        """The per-request numbers, for a request row's JSON column or Prometheus."""
        data = asdict(self)
        for key in ("token_ids", "text", "model", "role"):
            data.pop(key)
        return data


@dataclass
class _Stats:
    rounds: int = 0
    rounds_with_draft: int = 0
    proposed: int = 0
    accepted: int = 0
    checked: int = 0
    draft_s: float = 0.0
    target_s: float = 0.0
    pass_units: float = 0.0  # the rounds' target passes in one-token passes (PassCost.relative)
    prefill_s: float = 0.0
    finish_reason: str = "length"
    generated: list[int] = field(default_factory=list)


def encode_prompt(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids as given; chat messages (or a bare string, as one user message) via the chat template."""
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        ids = list(prompt)
    else:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "content" in m for m in messages):
            raise ValueError("prompt must be token ids, a string, or chat messages [{'role', 'content'}, ...]")
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError("empty prompt")
    return ids


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.update(configured if isinstance(configured, list) else [configured])
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


class SpeculativeGenerator:
    """Exact speculative decoding of `target` with `draft`. Thread-safe: per-request state only.

    `accept_rule` replaces the acceptance rule (tests pass broken ones to prove they are caught).
    """

    def __init__(self, target: Any, draft: Draft, gamma: int = 4, adaptive: bool = True, max_gamma: int = 8,
                 accept_rule: AcceptRule | None = None):
        # `target` is a routerops LoadedLLM (model, tokenizer, device) or anything with those attributes.
        self.model, self.tokenizer, self.device = target.model, target.tokenizer, target.device
        self.draft = draft
        self.gamma, self.adaptive, self.max_gamma = gamma, adaptive, max(max_gamma, gamma)
        AdaptiveGamma(gamma, self.max_gamma)  # validates gamma now, not at the first request
        self.accept_rule = accept_rule
        self.vocab = self.model.get_output_embeddings().weight.shape[0]
        self.stop_ids = eos_ids(self.model, self.tokenizer)
        self.pass_cost = PassCost()  # learnt across requests: how target pass time grows with tokens

    # --- public API ------------------------------------------------------------------------------
    def generate(self, prompt: Prompt, max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None) -> SpecResult:
        # No streaming consumer: run the loop directly, without decoding the text after every round.
        prompt_ids = encode_prompt(self.tokenizer, prompt)
        stats = _Stats()
        t0 = time.perf_counter()
        for _ in self.chunks(prompt_ids, max_new_tokens, Warp(temperature, top_p), seed, stats):
            pass
        return self._result(prompt_ids, stats, time.perf_counter() - t0)

    def stream(self, prompt: Prompt, max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
               seed: int | None = None) -> SpecStream:
        """Iterate for text deltas (one per accepted chunk); `.result` holds the SpecResult afterwards."""
        return SpecStream(self, encode_prompt(self.tokenizer, prompt), max_new_tokens, Warp(temperature, top_p), seed)

    # --- the loop ---------------------------------------------------------------------------------
    def chunks(self, prompt_ids: list[int], max_new_tokens: int, warp: Warp, seed: int | None,
               stats: _Stats) -> Iterator[list[int]]:
        """Yields the tokens each round adds; fills `stats`."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        generator = torch.Generator().manual_seed(seed if seed is not None else int(torch.seed() % 2**63))
        rule = self.accept_rule or (greedy_accept if warp.greedy else exact_accept)
        fast_greedy = warp.greedy and self.accept_rule is None
        gamma_ctl = AdaptiveGamma(self.gamma, self.max_gamma, enabled=self.adaptive)
        free = getattr(self.draft, "free_proposals", False)

        t0 = time.perf_counter()
        cache = DynamicCache()
        if len(prompt_ids) > 1:
            forward_logits(self.model, prompt_ids[:-1], cache, self.device, last_only=True)
        state = self.draft.start(prompt_ids, cache)
        stats.prefill_s = time.perf_counter() - t0
        context = list(prompt_ids)

        while len(stats.generated) < max_new_tokens:
            remaining = max_new_tokens - len(stats.generated)
            t1 = time.perf_counter()
            if free:
                # Proposing costs nothing: ask for all the round could use, keep what the evidence warrants.
                proposal = state.propose(context, min(self.max_gamma, remaining - 1), warp, generator) \
                    if remaining > 1 else None
                evidence = proposal.evidence if proposal else None
                available = len(proposal.tokens) if proposal else 0
                gamma = gamma_ctl.gamma_for(evidence, available, self.pass_cost.relative)
            else:
                evidence = None
                gamma = min(gamma_ctl.next_gamma(), remaining - 1)  # the round adds one token of its own
                proposal = state.propose(context, gamma, warp, generator) if gamma > 0 else None
            t2 = time.perf_counter()
            draft = proposal.tokens[:gamma] if proposal else []
            logits = forward_logits(self.model, [context[-1], *draft], cache, self.device)
            if fast_greedy:
                # Temperature 0 with the built-in rule: the argmax of the raw logits is the argmax of the
                # warped (one-hot) distribution, so skip building (g+1, V) probabilities; one sync only.
                verdict = greedy_verdict(logits.argmax(-1).tolist(), draft)
            else:
                p = warp.probs(logits).cpu()
                q = None
                if draft and not warp.greedy:
                    q = proposal.q[: len(draft)].cpu() if proposal.q is not None else one_hot_draft(draft, self.vocab)
                verdict = rule(p, q if q is not None else p[: len(draft)], draft, generator)
            t3 = time.perf_counter()

            n = len(context)
            crop_to(cache, n + verdict.accepted)
            state.commit(n + verdict.accepted)
            chunk = [*draft[: verdict.accepted], verdict.next_token]
            stats.rounds += 1
            stats.target_s += t3 - t2
            self.pass_cost.update(len(draft) + 1, t3 - t2)
            stats.pass_units += self.pass_cost.relative(len(draft) + 1)
            if draft:
                stats.rounds_with_draft += 1
                stats.proposed += len(draft)
                stats.accepted += verdict.accepted
                stats.checked += verdict.accepted + (1 if verdict.accepted < len(draft) else 0)
                stats.draft_s += t2 - t1
            if self.adaptive and draft:
                gamma_ctl.update(len(draft), verdict.accepted, self._cost_ratio(stats), self.pass_cost.relative,
                                 evidence)

            chunk = chunk[:remaining]
            for i, token in enumerate(chunk):
                if token in self.stop_ids:
                    chunk = chunk[: i + 1]
                    stats.finish_reason = "stop"
                    break
            context.extend(chunk)
            stats.generated.extend(chunk)
            yield chunk
            if stats.finish_reason == "stop":
                return

    @staticmethod
    def _cost_ratio(stats: _Stats) -> float:
        if not stats.proposed or not stats.rounds:
            return 0.0
        return (stats.draft_s / stats.proposed) / max(stats.target_s / stats.rounds, 1e-9)

    def _result(self, prompt_ids: list[int], stats: _Stats, wall_s: float) -> SpecResult:
        c = self._cost_ratio(stats)
        a = stats.accepted / stats.checked if stats.checked else 0.0
        gamma_mean = stats.proposed / stats.rounds_with_draft if stats.rounds_with_draft else 0.0
        n = len(stats.generated)
        return SpecResult(
            token_ids=list(stats.generated),
            text=self.tokenizer.decode(stats.generated, skip_special_tokens=True),
            finish_reason=stats.finish_reason,
            prompt_tokens=len(prompt_ids),
            draft=self.draft.name,
            acceptance_rate=a,
            mean_accepted_length=stats.accepted / stats.rounds_with_draft if stats.rounds_with_draft else 0.0,
            target_passes=stats.rounds,
            tokens_per_target_pass=n / stats.rounds if stats.rounds else 0.0,
            draft_tokens=stats.proposed,
            accepted_tokens=stats.accepted,
            checked_tokens=stats.checked,
            draft_rounds=stats.rounds_with_draft,
            gamma_mean=gamma_mean,
            draft_cost_ratio=c,
            verify_cost_per_token=self.pass_cost.marginal(),
            speedup_estimate=n / (stats.pass_units + c * stats.proposed) if stats.rounds else 0.0,
            expected_speedup=expected_speedup(a, gamma_mean, c) if gamma_mean else 1.0,
            prefill_s=stats.prefill_s,
            wall_s=wall_s,
        )


class SpecStream:
    """Text deltas of one request, chunk by chunk; `result` is set once the iteration ends."""

    def __init__(self, gen: SpeculativeGenerator, prompt_ids: list[int], max_new_tokens: int, warp: Warp,
                 seed: int | None):
        self._gen, self._prompt_ids = gen, prompt_ids
        self._args = (max_new_tokens, warp, seed)
        self.result: SpecResult | None = None

    def __iter__(self) -> Iterator[str]:
        stats = _Stats()
        t0 = time.perf_counter()
        tokenizer = self._gen.tokenizer
        sent = ""
        for _ in self._gen.chunks(self._prompt_ids, *self._args, stats):
            text = tokenizer.decode(stats.generated, skip_special_tokens=True)
            # Hold back a partial UTF-8 character (decoded as U+FFFD) until its next byte arrives.
            if text.startswith(sent) and not text.endswith("\ufffd") and len(text) > len(sent):
                yield text[len(sent):]
                sent = text
        self.result = self._gen._result(self._prompt_ids, stats, time.perf_counter() - t0)
        if self.result.text.startswith(sent) and len(self.result.text) > len(sent):
            yield self.result.text[len(sent):]
