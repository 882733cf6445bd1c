"""Exact speculative decoding: greedy equality with the target alone on SmolLM2 for every draft, the
sampled distribution equal to the target's (chi-square, with broken acceptance rules that must be
caught), KV-cache rollback, prompt lookup, adaptive gamma, and the exit-head training job."""

from __future__ import annotations

import json
import math
from collections import Counter
from itertools import product
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.stats import chisquare
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from routerops.serving.speculative import (
    AdaptiveGamma,
    EarlyExitDraft,
    ModelDraft,
    PromptLookupDraft,
    SpeculativeGenerator,
    Verdict,
    Warp,
    best_gamma,
    encode_prompt,
    exact_accept,
    expected_speedup,
)
from routerops.serving.speculative.adaptive import PassCost
from routerops.serving.speculative.drafts import lookup_continuation, lookup_with_match
from routerops.serving.speculative.kv import crop_to, forward_logits
from routerops.serving.speculative.sampling import sample

# --- a tiny model family with a real KV cache, for the statistical tests --------------------------
V = 5  # vocabulary of the toy models; 3 generated tokens -> 125 outcomes


class ToyLM(torch.nn.Module):
    """next-token logits = table[previous token, current token]; the token history lives in a
    DynamicCache (keys = token ids), so a wrong rollback changes the distribution."""

    def __init__(self, seed: int, scale: float = 2.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(V + 1, V, V, generator=g) * scale  # row V: "no previous token"
        self.head = torch.nn.Linear(1, V, bias=False)  # only its shape is read (vocabulary size)

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.head

    def forward(self, input_ids, cache, use_cache=True, logits_to_keep=0):  # noqa: ANN001, ANN201
        start = cache.get_seq_length()
        ids = input_ids.float()[:, None, :, None]
        keys, _ = cache.update(ids, ids, 0)
        history = keys[0, 0, :, 0].long()
        rows = []
        for pos in range(start, start + input_ids.shape[1]):
            prev = int(history[pos - 1]) if pos > 0 else V
            rows.append(self.table[prev, int(history[pos])])
        logits = torch.stack(rows)[None]
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


class ToyTokenizer:
    eos_token_id = None

    def decode(self, ids, skip_special_tokens=True):  # noqa: ANN001, ANN201
        return " ".join(str(i) for i in ids)


def toy_target(seed: int = 1) -> SimpleNamespace:
    return SimpleNamespace(model=ToyLM(seed), tokenizer=ToyTokenizer(), device="cpu")


def exact_distribution(model: ToyLM, prompt: list[int], n: int, warp: Warp) -> dict[tuple[int, ...], float]:
    """P(first n tokens) of the target alone, by enumeration."""
    dist = {}
    for seq in product(range(V), repeat=n):
        prob = 1.0
        for i in range(n):
            logits = forward_logits(model, [*prompt, *seq[:i]], DynamicCache(), "cpu")[-1]
            prob *= float(warp.probs(logits)[seq[i]])
        dist[seq] = prob
    return dist


def chi2_pvalue(samples: list[tuple[int, ...]], dist: dict[tuple[int, ...], float]) -> float:
    """Chi-square goodness of fit, outcomes with expected count < 5 pooled into one cell."""
    n = len(samples)
    counts = Counter(samples)
    assert set(counts) <= {k for k, p in dist.items() if p > 0}, "sampled an outcome the target cannot produce"
    big = [k for k, p in dist.items() if p * n >= 5]
    obs = [counts[k] for k in big]
    exp = [dist[k] * n for k in big]
    rest_exp = n - sum(exp)
    if rest_exp > 1e-9:
        obs.append(n - sum(obs))
        exp.append(rest_exp)
    return float(chisquare(obs, np.asarray(exp) * sum(obs) / sum(exp)).pvalue)


def spec_samples(gen: SpeculativeGenerator, prompt: list[int], warp: Warp, n_samples: int,
                 n_tokens: int = 3) -> list[tuple[int, ...]]:
    out = []
    for seed in range(n_samples):
        res = gen.generate(prompt, n_tokens, warp.temperature, warp.top_p, seed=seed)
        out.append(tuple(res.token_ids))
    return out


def always_accept(p, q, draft, generator):  # noqa: ANN001, ANN201
    """Broken: takes every draft token (output follows the draft)."""
    return Verdict(len(draft), sample(p[len(draft)], generator))


def resample_from_p(p, q, draft, generator):  # noqa: ANN001, ANN201
    """Broken: the right acceptance test, but a rejection resamples from p instead of norm(max(0, p - q))."""
    for i, token in enumerate(draft):
        if float(torch.rand((), generator=generator)) >= min(1.0, float(p[i, token] / q[i, token])):
            return Verdict(i, sample(p[i], generator))
    return Verdict(len(draft), sample(p[len(draft)], generator))


PROMPT = [0, 3, 1]
N_SAMPLES = 4000


@pytest.fixture(autouse=True)
def _one_thread_for_toy_models(request):  # noqa: ANN001, ANN202
    """Tiny tensors: thread wake-ups on a busy machine cost more than the maths (1 ms per softmax)."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("warp", [Warp(1.0, 1.0), Warp(0.8, 0.9)], ids=["t1", "t0.8-topp0.9"])
def test_sampled_tokens_follow_the_target_distribution(warp: Warp) -> None:
    target = toy_target(seed=1)
    draft = ModelDraft(ToyLM(seed=7), name="toy-draft")  # deliberately different from the target
    gen = SpeculativeGenerator(target, draft, gamma=2, adaptive=False)
    dist = exact_distribution(target.model, PROMPT, 3, warp)
    samples = spec_samples(gen, PROMPT, warp, N_SAMPLES)
    assert chi2_pvalue(samples, dist) > 1e-3
    # the draft disagrees often enough that the residual path is exercised
    res = gen.generate(PROMPT, 3, warp.temperature, warp.top_p, seed=0)
    assert res.target_passes >= 1 and res.draft_tokens >= 1


@pytest.mark.parametrize("rule", [always_accept, resample_from_p], ids=["always-accept", "resample-from-p"])
def test_broken_acceptance_rule_is_detected(rule) -> None:  # noqa: ANN001
    warp = Warp(1.0, 1.0)
    target = toy_target(seed=1)
    gen = SpeculativeGenerator(target, ModelDraft(ToyLM(seed=7)), gamma=2, adaptive=False, accept_rule=rule)
    dist = exact_distribution(target.model, PROMPT, 3, warp)
    assert chi2_pvalue(spec_samples(gen, PROMPT, warp, N_SAMPLES), dist) < 1e-6


@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed-gamma", "adaptive"])
def test_prompt_lookup_sampling_is_exact_with_one_hot_q(adaptive: bool) -> None:
    """A deterministic draft: accept x with p(x), else sample p without x. Adaptive: how many of the
    proposal's tokens are verified depends on past rounds and the match length, never on this round's
    target output, so the distribution stays exact."""
    warp = Warp(1.0, 1.0)
    target = toy_target(seed=3)
    prompt = [2, 4, 2, 4, 2, 4, 2]  # n-grams recur, so lookup proposes every round
    gen = SpeculativeGenerator(target, PromptLookupDraft(max_ngram=2), gamma=2, adaptive=adaptive)
    dist = exact_distribution(target.model, prompt, 3, warp)
    samples = spec_samples(gen, prompt, warp, N_SAMPLES)
    assert chi2_pvalue(samples, dist) > 1e-3
    assert gen.generate(prompt, 3, 1.0, seed=0).draft_tokens > 0


def test_exact_accept_residual_by_hand() -> None:
    p = torch.tensor([[0.2, 0.8], [0.5, 0.5]])
    q = torch.tensor([[1.0, 0.0]])
    # draft token 0: accepted with p/q = 0.2; rejection must resample from max(0, p - q) = [0, 0.8] -> token 1
    outcomes = Counter()
    for seed in range(2000):
        v = exact_accept(p, q, [0], torch.Generator().manual_seed(seed))
        outcomes[(v.accepted, v.next_token if v.accepted == 0 else -1)] += 1
    assert set(outcomes) == {(1, -1), (0, 1)}
    assert abs(outcomes[(1, -1)] / 2000 - 0.2) < 0.04


def test_warp_top_p_keeps_the_smallest_nucleus() -> None:
    probs = Warp(1.0, 0.6).probs(torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])))
    assert torch.allclose(probs, torch.tensor([0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0]))
    with pytest.raises(ValueError, match="top_p"):
        Warp(1.0, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        Warp(-1.0)


# --- rollback -------------------------------------------------------------------------------------
def tiny_llama(vocab: int, seed: int, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def test_crop_rolls_the_cache_back_exactly() -> None:
    model = tiny_llama(64, seed=0)
    cache = DynamicCache()
    forward_logits(model, [5, 6, 7, 8, 9, 10, 11, 12], cache, "cpu")
    crop_to(cache, 5)
    assert cache.get_seq_length() == 5
    resumed = forward_logits(model, [20, 21], cache, "cpu")
    fresh = forward_logits(model, [5, 6, 7, 8, 9, 20, 21], DynamicCache(), "cpu")[-2:]
    assert torch.allclose(resumed, fresh, atol=1e-5)
    with pytest.raises(ValueError, match="cannot crop"):
        crop_to(cache, 8)


def test_draft_state_rollback_keeps_only_accepted_tokens() -> None:
    model = tiny_llama(64, seed=0)
    state = ModelDraft(model).start([1, 2, 3], DynamicCache())
    proposal = state.propose([1, 2, 3], 4, Warp(0.0), None)
    assert len(proposal.tokens) == 4
    assert state.cache.get_seq_length() == 3 + 3  # the last proposed token is never fed
    state.commit(3 + 1)  # one draft token accepted
    assert state.cache.get_seq_length() == 4
    again = state.propose([1, 2, 3, proposal.tokens[0], 9], 1, Warp(0.0), None)
    direct = int(forward_logits(model, [1, 2, 3, proposal.tokens[0], 9], DynamicCache(), "cpu")[-1].argmax())
    assert again.tokens == [direct]


def test_self_draft_shares_target_weights_and_matches_layer_k() -> None:
    target = tiny_llama(64, seed=1, layers=4)
    draft = EarlyExitDraft(target, 2)
    assert draft.model.model.layers[0] is target.model.layers[0]
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        hidden = target(input_ids=ids, output_hidden_states=True).hidden_states[2]
        expected = target.lm_head(target.model.norm(hidden))
        assert torch.allclose(draft.model(input_ids=ids).logits, expected, atol=1e-5)
    with pytest.raises(ValueError, match="draft layers"):
        EarlyExitDraft(target, 4)


# --- prompt lookup and adaptive gamma -------------------------------------------------------------
def test_lookup_continuation() -> None:
    assert lookup_continuation([1, 2, 3, 4, 1, 2], 3) == [3, 4, 1]
    assert lookup_continuation([7, 1, 2, 9, 5, 1, 2], 2) == [9, 5]  # longest n-gram (1, 2) wins
    assert lookup_continuation([1, 2, 3, 4, 5], 3) == []
    assert lookup_continuation([1, 2, 8, 1, 2, 9, 1, 2], 1) == [9]  # the latest occurrence


def test_lookup_reports_how_long_its_match_is() -> None:
    # the 3-gram (1, 2, 3) recurs; the token before it differs (5 vs 7): a 3-token match
    assert lookup_with_match([5, 1, 2, 3, 9, 7, 1, 2, 3], 4) == ([9, 7, 1, 2], 3)
    # here the match reaches back past the n-gram: 4 tokens (capped at max_ngram + 1 by default)
    assert lookup_with_match([4, 1, 2, 3, 9, 7, 4, 1, 2, 3], 4) == ([9, 7, 4, 1], 4)
    assert lookup_with_match([8, 4, 1, 2, 3, 9, 8, 4, 1, 2, 3], 2, max_match=6) == ([9, 8], 5)
    assert lookup_with_match([7, 1, 9, 2, 1], 3) == ([9, 2, 1], 1)  # only a unigram recurs
    assert lookup_with_match([1, 2], 2) == ([], 0)


def test_adaptive_gamma_follows_acceptance_and_cost() -> None:
    assert math.isclose(expected_speedup(0.0, 4, 0.0), 1.0)
    assert math.isclose(expected_speedup(0.8, 4, 0.1), (1 - 0.8**5) / (0.2 * 1.4))
    assert best_gamma(0.95, 0.0, 8) == 8
    assert best_gamma(0.1, 0.3, 8) == 1
    ctl = AdaptiveGamma(gamma=4, max_gamma=8)
    for _ in range(10):
        ctl.update(ctl.gamma, ctl.gamma, cost_ratio=0.01)
    assert ctl.gamma == 8
    for _ in range(3):
        ctl.update(ctl.gamma, 0, cost_ratio=0.3)
    assert ctl.gamma == 1
    for _ in range(10):  # a draft that keeps failing at 0.3 target passes a token cannot pay: switched off
        ctl.update(max(ctl.gamma, 1), 0, cost_ratio=0.3)
    assert ctl.gamma == 0
    assert [ctl.next_gamma() for _ in range(2 * ctl.probe_every)] == ([0] * (ctl.probe_every - 1) + [1]) * 2
    for _ in range(6):  # probes that succeed switch it back on
        ctl.update(1, 1, cost_ratio=0.3)
    assert ctl.gamma >= 1 and ctl.next_gamma() == ctl.gamma
    with pytest.raises(ValueError, match="gamma"):
        AdaptiveGamma(gamma=0)


def test_pass_cost_fits_the_marginal_verification_cost() -> None:
    cost = PassCost(decay=1.0)
    assert cost.marginal() == 0.0  # nothing to fit yet
    assert cost.relative(5) == 1.0  # nothing known: the formula's GPU assumption
    for n in (1, 5, 3, 9, 2):
        cost.update(n, 0.1 + 0.02 * (n - 1))
    assert cost.marginal() == pytest.approx(0.2)
    assert cost.relative(9) == pytest.approx(1.0 + 0.2 * 8)  # seen once: still the line
    # a high verification cost pushes gamma down even for a free draft with good acceptance
    assert best_gamma(0.6, 0.0 + cost.marginal(), 8) < best_gamma(0.6, 0.0, 8) == 8


def test_gamma_follows_a_measured_non_monotone_pass_cost() -> None:
    """CPU BLAS kernels make some pass lengths dearer than longer ones (SmolLM2 here: 15 tokens cost
    more than 16). Once a length has been seen, its own mean replaces the line."""
    seconds = {1: 0.036, 2: 0.039, 3: 0.041, 4: 0.057, 15: 0.088, 16: 0.072}
    cost = PassCost(decay=1.0)
    for _ in range(3):
        for n, t in seconds.items():
            cost.update(n, t)
    assert cost.relative(3) == pytest.approx(0.041 / 0.036)
    assert cost.relative(16) == pytest.approx(0.072 / 0.036)
    assert cost.relative(15) > cost.relative(16)
    # near-certain acceptance: 15 draft tokens (a 16-token pass) beat 14 (a dearer 15-token pass)
    assert best_gamma(0.98, 0.0, 15, cost.relative) == 15
    # a middling draft: the cheap 3-token pass wins over the jump at 4
    assert best_gamma(0.5, 0.0, 15, cost.relative) == 2
    # the GPU formula (no pass cost) would have run gamma much higher
    assert best_gamma(0.5, 0.0, 15) > 2


def test_acceptance_is_tracked_separately_inside_a_run() -> None:
    """After a fully accepted proposal the next one is judged by how runs went, not by the rejections
    in between (prompt lookup: copied spans are accepted whole, fresh matches mostly fail)."""
    # (proposed, accepted): four failed fresh matches, one that starts a run, a run, its end
    PATTERN = [(2, 0)] * 4 + [(2, 2), (4, 4), (4, 4), (4, 4), (8, 3)]  # noqa: N806
    ctl = AdaptiveGamma(gamma=2, max_gamma=8)
    gammas: dict[bool, list[int]] = {False: [], True: []}
    for _ in range(6):
        for proposed, accepted in PATTERN:
            gamma = ctl.update(proposed, accepted, cost_ratio=0.05)
            gammas[ctl._in_run].append(gamma)  # the gamma chosen for a round in that state
    assert ctl._in_run is False and ctl.acceptance < 0.5
    after_rejection = ctl.acceptance
    ctl.update(2, 2, cost_ratio=0.05)  # a whole proposal accepted: now inside a run
    assert ctl._in_run is True and ctl.acceptance > 0.85
    assert min(gammas[True][-4:]) > max(gammas[False][-5:])
    # one pooled estimate sits between the two, wrong for both states
    pooled = AdaptiveGamma(gamma=2, max_gamma=8)
    pooled._counts[True] = pooled._counts[False]
    pooled._in_run = False
    for _ in range(6):
        for proposed, accepted in PATTERN:
            pooled._in_run = False
            pooled.update(proposed, accepted, cost_ratio=0.05)
    assert after_rejection < pooled.acceptance < ctl.acceptance


def test_free_proposals_are_cut_by_their_evidence() -> None:
    """Long lookup matches keep being right, one-token matches mostly not: after learning that, the
    controller verifies many tokens of a long-match proposal and few of a short-match one."""
    ctl = AdaptiveGamma(gamma=4, max_gamma=8)
    relative = {1: 1.0, 2: 1.05, 3: 1.1, 4: 1.5, 5: 1.5, 6: 1.6, 7: 1.7, 8: 1.8, 9: 1.85}.__getitem__
    for _ in range(8):
        ctl.update(4, 0, 0.0, relative, evidence=1)
        ctl.update(8, 8, 0.0, relative, evidence=4)
    assert ctl.acceptance_for(("evidence", 1)) < 0.1 < 0.9 < ctl.acceptance_for(("evidence", 4))
    assert ctl.gamma_for(4, 8, relative) == 8
    assert ctl.gamma_for(1, 8, relative) == 1
    assert ctl.gamma_for(4, 1, relative) == 1  # never more than the proposal has
    assert ctl.gamma_for(4, 3, relative) == 2  # 3 tokens for 1.1 passes beat 4 for 1.5
    assert ctl.gamma_for(2, 8, relative) == ctl.gamma_for(None, 8, relative)  # unseen level: the prior
    fixed = AdaptiveGamma(gamma=2, max_gamma=8, enabled=False)
    assert fixed.gamma_for(4, 8, relative) == 2 and fixed.gamma_for(4, 1, relative) == 1


# --- SmolLM2: greedy output identical to the target alone, for every draft ------------------------
PROMPTS = [
    "Repeat this sentence exactly: The quick brown fox jumps over the lazy dog near the river bank.",
    "Summarize in one sentence: The city council voted on Monday to extend the bike lane on Main Street "
    "by two miles. The extension will connect the university campus to the central train station.",
]
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def smollm2():  # noqa: ANN201
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from routerops.local_models import LLMSpec, load_llm

    loaded = load_llm(LLMSpec.resolve("smollm2-135m-instruct"))
    refs = []
    for prompt in PROMPTS:
        ids = encode_prompt(loaded.tokenizer, prompt)
        with torch.inference_mode():
            out = loaded.model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False)
        refs.append((ids, out[0, len(ids):].tolist()))
    return loaded, refs


def _assert_greedy_identical(gen: SpeculativeGenerator, refs) -> list:  # noqa: ANN001
    results = []
    for ids, ref in refs:
        stream = gen.stream(ids, NEW_TOKENS)
        text = "".join(stream)
        res = stream.result
        assert res.token_ids == ref, f"{gen.draft.name} diverged from the target alone"
        assert text == res.text
        assert res.target_passes <= len(ref)
        results.append(res)
    return results


@pytest.mark.slow
def test_greedy_prompt_lookup_is_identical_and_saves_passes(smollm2) -> None:  # noqa: ANN001
    loaded, refs = smollm2
    results = _assert_greedy_identical(SpeculativeGenerator(loaded, PromptLookupDraft()), refs)
    # the "repeat" prompt is pure copying: many tokens per target pass
    assert results[0].tokens_per_target_pass > 2.0
    assert results[0].acceptance_rate > 0.5


@pytest.mark.slow
def test_greedy_self_draft_is_identical(smollm2) -> None:  # noqa: ANN001
    loaded, refs = smollm2
    # one prompt per draft keeps the module's time modest; every prompt is covered by some draft
    (res,) = _assert_greedy_identical(SpeculativeGenerator(loaded, EarlyExitDraft(loaded.model, 10), gamma=3),
                                      refs[1:])
    # 10 of 30 layers without a head: the target rejects nearly every token, so the controller switches
    # the draft off (plain decoding) and only probes it now and then
    assert res.acceptance_rate < 0.2
    assert res.draft_rounds <= res.target_passes // 3


@pytest.mark.slow
def test_greedy_small_model_draft_is_identical(smollm2) -> None:  # noqa: ANN001
    """The 'smaller model sharing the tokenizer' draft: a tiny random Llama with SmolLM2's vocabulary."""
    loaded, refs = smollm2
    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    draft = ModelDraft(tiny_llama(vocab, seed=3), name="tiny-llama")
    results = _assert_greedy_identical(SpeculativeGenerator(loaded, draft, gamma=2, adaptive=True), refs[:1])
    assert all(r.draft_tokens > 0 for r in results)


@pytest.mark.slow
def test_exit_head_training_job_and_self_draft_with_head(smollm2, settings, shared_data) -> None:  # noqa: ANN001
    from routerops.models.exit_head import default_head_path
    from routerops.orchestration.cli import cli
    from routerops.serving.speculative import build_from_settings

    loaded, refs = smollm2
    result = CliRunner().invoke(cli, ["train", "exit-head", "--layers", "10", "--texts", "5", "--max-tokens", "48",
                                      "--epochs", "2", "--rank", "32", "--shared-data", str(shared_data)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["kl_after"] < report["kl_before"]  # held-out KL to the target falls
    path = default_head_path(settings.data_dir, "smollm2-135m-instruct", 10)
    assert path.is_file() and report["path"] == str(path)

    import mlflow

    runs = mlflow.search_runs(experiment_names=[settings.mlflow_experiment])
    assert len(runs) == 1 and runs["metrics.kl_after"][0] == pytest.approx(report["kl_after"])

    # serving picks the trained head up from the data dir, and stays exact
    gen = build_from_settings(settings.model_copy(update={"speculative_draft": "self",
                                                          "speculative_draft_layers": 10}))
    assert gen.draft.name == "self:10+head"
    _assert_greedy_identical(gen, refs[:1])


def test_bad_settings_are_named(settings) -> None:  # noqa: ANN001
    from routerops.serving.speculative import build_draft

    with pytest.raises(ValueError, match="SPECULATIVE_DRAFT_MODEL"):
        build_draft(settings.model_copy(update={"speculative_draft": "model"}), toy_target())
    with pytest.raises(ValueError, match="empty prompt"):
        encode_prompt(ToyTokenizer(), [])
