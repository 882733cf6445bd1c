"""Features for deferral probes.

Hidden-state features come from the weak model itself: for (prompt, its answer) we take, at several
layers, the hidden state of the answer's last token and the mean over the answer's tokens. Two ways
to get them, which agree up to re-tokenization of the answer text:

- `generate_with_features`: greedy generation in a hand-written KV-cache loop that also records the
  answer tokens' hidden states and log-probabilities, and (optionally) asks the model, on the same
  cache, for its verbalized confidence. One prompt prefill per example: generation on CPU is the
  slow part of building a training set, so nothing is computed twice.
- `answer_features`: one teacher-forced pass over (prompt, given answer): what serving does for an
  answer that another process generated, and what training does for answers taken from the logs.

Text features (for weak models behind an API, no hidden states) are a local sentence embedding of the
prompt and of the answer, concatenated: embedding them separately keeps a long prompt from pushing
the answer past the embedder's token limit.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from routerops.backends.base import Message

POOLINGS = ("last", "mean")
VERBAL_QUESTION = "How confident are you that the answer is correct? Answer with a number from 0 to 100"
VERBAL_DEFAULT = 50.0  # what an unparseable verbalized confidence counts as


def feature_key(layer: int, pooling: str) -> str:
    return f"L{layer:02d}_{pooling}"


def parse_feature_key(key: str) -> tuple[int, str]:
    match = re.fullmatch(r"L(\d+)_(last|mean)", key)
    if not match:
        raise ValueError(f"bad feature key {key!r} (expected like 'L12_mean')")
    return int(match.group(1)), match.group(2)


def default_layers(num_layers: int, every: int = 3) -> list[int]:
    """Every `every`-th transformer layer and the last one (hidden_states[0] is the embeddings)."""
    return sorted(set(range(every, num_layers + 1, every)) | {num_layers})


def parse_confidence(text: str) -> float | None:
    """First number in the reply, as a percentage in [0, 100]; None when there is none."""
    match = re.search(r"\d+(?:\.\d+)?", text or "")
    if not match:
        return None
    value = float(match.group(0))
    return value if 0.0 <= value <= 100.0 else None


@dataclass
class AnsweredBatch:
    """Answers of the weak model with everything a probe or a baseline needs, in input order."""

    texts: list[str]
    token_logprobs: list[list[float]]
    features: dict[str, np.ndarray]  # feature_key -> (N, hidden)
    verbal_texts: list[str | None] = field(default_factory=list)
    verbal_conf: list[float | None] = field(default_factory=list)
    ended: list[bool] = field(default_factory=list)  # the model stopped with EOS (not the token limit)


def render_prompt(tokenizer, messages: Sequence[Message]) -> str:  # noqa: ANN001
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def _eos_ids(tokenizer) -> set[int]:  # noqa: ANN001
    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return ids


class _Feeder:
    """Feeds one token per row (or a left-padded chunk) into a batch KV cache, keeping the 2-D
    attention mask and explicit position ids right when rows are paused with masked pads."""

    def __init__(self, model, input_ids, attention_mask, prefix=None):  # noqa: ANN001
        """`prefix`: (cache, length) of a prompt prefix every row shares (the instruction and few-shot
        turns): computed once and copied per batch, the rows' own tokens follow it after their pads."""

        import torch

        self.model = model
        if prefix is None:
            self.mask = attention_mask
            pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            self.out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, use_cache=True)
            self.past = self.out.past_key_values
        else:
            cache, length = prefix
            self.past = copy.deepcopy(cache)
            self.past.batch_repeat_interleave(input_ids.shape[0])
            self.mask = torch.ones((input_ids.shape[0], length), dtype=torch.long, device=input_ids.device)
            self.feed(input_ids, attention_mask.bool())

    def feed(self, ids, active, hidden: bool = False):  # noqa: ANN001, ANN201
        import torch

        if ids.dim() == 1:
            ids, active = ids[:, None], active[:, None]
        base = self.mask.sum(-1, keepdim=True)
        pos = base + (active.long().cumsum(-1) - 1).clamp(min=0)
        self.mask = torch.cat([self.mask, active.long()], dim=-1)
        self.out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=pos,
                              past_key_values=self.past, use_cache=True, output_hidden_states=hidden)
        self.past = self.out.past_key_values
        return self.out


