"""Speculative decoding vs plain decoding vs transformers' assisted generation, SmolLM2-135M on CPU.

    python benchmarks/bench_speculative.py [--prompts 5] [--new-tokens 64] [--layers 10]
        [--exit-head PATH] [--draft-model PATH_OR_ID] [--threads N]

All greedy (temperature 0), in one process, after a warm-up. Every method must return exactly the
plain loop's tokens (checked and printed). Ratios are tokens/s over the plain cached loop's tokens/s.
The formula column is (1 - a^(g+1)) / ((1 - a)(g c + 1)) with the measured acceptance a, mean gamma g
and draft cost ratio c (one draft step / one target verification pass, timed inside the runs).

Prompt set: document-editing requests whose answers reuse the input text (rewrite, fix, extract,
summarise, convert), the case where prompt lookup pays; see PROMPTS.

Ceiling: on a CPU, verifying n tokens costs r(n) one-token passes (measured here, per n). With the
reference outputs known, a dynamic programme finds the cheapest way any gamma policy could have used
the prompt-lookup draft (propose exactly what will be accepted, or fewer where r makes that cheaper):
the best speedup prompt lookup can give on these prompts on this machine, whatever the policy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import DynamicCache  # noqa: E402

from routerops.serving.speculative import (  # noqa: E402
    EarlyExitDraft,
    ModelDraft,
    PromptLookupDraft,
    SpeculativeGenerator,
    encode_prompt,
    expected_speedup,
)
from routerops.serving.speculative.decoder import eos_ids  # noqa: E402

PROMPTS = [
    "Fix the spelling mistakes in this paragraph and return the corrected paragraph: The comittee met on "
    "Tuesday to discus the new budjet. Members agred that the librery needs more funding for childrens books "
    "and that the park should get new benchs before the summer.",
    "Rewrite the following email so that it is more polite, keeping all the details: Send me the quarterly "
    "sales report for the north region by Friday. I also need the list of new customers from March and the "
    "invoice numbers for the three late payments.",
    "Extract every sentence that mentions the river from this text: The town sits in a quiet valley. The river "
    "floods the lower streets every spring. Farmers grow wheat on the hills. Children swim in the river in "
    "July. The old mill was built next to the river in 1850.",
    "Summarize the following text in two sentences: The Regional Transport Authority reported that bus "
    "ridership grew by 14 percent last year. The Regional Transport Authority said the growth came from new "
    "night routes and lower fares for students. The Regional Transport Authority plans to add ten electric "
    "buses next year.",
    "Convert this list into a numbered list, one item per line: apples, oranges, whole wheat bread, "
    "unsalted butter, free range eggs, fresh spinach, greek yogurt, brown rice, olive oil, black pepper.",
]


@dataclass
class Row:
    name: str
    seconds: float = 0.0
    tokens: int = 0
    identical: bool = True
    spec: list = field(default_factory=list)  # SpecResults
    outputs: list = field(default_factory=list)
    per_prompt_s: list = field(default_factory=list)
    note: str = ""


def plain_loop(model: torch.nn.Module, ids: list[int], new_tokens: int, stop: set[int]) -> list[int]:
    """Target alone: prefill, then one cached forward per token, argmax."""
    cache = DynamicCache()
    out: list[int] = []
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True, logits_to_keep=1).logits
        while True:
            token = int(logits[0, -1].argmax())
            out.append(token)
            if token in stop or len(out) >= new_tokens:
                return out
            logits = model(input_ids=torch.tensor([[token]]), cache=cache, use_cache=True).logits


def hf_generate(model: torch.nn.Module, ids: list[int], new_tokens: int, **kwargs) -> list[int]:  # noqa: ANN003
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False, **kwargs)
    return out[0, len(ids):].tolist()


def pass_cost_curve(model: torch.nn.Module, ids: list[int], max_n: int, reps: int = 5) -> dict[int, float]:
    """Seconds of one target pass over n new tokens after `ids`, n = 1..max_n (best of 2 sweeps of
    per-n medians, so a busy moment does not bend the curve)."""
    from routerops.serving.speculative.kv import crop_to, forward_logits

    cache = DynamicCache()
    forward_logits(model, ids, cache, "cpu", last_only=True)
    fresh = list(range(1000, 1000 + max_n))
    best: dict[int, float] = {}
    for _ in range(2):
        for k in range(1, max_n + 1):
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                forward_logits(model, fresh[:k], cache, "cpu", last_only=k == 1)
                times.append(time.perf_counter() - t0)
                crop_to(cache, len(ids))
            best[k] = min(best.get(k, float("inf")), statistics.median(times))
    return best


def lookup_ceiling(prompts: list[list[int]], refs: list[list[int]], curve: dict[int, float], max_gamma: int,
                   max_ngram: int) -> tuple[float, float]:
    """(speedup, tokens per pass) of the best possible gamma choices for prompt lookup, knowing the output.

    best[p] = min over g of r(g + 1) + best[p + min(g, acc(p)) + 1], acc(p) = how many of the lookup's
    proposal at position p the greedy output confirms. Loop overhead and lookup time are left out."""
    from routerops.serving.speculative.drafts import lookup_continuation

    base = cost = passes = 0.0
    for ids, ref in zip(prompts, refs, strict=True):
        n = len(ref)
        acc = []
        for p in range(n):
            proposal = lookup_continuation(ids + ref[:p], max_gamma, max_ngram)
            k = 0
            while k < len(proposal) and p + k < n and proposal[k] == ref[p + k]:
                k += 1
            acc.append((len(proposal), k))
        best = [0.0] * (n + 1)
        npass = [0] * (n + 1)
        for p in range(n - 1, -1, -1):
            options = []
            for g in range(0, min(acc[p][0], n - p - 1) + 1):
                nxt = p + min(g, acc[p][1]) + 1
                options.append((curve[g + 1] + best[nxt], npass[nxt] + 1))
            best[p], npass[p] = min(options)
        base += n * curve[1]
        cost += best[0]
        passes += npass[0]
    return base / cost, sum(map(len, refs)) / passes


def run(name: str, fn: Callable[[list[int], int], object], prompts: list[list[int]], n: int,
        refs: list[list[int]] | None) -> Row:
    row = Row(name)
    fn(prompts[0], 8)  # warm-up (allocations, kernel selection, lazy init)
    for i, ids in enumerate(prompts):
        t0 = time.perf_counter()
        res = fn(ids, n)
        row.per_prompt_s.append(time.perf_counter() - t0)
        row.seconds += row.per_prompt_s[-1]
        tokens = res.token_ids if hasattr(res, "token_ids") else res
        if hasattr(res, "token_ids"):
            row.spec.append(res)
        row.outputs.append(tokens)
        row.tokens += len(tokens)
        if refs is not None and tokens != refs[i]:
            row.identical = False
    print(f"  {name}: {row.tokens / row.seconds:.2f} tok/s", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--layers", type=int, default=10, help="self-draft depth")
    parser.add_argument("--gamma", type=int, default=4, help="starting gamma")
    parser.add_argument("--max-gamma", type=int, default=8)
    parser.add_argument("--exit-head", default=None, help="trained head (routerops train exit-head)")
    parser.add_argument("--draft-model", default=None, help="a smaller LM with SmolLM2's tokenizer")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-hf-assisted", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from routerops.local_models import LLMSpec, load_llm
    from routerops.models.exit_head import default_head_path, load_head
    from routerops.settings import get_settings

    loaded = load_llm(LLMSpec.resolve("smollm2-135m-instruct"))
    model, tok = loaded.model, loaded.tokenizer
    stop = eos_ids(model, tok)
    prompts = [encode_prompt(tok, p) for p in PROMPTS[: args.prompts]]
    n = args.new_tokens
    print(f"SmolLM2-135M-Instruct, CPU, {torch.get_num_threads()} threads, {len(prompts)} prompts x {n} new "
          f"tokens, greedy, gamma={args.gamma} (adaptive, max {args.max_gamma}), self-draft {args.layers}/30 layers")

    rows: list[Row] = []
    base = run("target only: plain cached loop", lambda ids, k: plain_loop(model, ids, k, stop), prompts, n, None)
    refs = base.outputs  # the reference every other method must reproduce token for token
    rows.append(base)
    rows.append(run("target only: model.generate", lambda ids, k: hf_generate(model, ids, k), prompts, n, refs))

    def spec(draft, gamma=args.gamma):  # noqa: ANN001, ANN202
        gen = SpeculativeGenerator(loaded, draft, gamma=gamma, adaptive=True, max_gamma=args.max_gamma)
        return lambda ids, k: gen.generate(ids, k)

    drafts = [PromptLookupDraft(3), EarlyExitDraft(model, args.layers)]
    head_path = args.exit_head or default_head_path(get_settings().data_dir, "smollm2-135m-instruct", args.layers)
    head = None
    if os.path.isfile(head_path):
        head, layers = load_head(head_path, model.config.hidden_size)
        drafts.append(EarlyExitDraft(model, layers, exit_head=head))
    else:
        print(f"(no exit head at {head_path}: train one with `routerops train exit-head --layers {args.layers}`)")
    if args.draft_model:
        drafts.append(ModelDraft.load(args.draft_model, model.get_output_embeddings().weight.shape[0]))
    for draft in drafts:
        rows.append(run(f"speculative: {draft.name}", spec(draft), prompts, n, refs))

    rows.append(run("transformers: prompt_lookup_num_tokens=8",
                    lambda ids, k: hf_generate(model, ids, k, prompt_lookup_num_tokens=8, max_matching_ngram_size=3),
                    prompts, n, refs))
    if not args.skip_hf_assisted:
        for draft in drafts[1:]:
            try:
                rows.append(run(f"transformers: assistant_model={draft.name}",
                                lambda ids, k, d=draft: hf_generate(model, ids, k, assistant_model=d.model),
                                prompts, n, refs))
            except Exception as exc:  # noqa: BLE001 - report which path transformers refuses, keep going
                rows.append(Row(f"transformers: assistant_model={draft.name}", note=f"failed: {exc}"[:80]))

    max_gamma = args.max_gamma
    curve = pass_cost_curve(model, prompts[0], max_gamma + 1)
    one = curve[1]
    print(f"\ntarget pass cost r(n) = time(n tokens) / time(1 token), n = 1..{max_gamma + 1}: "
          + " ".join(f"{curve[k] / one:.2f}" for k in sorted(curve)))
    ceiling, ceiling_tpp = lookup_ceiling(prompts, refs, curve, max_gamma, 3)
    print(f"prompt-lookup ceiling (best gamma per round, knowing the output; gamma <= {max_gamma}): "
          f"{ceiling:.2f}x at {ceiling_tpp:.2f} tokens/pass")
    free_verify, _ = lookup_ceiling(prompts, refs, {k: 1.0 for k in curve}, max_gamma, 3)
    print(f"  the same if verifying n tokens cost one pass (a GPU's regime): {free_verify:.2f}x")

    base_tps = base.tokens / base.seconds
    lookup_row = next(r for r in rows if r.name.startswith("speculative: prompt-lookup"))
    print("\nper prompt, prompt lookup vs target only:")
    for i, res in enumerate(lookup_row.spec):
        ratio = base.per_prompt_s[i] / lookup_row.per_prompt_s[i]
        print(f"  prompt {i + 1}: {res.completion_tokens:3d} tokens  ratio {ratio:5.2f}  a {res.acceptance_rate:4.2f}  "
              f"tok/pass {res.tokens_per_target_pass:4.2f}  ({PROMPTS[i][:50]}...)")
    print(f"\n{'method':44s} {'tok/s':>6s} {'ratio':>6s} {'same':>5s} {'a':>5s} {'acc/rd':>6s} {'tok/pass':>8s} "
          f"{'g':>4s} {'c':>5s} {'formula':>7s} {'v':>5s} {'f(c+v)':>6s}")
    for row in rows:
        if not row.tokens:
            print(f"{row.name:44s} {row.note}")
            continue
        tps = row.tokens / row.seconds
        line = f"{row.name:44s} {tps:6.2f} {tps / base_tps:6.2f} {'yes' if row.identical else 'NO':>5s}"
        if row.spec:
            accepted = sum(r.accepted_tokens for r in row.spec)
            checked = sum(r.checked_tokens for r in row.spec)
            rounds_d = sum(r.draft_rounds for r in row.spec)
            a = accepted / checked if checked else 0.0
            acc_rd = accepted / rounds_d if rounds_d else 0.0
            passes = sum(r.target_passes for r in row.spec)
            g = sum(r.draft_tokens for r in row.spec) / rounds_d if rounds_d else 0.0
            c = statistics.median(r.draft_cost_ratio for r in row.spec)
            v = row.spec[-1].verify_cost_per_token
            line += (f" {a:5.2f} {acc_rd:6.2f} {row.tokens / passes:8.2f} {g:4.1f} {c:5.2f} "
                     f"{expected_speedup(a, g, c) if g else 1.0:7.2f} {v:5.2f} "
                     f"{expected_speedup(a, g, c + v) if g else 1.0:6.2f}")
        print(line)
    print("\na: acceptance rate (accepted / checked draft tokens); acc/rd: accepted draft tokens per round with a "
          "proposal;\ntok/pass: generated tokens per target pass; g: mean gamma; c: draft step / target pass time; "
          "formula: (1-a^(g+1))/((1-a)(gc+1));\nv: extra target-pass cost per extra verified token (fitted); "
          "f(c+v): the formula with c+v, i.e. counting that verifying g+1 tokens is not free on a CPU.")


if __name__ == "__main__":
    main()
