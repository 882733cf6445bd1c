"""Local transformers backends: one model greedy or sampled, and best-of-k over the same weights.

Generation is a plain token loop with a KV cache (not `model.generate`), so that `generate` and
`stream` are the same code path (streamed text == generated text for the same seed), sampling uses
a per-call `torch.Generator` (seeded, no global RNG), and each token's log-probability is at hand.
`token_logprobs` are log p(token) under the model's own (untempered) distribution, the quantity
confidence baselines and probes want.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from routerops.backends.base import BackendError, Generation, GenerationParams, Message
from routerops.local_models import LLMSpec, LoadedLLM, load_llm


@dataclass
class _Step:
    delta: str  # text released by this step (may be "" while held back)
    logprob: float | None  # None for the final flush, which is no new token


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing chars might be the start of a stop string (must not be emitted yet)."""
    keep = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                keep = max(keep, n)
                break
    return keep


class LocalBackend:
    """A causal LM from a Hugging Face id, a local folder or a GGUF file (see routerops.local_models)."""

    def __init__(self, spec: LLMSpec, name: str | None = None):
        self.spec = spec
        self.name = name or spec.model
        self._loaded: LoadedLLM | None = None
        self._lock = threading.Lock()  # one forward pass at a time: 2 cores gain nothing from more

    @property
    def loaded(self) -> LoadedLLM:
        if self._loaded is None:
            self._loaded = load_llm(self.spec)
        return self._loaded

    # --- prompts --------------------------------------------------------------------------------
    def prompt_ids(self, messages: list[Message]) -> list[int]:
        tok = self.loaded.tokenizer
        if not messages:
            raise BackendError("no messages to answer")
        if getattr(tok, "chat_template", None):
            out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
            return [int(i) for i in ids]
        text = "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages) + "\nassistant:"
        return list(tok(text, add_special_tokens=True)["input_ids"])

    def count_tokens(self, text: str) -> int:
        return len(self.loaded.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        tok, model = self.loaded.tokenizer, self.loaded.model
        if tok.eos_token_id is not None:
            ids.add(int(tok.eos_token_id))
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if isinstance(gen_eos, int):
            ids.add(gen_eos)
        elif isinstance(gen_eos, list | tuple):
            ids.update(int(i) for i in gen_eos)
        return ids

    # --- the token loop -------------------------------------------------------------------------
    def _forward(self, input_ids, past):  # noqa: ANN001, ANN202
        import torch

        with self._lock, torch.inference_mode():
            out = self.loaded.model(input_ids=input_ids, past_key_values=past, use_cache=True)
            return out.past_key_values, out.logits[0, -1].float().clone()

    def _steps(self, messages: list[Message], params: GenerationParams, state: dict) -> Iterator[_Step]:
        import torch

        llm = self.loaded
        tok, device = llm.tokenizer, llm.device
        ids = self.prompt_ids(messages)
        state["prompt_tokens"] = len(ids)
        state["finish_reason"] = "length"
        eos = self._eos_ids()
        gen = None
        if params.temperature > 0:
            gen = torch.Generator(device=device)
            gen.manual_seed(params.seed if params.seed is not None else int(time.time_ns() % 2**31))
        stops = tuple(s for s in params.stop if s)
        tokens: list[int] = []
        emitted = 0  # chars of decoded text already released
        # The grad mode is entered per forward pass, never across a yield: a streaming consumer may
        # resume this generator on another thread (Starlette's threadpool).
        past, logits = self._forward(torch.tensor([ids], device=device), None)
        for _ in range(params.max_new_tokens):
            logp = torch.log_softmax(logits, dim=-1)
            if params.temperature <= 0:
                token = int(torch.argmax(logits))
            else:
                probs = torch.softmax(logits / params.temperature, dim=-1)
                if params.top_p < 1.0:
                    sorted_p, order = torch.sort(probs, descending=True)
                    cut = torch.cumsum(sorted_p, dim=-1) - sorted_p >= params.top_p
                    sorted_p[cut] = 0.0
                    probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
                token = int(torch.multinomial(probs / probs.sum(), 1, generator=gen))
            if token in eos:
                state["finish_reason"] = "stop"
                break
            tokens.append(token)
            text = tok.decode(tokens, skip_special_tokens=True)
            hit = min((i for i in (text.find(s, max(0, emitted - len(s))) for s in stops) if i >= 0),
                      default=-1)
            if hit >= 0:
                state["finish_reason"] = "stop"
                state["completion_tokens"] = len(tokens)
                yield _Step(text[emitted:hit], float(logp[token]))
                return
            # hold back a partial UTF-8 character and a possible stop-string prefix
            end = len(text) - (1 if text.endswith("\ufffd") else 0)
            end -= _held_back(text[:end], stops)
            yield _Step(text[emitted:end] if end > emitted else "", float(logp[token]))
            emitted = max(emitted, end)
            past, logits = self._forward(torch.tensor([[token]], device=device), past)
        state["completion_tokens"] = len(tokens)
        text = tok.decode(tokens, skip_special_tokens=True)
        if len(text) > emitted:
            yield _Step(text[emitted:], None)

    def generate(self, messages: list[Message], params: GenerationParams) -> Generation:
        t0 = time.perf_counter()
        state: dict = {}
        parts: list[str] = []
        logprobs: list[float] = []
        for step in self._steps(messages, params, state):
            parts.append(step.delta)
            if step.logprob is not None:
                logprobs.append(step.logprob)
        return Generation(
            text="".join(parts), model=self.name, prompt_tokens=state.get("prompt_tokens", 0),
            completion_tokens=state.get("completion_tokens", len(logprobs)),
            finish_reason=state.get("finish_reason", "stop"),
            latency_ms=(time.perf_counter() - t0) * 1000, token_logprobs=logprobs,
        )

    def stream(self, messages: list[Message], params: GenerationParams) -> Iterator[str]:
        for step in self._steps(messages, params, {}):
            if step.delta:
                yield step.delta

    # --- probes ---------------------------------------------------------------------------------
    def hidden_states(self, messages: list[Message], answer: str) -> tuple[tuple, tuple[int, int]]:
        """Hidden states over prompt + answer: (layers+1 tensors of shape (T, H), (start, end)) where
        [start, end) are the answer's token positions."""
        import torch

        llm = self.loaded
        prompt = self.prompt_ids(messages)
        answer_ids = list(llm.tokenizer(answer, add_special_tokens=False)["input_ids"])
        ids = torch.tensor([prompt + answer_ids], device=llm.device)
        with torch.inference_mode(), self._lock:
            out = llm.model(input_ids=ids, output_hidden_states=True, use_cache=False)
        layers = tuple(h[0].float().cpu() for h in out.hidden_states)
        return layers, (len(prompt), len(prompt) + len(answer_ids))


def _mean(values: list[float] | None) -> float:
    return sum(values) / len(values) if values else float("-inf")


class BestOfKBackend:
    """The embedded "strong" model: the same weights at k times the test-time compute.

    k samples at `temperature` with seeds seed, seed+1, ..., seed+k-1 (seed = the request's seed or
    0, so the choice is reproducible). When every answer is a short label (at most `label_words`
    words) the majority answer wins (self-consistency), ties broken by mean token log-probability;
    otherwise the answer with the highest mean token log-probability wins.
    """

    def __init__(self, base: LocalBackend, k: int = 5, temperature: float = 0.7, name: str | None = None,
                 label_words: int = 3):
        if k < 1:
            raise ValueError("best-of-k needs k >= 1")
        self.base = base
        self.k = k
        self.temperature = temperature
        self.label_words = label_words
        self.name = name or f"{base.name}-bestof{k}"

    def count_tokens(self, text: str) -> int:
        return self.base.count_tokens(text)

    def _pick(self, samples: list[Generation]) -> tuple[Generation, str]:
        if all(len(s.text.split()) <= self.label_words for s in samples):
            votes: dict[str, list[Generation]] = {}
            for s in samples:
                votes.setdefault(s.text.strip().lower(), []).append(s)
            best = max(votes.values(), key=lambda group: (len(group), max(_mean(g.token_logprobs) for g in group)))
            return max(best, key=lambda g: _mean(g.token_logprobs)), "majority"
        return max(samples, key=lambda g: _mean(g.token_logprobs)), "mean_logprob"

    def generate(self, messages: list[Message], params: GenerationParams) -> Generation:
        t0 = time.perf_counter()
        seed = params.seed if params.seed is not None else 0
        samples = [
            self.base.generate(messages, GenerationParams(
                max_new_tokens=params.max_new_tokens, temperature=self.temperature, top_p=params.top_p,
                seed=seed + i, stop=params.stop))
            for i in range(self.k)
        ]
        chosen, rule = self._pick(samples)
        return Generation(
            text=chosen.text, model=self.name, prompt_tokens=chosen.prompt_tokens,
            completion_tokens=chosen.completion_tokens, finish_reason=chosen.finish_reason,
            latency_ms=(time.perf_counter() - t0) * 1000, token_logprobs=chosen.token_logprobs,
            extra={"k": self.k, "selection": rule, "sampled_tokens": sum(s.completion_tokens for s in samples),
                   "sample_mean_logprobs": [_mean(s.token_logprobs) for s in samples],
                   "sample_texts": [s.text for s in samples]},
        )

    def stream(self, messages: list[Message], params: GenerationParams) -> Iterator[str]:
        # The choice needs all k answers, so the winner is streamed after it is known.
        text = self.generate(messages, params).text
        for i in range(0, len(text), 16):
            yield text[i : i + 16]