def _left_pad(seqs: Sequence[Sequence[int]], pad: int):  # noqa: ANN202
    import torch

    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, x in enumerate(seqs):
        ids[r, width - len(x) :] = torch.tensor(list(x), dtype=torch.long)
        mask[r, width - len(x) :] = 1
    return ids, mask


def _shared_prefix(tok, rendered: Sequence[str]) -> tuple[list[int], list[list[int]]] | None:  # noqa: ANN001
    """Token ids of the prompt prefix all rows share (cut after a special token, so tokenization is
    unchanged) and each row's remaining ids; None when sharing would not be exact or is not worth it."""

    common = os.path.commonprefix(list(rendered))
    cut = max((common.rfind(t) + len(t) for t in tok.all_special_tokens if common.rfind(t) >= 0), default=0)
    if cut <= 0:
        return None
    prefix = tok(common[:cut], add_special_tokens=False).input_ids
    suffixes = [tok(r[cut:], add_special_tokens=False).input_ids for r in rendered]
    if len(prefix) < 8 or any(not s for s in suffixes):
        return None
    for r, s in zip(rendered, suffixes, strict=True):
        if prefix + s != tok(r, add_special_tokens=False).input_ids:
            return None
    return prefix, suffixes


def generate_with_features(llm, prompts: Sequence[Sequence[Message]], *, layers: Sequence[int],  # noqa: ANN001, C901
                           max_new_tokens: int = 4, verbalize: bool = True, verbal_tokens: int = 4,
                           batch_size: int = 16, progress: bool = True) -> AnsweredBatch:
    """Greedy answers of `llm` (a routerops.local_models.LoadedLLM) with their hidden-state features,
    token log-probabilities and, if asked, the model's verbalized confidence in its own answer."""
    import torch

    tok, model = llm.tokenizer, llm.model
    eos = _eos_ids(tok)
    pad = int(tok.pad_token_id)
    hidden_size = int(model.config.hidden_size)
    n = len(prompts)
    result = AnsweredBatch(texts=[], token_logprobs=[],
                           features={feature_key(layer, p): np.zeros((n, hidden_size), np.float32)
                                     for layer in layers for p in POOLINGS})
    bar = tqdm(total=n, desc="weak answers + hidden states", unit="ex", disable=not progress)
    old_side = tok.padding_side
    tok.padding_side = "left"
    try:
        for start in range(0, n, batch_size):
            batch = prompts[start : start + batch_size]
            b = len(batch)
            rendered = [render_prompt(tok, m) for m in batch]
            with torch.no_grad():
                split = _shared_prefix(tok, rendered)
                if split is None:
                    ids, mask = _left_pad([tok(r, add_special_tokens=False).input_ids for r in rendered], pad)
                    feeder = _Feeder(model, ids.to(llm.device), mask.to(llm.device))
                else:
                    prefix_ids, suffixes = split
                    pre = model(input_ids=torch.tensor([prefix_ids], device=llm.device), use_cache=True)
                    ids, mask = _left_pad(suffixes, pad)
                    feeder = _Feeder(model, ids.to(llm.device), mask.to(llm.device),
                                     prefix=(pre.past_key_values, len(prefix_ids)))
                gen: list[list[int]] = [[] for _ in range(b)]
                logps: list[list[float]] = [[] for _ in range(b)]
                hsum = {layer: torch.zeros(b, hidden_size) for layer in layers}
                hlast = {layer: torch.zeros(b, hidden_size) for layer in layers}
                count = torch.zeros(b)
                pending = torch.full((b,), -1, dtype=torch.long)

                _pick(feeder.out.logits[:, -1], range(b), gen, logps, pending)
                # Each fed token yields its own hidden states; a row stops after feeding EOS or its
                # max_new_tokens-th token, so every answer token (EOS included) has features.
                while bool((pending >= 0).any()):
                    active = pending >= 0
                    out = feeder.feed(torch.where(active, pending, pad).to(llm.device), active.to(llm.device),
                                      hidden=True)
                    act = active.cpu()
                    for layer in layers:
                        h = out.hidden_states[layer][:, -1].float().cpu()
                        hsum[layer][act] += h[act]
                        hlast[layer][act] = h[act]
                    count += act.float()
                    go_on = [i for i in range(b) if act[i] and gen[i][-1] not in eos and len(gen[i]) < max_new_tokens]
                    pending[:] = -1
                    if go_on:
                        _pick(out.logits[:, -1], go_on, gen, logps, pending)
                for layer in layers:
                    result.features[feature_key(layer, "last")][start : start + b] = hlast[layer].numpy()
                    result.features[feature_key(layer, "mean")][start : start + b] = (
                        hsum[layer] / count.clamp(min=1)[:, None]).numpy()
                texts = [tok.decode(g, skip_special_tokens=True).strip() for g in gen]
                result.texts += texts
                result.token_logprobs += logps
                result.ended += [bool(g) and g[-1] in eos for g in gen]
                if verbalize:
                    verbal = _verbal_confidence(llm, feeder, batch, rendered, texts, gen, eos, verbal_tokens)
                    result.verbal_texts += verbal
                    result.verbal_conf += [parse_confidence(v) if v is not None else None for v in verbal]
            bar.update(b)
    finally:
        tok.padding_side = old_side
        bar.close()
    return result


