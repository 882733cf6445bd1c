"""Challenger vs champion after a retrain: figures as version tags and a markdown summary in the run.

Both routers are scored on (1) the golden set (its recorded outputs and labels) and (2) a held-out
slice of the preference logs: the newest `promotion_holdout_rows` judgements of the configured pair.
For each: APGR (area under the PGR curve) and PGR at the live alpha. The comparison goes on the
challenger version as `cmp.*` tags and as `promotion/comparison.md` in its training run. Nothing is
promoted: a person moves `champion` (MLflow UI alias, or `routerops approve VERSION`).

Off-policy evaluation (issue 24): both routers, each at its alpha, evaluated on the logged live routed
traffic of the last `ope_window_hours` with its judged exploration pairs (IPS and doubly robust PGR
with bootstrap intervals, and the strong share): `cmp.ope_*` tags and a table in the summary.

Honest caveat, written into the summary: the newest logs may have been part of the challenger's
training data (it trains on everything stored); the golden set never is unless imported as logs.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from routerops import metrics, ope, registry
from routerops.alpha import live_alpha
from routerops.db import session_scope
from routerops.db.models import PreferenceLog
from routerops.models.router import load_router
from routerops.monitoring.exploration import LoggedTraffic, load_traffic
from routerops.monitoring.golden import load_golden, score_prompts
from routerops.monitoring.quality import gold_match
from routerops.settings import Settings

log = logging.getLogger(__name__)

MARGIN = 0.01  # APGR differences below this are "similar"


@dataclass
class EvalSlice:
    name: str
    prompts: list[str]
    weak_q: np.ndarray
    strong_q: np.ndarray


@dataclass
class Comparison:
    challenger_version: str
    champion_version: str | None
    alpha: float
    results: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)  # slice->role->metric
    verdict: str = "no-champion"
    notes: list[str] = field(default_factory=list)
    # role -> {held-out source | "mean" | "min": APGR}, from each version's training run (`--loso`)
    loso: dict[str, dict[str, float]] = field(default_factory=dict)
    alphas: dict[str, float] = field(default_factory=dict)  # role -> the alpha it was scored at
    # role -> off-policy figures on logged live traffic (routerops/ope.py PolicyEstimate.to_dict())
    ope: dict[str, dict[str, Any]] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        t = {"cmp.champion_version": self.champion_version or "none", "cmp.verdict": self.verdict,
             "cmp.alpha": f"{self.alpha:.4f}"}
        for sl, roles in self.results.items():
            for role, vals in roles.items():
                for metric, value in vals.items():
                    if value is not None:
                        suffix = "" if role == "challenger" else "_champion"
                        t[f"cmp.{metric}_{sl}{suffix}"] = f"{value:.4f}"
        for role, vals in self.loso.items():
            suffix = "" if role == "challenger" else "_champion"
            for key, value in vals.items():
                t[f"cmp.loso_apgr_{key}{suffix}"] = f"{value:.4f}"
        for role, est in self.ope.items():
            suffix = "" if role == "challenger" else "_champion"
            t[f"cmp.ope_strong_share{suffix}"] = f"{est['strong_share']:.4f}"
            t[f"cmp.ope_n_pairs{suffix}"] = str(est["n_pairs"])
            for kind in ("ips", "dr"):
                for part, value in (("", est[f"pgr_{kind}"]["value"]), ("_lo", est[f"pgr_{kind}"]["lo"]),
                                    ("_hi", est[f"pgr_{kind}"]["hi"])):
                    if value is not None:
                        t[f"cmp.ope_pgr_{kind}{part}{suffix}"] = f"{value:.4f}"
        return t

    def markdown(self) -> str:
        lines = [f"# Challenger v{self.challenger_version} vs champion "
                 f"{'v' + self.champion_version if self.champion_version else '(none)'}", "",
                 f"Live alpha: {self.alpha:.4f}. Verdict: **{self.verdict}** (nothing is promoted automatically; "
                 "approve with `routerops approve VERSION` or the MLflow UI alias).", "",
                 "| slice | n | metric | challenger | champion |", "|---|---|---|---|---|"]
        for sl, roles in self.results.items():
            n = roles.get("challenger", {}).get("n")
            for metric in ("apgr", "pgr_live_alpha", "strong_share"):
                ch = roles.get("challenger", {}).get(metric)
                cp = roles.get("champion", {}).get(metric)
                lines.append(f"| {sl} | {int(n) if n else '-'} | {metric} | {_fmt(ch)} | {_fmt(cp)} |")
        if self.loso:
            lines += ["", "Leave-one-source-out APGR (from each version's training run; random 0.5):", "",
                      "| held-out source | challenger | champion |", "|---|---|---|"]
            keys = sorted(set().union(*(v.keys() for v in self.loso.values())) - {"mean", "min"}) + ["mean", "min"]
            for key in keys:
                lines.append(f"| {key} | {_fmt(self.loso.get('challenger', {}).get(key))} | "
                             f"{_fmt(self.loso.get('champion', {}).get(key))} |")
        if self.ope:
            any_est = next(iter(self.ope.values()))
            lines += ["", f"Off-policy evaluation on logged live traffic ({any_est['n_requests']} routed requests, "
                      f"{any_est['n_pairs']} judged exploration pairs; PGR with 95% bootstrap interval; "
                      "IPS = inverse propensity, DR = doubly robust):", "",
                      "| router | strong share | PGR (IPS) | PGR (DR) |", "|---|---|---|---|"]
            for role, est in self.ope.items():
                lines.append(f"| {role} | {est['strong_share']:.4f} | {_ci(est['pgr_ips'])} | {_ci(est['pgr_dr'])} |")
        if self.alphas:
            lines += ["", "Each router is scored at its own live alpha: "
                      + ", ".join(f"{role} {a:.4f}" for role, a in self.alphas.items())]
        if not self.ope:  # the notes say why (no or too few judged exploration pairs yet)
            lines += ["", "Off-policy evaluation (OPE): not available yet (see the notes)."]
        if self.notes:
            lines += ["", *[f"- {n}" for n in self.notes]]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"challenger_version": self.challenger_version, "champion_version": self.champion_version,
                "alpha": self.alpha, "alphas": self.alphas, "results": self.results, "loso": self.loso,
                "verdict": self.verdict, "notes": self.notes, "ope": self.ope}


def comparison_plot(cmp: Comparison, path: Path) -> None:
    """APGR per evaluation slice and leave-one-source-out APGR per held-out source, challenger beside
    champion (random routing = 0.5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels: list[str] = []
    values: dict[str, list[float]] = {"challenger": [], "champion": []}
    for sl, roles in cmp.results.items():
        labels.append(f"{sl} (APGR)")
        for role in values:
            values[role].append(np.nan if roles.get(role, {}).get("apgr") is None else roles[role]["apgr"])
    keys = sorted(set().union(*(v.keys() for v in cmp.loso.values())) - {"mean", "min"}) + ["mean"] if cmp.loso else []
    for key in keys:
        labels.append(f"LOSO {key}")
        for role in values:
            values[role].append(cmp.loso.get(role, {}).get(key, np.nan))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(labels) + 2), 4))
    x = np.arange(len(labels))
    ax.bar(x - 0.2, values["challenger"], 0.4, label=f"challenger v{cmp.challenger_version}")
    ax.bar(x + 0.2, values["champion"], 0.4, alpha=0.6,
           label=f"champion v{cmp.champion_version}" if cmp.champion_version else "champion (none)")
    ax.axhline(0.5, color="grey", linestyle="--", label="random")
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("APGR")
    ax.set_title(f"Challenger vs champion: {cmp.verdict}")
    ax.legend(fontsize=8)
    if not labels:
        ax.text(0.5, 0.5, "nothing to compare on (see the description's notes)", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def loso_metrics(client, run_id: str) -> dict[str, float]:  # noqa: ANN001
    """{held-out source, "mean", "min": APGR} logged by `train router --loso`."""
    metrics = client.get_run(run_id).data.metrics
    return {k.removeprefix("loso_apgr_"): float(v) for k, v in metrics.items() if k.startswith("loso_apgr_")}


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _ci(est: dict[str, float | None]) -> str:
    return f"{_fmt(est['value'])} [{_fmt(est['lo'])}, {_fmt(est['hi'])}]"


def ope_compare(settings: Settings, routers: dict[str, Any], alphas: dict[str, float],
                traffic: LoggedTraffic | None = None, seed: int = 0) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Off-policy figures of each router (at its alpha) on the window's logged routed traffic: IPS and
    DR PGR with CIs and the strong share (routerops/ope.py). Returns ({role: figures}, notes)."""
    if traffic is None:
        since = datetime.now(UTC) - timedelta(hours=settings.ope_window_hours)
        traffic = load_traffic(settings, since)
    keep = np.asarray([p is not None for p in traffic.prompts], dtype=bool)
    if not keep.any() or not traffic.observed[keep].any():
        return {}, [f"no judged exploration pairs in the last {settings.ope_window_hours:g} h of routed traffic: "
                    "no off-policy evaluation (ROUTEROPS_EXPLORE_SHARE, a judge or feedback provide them)"]
    n_pairs = int(traffic.observed[keep].sum())
    if n_pairs < settings.ope_min_pairs:
        return {}, [f"only {n_pairs} judged exploration pairs in the last {settings.ope_window_hours:g} h (fewer than "
                    f"ROUTEROPS_OPE_MIN_PAIRS={settings.ope_min_pairs}): no off-policy evaluation yet"]
    prompts = [p for p, k in zip(traffic.prompts, keep, strict=True) if k]
    obs, d, q, p_logged = traffic.observed[keep], traffic.d[keep], traffic.q[keep], traffic.p_logged[keep]
    out: dict[str, dict[str, Any]] = {}
    notes = []
    for role, router in routers.items():
        if router is None:
            continue
        try:
            scores = score_prompts(router, prompts, settings)
        except KeyError as exc:
            notes.append(f"{role} cannot score the logged traffic: {exc}")
            continue
        est = ope.evaluate_policy(scores >= alphas[role], obs, d, q, feature=p_logged,
                                  n_boot=settings.ope_bootstrap, confidence=settings.ope_confidence, seed=seed)
        out[role] = est.to_dict()
    return out, notes


def golden_slice(settings: Settings) -> EvalSlice | None:
    if not settings.golden_set.is_file():
        return None
    traces = load_golden(settings.golden_set)
    wq, sq = [], []
    for t in traces:
        if t.label.gold_answer is not None:
            wq.append(gold_match(t.weak.output, t.label.gold_answer))
            sq.append(gold_match(t.strong.output, t.label.gold_answer))
        else:
            wq.append(t.label.p_weak_wins)
            sq.append(1.0 - t.label.p_weak_wins)
    return EvalSlice("golden", [t.prompt for t in traces], np.asarray(wq), np.asarray(sq))


def holdout_slice(settings: Settings, router) -> EvalSlice | None:  # noqa: ANN001
    """The newest judgements between the configured strong and weak models (any spelling)."""

    strong, weak = router.pair(settings.strong_router_name, settings.weak_router_name)
    prompts, wq = [], []
    with session_scope(settings) as s:
        rows = s.execute(select(PreferenceLog.prompt, PreferenceLog.model_a, PreferenceLog.model_b,
                                PreferenceLog.winner, PreferenceLog.soft_label)
                         .order_by(PreferenceLog.id.desc()).limit(20 * settings.promotion_holdout_rows))
        for prompt, a, b, winner, soft in rows:
            try:
                ra, rb = router.resolve(a), router.resolve(b)
            except KeyError:
                continue
            if {ra, rb} != {strong, weak}:
                continue
            p_a = soft if soft is not None else {"a": 1.0, "b": 0.0, "tie": 0.5}.get(winner, 0.5)
            wq.append(p_a if ra == weak else 1.0 - p_a)
            prompts.append(prompt)
            if len(prompts) >= settings.promotion_holdout_rows:
                break
    if not prompts:
        return None
    w = np.asarray(wq, dtype=np.float64)
    return EvalSlice("holdout", prompts, w, 1.0 - w)


def _evaluate(router, sl: EvalSlice, settings: Settings, alpha: float) -> dict[str, float | None]:  # noqa: ANN001
    scores = score_prompts(router, sl.prompts, settings)
    q_router, share = metrics.routed_quality(scores, sl.weak_q, sl.strong_q, alpha)
    try:
        apgr = metrics.apgr(scores, sl.weak_q, sl.strong_q)
        pgr = metrics.pgr(q_router, float(sl.weak_q.mean()), float(sl.strong_q.mean()))
    except ValueError:  # no quality gap on this slice
        apgr = pgr = None
    return {"n": float(len(sl.prompts)), "apgr": apgr, "pgr_live_alpha": pgr, "strong_share": share}


def compare_challenger(settings: Settings, challenger_version: str | int) -> dict[str, Any]:
    """Score challenger and champion, tag the challenger version, log the summary; returns the dict."""

    name = settings.router_model_name
    client = registry.client(settings)
    mv = client.get_model_version(name, str(challenger_version))
    challenger = load_router(f"models:/{name}/{mv.version}", settings)
    champ_live = registry.version_by_alias(name, registry.CHAMPION, settings)
    champion = load_router(champ_live.uri, settings) if champ_live is not None else None
    routers = {"challenger": challenger, "champion": champion}
    with session_scope(settings) as s:
        # each router at the alpha it would serve with: scores of two routers sit on their own scales
        alphas = {role: live_alpha(s, settings, r).alpha for role, r in routers.items() if r is not None}
    cmp = Comparison(str(mv.version), champ_live.version if champ_live else None,
                     alphas.get("champion", alphas["challenger"]), alphas=alphas)
    for role, version in (("challenger", mv), ("champion", champ_live)):
        if version is not None and version.run_id:
            loso = loso_metrics(client, version.run_id)
            if loso:
                cmp.loso[role] = loso
    if "challenger" not in cmp.loso:
        cmp.notes.append("the challenger's training run has no leave-one-source-out table (train with --loso)")
    slices = [golden_slice(settings), holdout_slice(settings, challenger)]
    if slices[0] is None:
        cmp.notes.append(f"golden set {settings.golden_set} not found: compared on the logs only")
    if slices[1] is None:
        cmp.notes.append("no logged judgements of the configured pair: no holdout comparison")
    else:
        cmp.notes.append("holdout = newest logged judgements of the pair; they may overlap the challenger's "
                         "training data")
    for sl in (x for x in slices if x is not None):
        cmp.results[sl.name] = {}
        for role, router in routers.items():
            if router is None:
                continue
            try:
                cmp.results[sl.name][role] = _evaluate(router, sl, settings, alphas[role])
            except KeyError as exc:  # this router does not know the configured pair
                cmp.notes.append(f"{role} cannot score {sl.name}: {exc}")
    try:
        cmp.ope, ope_notes = ope_compare(settings, routers, alphas)
        cmp.notes += ope_notes
    except Exception as exc:  # noqa: BLE001 - OPE is one more figure; the comparison stands without it
        log.warning("off-policy evaluation failed: %s", exc)
        cmp.notes.append(f"off-policy evaluation failed: {type(exc).__name__}: {str(exc)[:200]}")
    if champion is not None:
        deltas = [r["challenger"]["apgr"] - r["champion"]["apgr"] for r in cmp.results.values()
                  if r.get("challenger", {}).get("apgr") is not None and r.get("champion", {}).get("apgr") is not None]
        if not deltas:
            cmp.verdict = "not-comparable"
        elif min(deltas) > -MARGIN and float(np.mean(deltas)) > MARGIN:
            cmp.verdict = "challenger-better"
        elif max(deltas) < MARGIN and float(np.mean(deltas)) < -MARGIN:
            cmp.verdict = "champion-better"
        else:
            cmp.verdict = "similar"
    for key, value in cmp.tags().items():
        client.set_model_version_tag(name, str(mv.version), key, value)
    # where a person approves: the version page shows its description as markdown, in full
    client.update_model_version(name, str(mv.version), description=cmp.markdown())
    if mv.run_id:
        client.log_text(mv.run_id, cmp.markdown(), "promotion/comparison.md")
        client.log_dict(mv.run_id, cmp.to_dict(), "promotion/comparison.json")
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / "comparison.png"
            comparison_plot(cmp, png)
            client.log_artifact(mv.run_id, str(png), "promotion")
    log.info("challenger v%s vs champion %s: %s", mv.version, cmp.champion_version, cmp.verdict)
    return cmp.to_dict()