def _pick(logits, rows, gen: list[list[int]], logps: list[list[float]], pending) -> None:  # noqa: ANN001
    """Greedy next token for `rows`: record it, its log-prob, and mark it pending (to be fed)."""
    import torch

    lp = torch.log_softmax(logits.float(), dim=-1)
    nxt = lp.argmax(-1)
    for i in rows:
        gen[i].append(int(nxt[i]))
        logps[i].append(float(lp[i, nxt[i]]))
        pending[i] = int(nxt[i])


def _verbal_confidence(llm, feeder: _Feeder, batch, rendered, texts, gen, eos, max_tokens: int) -> list[str | None]:  # noqa: ANN001
    """Ask, on the same KV cache, how confident the model is; the follow-up turn is the chat template's
    own rendering of (prompt, answer, question) minus what the cache already holds."""
    import torch

    tok = llm.tokenizer
    b = len(batch)
    conts: list[str | None] = []
    for i in range(b):
        full = render_prompt(tok, [*batch[i], {"role": "assistant", "content": texts[i]},
                                   {"role": "user", "content": VERBAL_QUESTION}])
        held = rendered[i] + tok.decode(gen[i], skip_special_tokens=False)
        if full.startswith(held):
            conts.append(full[len(held) :])
        elif gen[i] and gen[i][-1] in eos and full.startswith(rendered[i] + texts[i]):
            # The cache ends after EOS but the decoded text differs in whitespace: resume after EOS.
            rest = full[len(rendered[i] + texts[i]) :]
            eos_text = tok.decode([gen[i][-1]], skip_special_tokens=False)
            conts.append(rest[len(eos_text) :] if rest.startswith(eos_text) else None)
        else:
            conts.append(None)
    ok = [c is not None for c in conts]
    if not any(ok):
        return [None] * b
    enc = tok([c or "" for c in conts], return_tensors="pt", padding=True, add_special_tokens=False)
    ids = enc.input_ids.to(llm.device)
    active = (enc.attention_mask.bool() & torch.tensor(ok)[:, None]).to(llm.device)
    out = feeder.feed(ids, active)
    replies: list[list[int]] = [[] for _ in range(b)]
    running = torch.tensor(ok)
    for _ in range(max_tokens):
        nxt = out.logits[:, -1].argmax(-1).cpu()
        for i in range(b):
            if running[i]:
                if int(nxt[i]) in eos:
                    running[i] = False
                else:
                    replies[i].append(int(nxt[i]))
        if not bool(running.any()):
            break
        out = feeder.feed(torch.where(running, nxt, int(tok.pad_token_id)).to(llm.device), running.to(llm.device))
    return [tok.decode(r, skip_special_tokens=True).strip() if ok[i] else None for i, r in enumerate(replies)]


def answer_features(llm, prompts: Sequence[Sequence[Message]], answers: Sequence[str], *,  # noqa: ANN001
                    layers: Sequence[int], ended: Sequence[bool] | bool = True, batch_size: int = 8,
                    progress: bool = False) -> tuple[dict[str, np.ndarray], list[list[float]]]:
    """Teacher-forced features of given answers: (features by key, the answers' token log-probs).

    `ended`: whether the answer was finished by the model (then its EOS token is part of the span,
    as in generation)."""
    import torch

    tok, model = llm.tokenizer, llm.model
    n = len(prompts)
    if len(answers) != n:
        raise ValueError(f"{n} prompts but {len(answers)} answers")
    ended_list = [ended] * n if isinstance(ended, bool) else list(ended)
    eos_id = tok.convert_tokens_to_ids("<|im_end|>")
    if not isinstance(eos_id, int) or eos_id == tok.unk_token_id:
        eos_id = int(tok.eos_token_id)
    hidden_size = int(model.config.hidden_size)
    feats = {feature_key(layer, p): np.zeros((n, hidden_size), np.float32) for layer in layers for p in POOLINGS}
    all_lps: list[list[float]] = []
    for start in tqdm(range(0, n, batch_size), desc="teacher-forced features", disable=not progress):
        seqs, spans = [], []
        for i in range(start, min(n, start + batch_size)):
            p_ids = tok(render_prompt(tok, prompts[i]), add_special_tokens=False).input_ids
            a_ids = tok(answers[i], add_special_tokens=False).input_ids + ([eos_id] if ended_list[i] else [])
            if not a_ids:
                raise ValueError(f"answer {i} is empty and not ended: no tokens to read features from")
            seqs.append(p_ids + a_ids)
            spans.append(len(a_ids))
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), int(tok.pad_token_id), dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):  # left padding: every answer ends at the last column
            ids[r, width - len(s) :] = torch.tensor(s)
            mask[r, width - len(s) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            out = model(input_ids=ids.to(llm.device), attention_mask=mask.to(llm.device),
                        position_ids=pos.to(llm.device), output_hidden_states=True)
        lp = torch.log_softmax(out.logits.float(), dim=-1).cpu()
        for r, span in enumerate(spans):
            row = start + r
            targets = ids[r, width - span :]
            all_lps.append([float(lp[r, width - span - 1 + k, targets[k]]) for k in range(span)])
            for layer in layers:
                h = out.hidden_states[layer][r, width - span :].float().cpu()
                feats[feature_key(layer, "last")][row] = h[-1].numpy()
                feats[feature_key(layer, "mean")][row] = h.mean(0).numpy()
    return feats, all_lps


def logprob_baselines(token_logprobs: Sequence[Sequence[float]]) -> dict[str, np.ndarray]:
    """Baseline confidences from the answer's token log-probs, as probabilities in (0, 1]:
    exp(mean log p) (the per-token geometric mean) and exp(min log p)."""
    mean = np.array([np.mean(lp) if len(lp) else 0.0 for lp in token_logprobs], dtype=np.float64)
    low = np.array([np.min(lp) if len(lp) else 0.0 for lp in token_logprobs], dtype=np.float64)
    return {"logprob_mean": np.exp(mean), "logprob_min": np.exp(low)}


def text_features(embedder, prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:  # noqa: ANN001
    """[embed(prompt), embed(answer)] per row (a routerops.models.embeddings.Embedder; vectors L2-normalized)."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    return np.hstack([embed_unique(embedder, prompts), embed_unique(embedder, answers)]).astype(np.float32)


def embed_unique(embedder, texts: Sequence[str]) -> np.ndarray:  # noqa: ANN001
    """Embed each distinct text once (recorded answers repeat a lot: "A", "B", ...)."""
    uniq = list(dict.fromkeys(texts))
    index = {t: i for i, t in enumerate(uniq)}
    vecs = np.asarray(embedder.encode(uniq), dtype=np.float32) if uniq else np.zeros((0, embedder.dim), np.float32)
    return vecs[[index[t] for t in texts]] if len(texts) else vecs
