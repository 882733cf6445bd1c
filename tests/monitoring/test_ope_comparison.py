"""OPE in the comparison a person approves on: real routers in a real MLflow registry, logged routed
traffic with judged exploration pairs in a real database, `routerops ope compare VERSION`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from routerops import registry
from routerops.db import session_scope
from routerops.db.models import ExplorationPair, PreferenceLog, RequestLog
from routerops.text import prompt_hash

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "router" / "prefs.jsonl"
WEAK, STRONG = "mixtral-8x7b-instruct-v0.1", "gpt-4-1106-preview"


@pytest.mark.slow
def test_compare_shows_ips_and_dr_for_challenger_and_champion(settings, monkeypatch) -> None:  # noqa: ANN001
    from routerops.monitoring.golden import score_prompts
    from routerops.orchestration.cli import cli
    from routerops.settings import get_settings
    from routerops.training.train_router import train_router

    for k, v in {"ROUTER_WEAK_NAME": WEAK, "ROUTER_STRONG_NAME": STRONG, "OPE_MIN_PAIRS": "10",
                 "OPE_BOOTSTRAP": "200", "GOLDEN_SET": str(settings.data_dir / "none.jsonl")}.items():
        monkeypatch.setenv(f"ROUTEROPS_{k}", v)
    s = get_settings()
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    with session_scope(s) as session:
        for r in rows:
            session.add(PreferenceLog(prompt=r["prompt"], prompt_hash=prompt_hash(r["prompt"]), model_a=r["model_a"],
                                      model_b=r["model_b"], winner=r["winner"], soft_label=r.get("soft_label"),
                                      source="fixture"))
    v1 = train_router(s, max_iter=60, progress=False, seed=0)
    registry.approve(s.router_model_name, v1.model_version, approved_by="test", settings=s)
    v2 = train_router(s, max_iter=60, progress=False, seed=1)
    champion = registry.version_by_alias(s.router_model_name, registry.CHAMPION, s)
    from routerops.models.router import load_router

    pair_rows = [r for r in rows if {r["model_a"], r["model_b"]} == {WEAK, STRONG}]
    p = score_prompts(load_router(champion.uri, s), [r["prompt"] for r in pair_rows], s)
    with session_scope(s) as session:  # the champion's routed traffic; every other request explored and judged
        for i, (r, score) in enumerate(zip(pair_rows, p, strict=True)):
            role = "strong" if score >= 0.5 else "weak"
            rid = f"req{i:029d}"
            session.add(RequestLog(id=rid, prompt_hash=prompt_hash(r["prompt"]), prompt=r["prompt"], strategy="router",
                                   model_requested="router", model_chosen=role, p_strong_wins=float(score), alpha=0.5,
                                   extra={"role": role, "propensity": 1.0, "explore_propensity": 0.5,
                                          "explored": i % 2 == 0}))
            if i % 2 == 0:
                strong_won = (r["winner"] == "a") == (r["model_a"] == STRONG) if r["winner"] != "tie" else None
                session.add(ExplorationPair(request_id=rid, prompt=r["prompt"], prompt_hash=prompt_hash(r["prompt"]),
                                            served_role=role, weak_model=WEAK, strong_model=STRONG,
                                            explore_propensity=0.5, status="judged", cost_usd=0.0,
                                            winner="tie" if strong_won is None else "strong" if strong_won else "weak"))
    result = CliRunner().invoke(cli, ["ope", "compare", v2.model_version, "--json"])
    assert result.exit_code == 0, result.output
    cmp = json.loads(result.output)
    assert set(cmp["ope"]) == {"challenger", "champion"}
    for role, est in cmp["ope"].items():
        assert est["n_requests"] == len(pair_rows) and est["n_pairs"] == (len(pair_rows) + 1) // 2, role
        for kind in ("pgr_ips", "pgr_dr"):
            e = est[kind]
            assert e["value"] is not None and e["lo"] <= e["value"] <= e["hi"], (role, kind, e)
    tags = registry.client(s).get_model_version(s.router_model_name, v2.model_version).tags
    ch = cmp["ope"]["challenger"]
    assert float(tags["cmp.ope_pgr_dr"]) == pytest.approx(ch["pgr_dr"]["value"], abs=1e-4)
    assert float(tags["cmp.ope_pgr_ips_lo_champion"]) == pytest.approx(cmp["ope"]["champion"]["pgr_ips"]["lo"], abs=1e-4)
    assert float(tags["cmp.ope_strong_share"]) == pytest.approx(ch["strong_share"], abs=1e-4)
    text = CliRunner().invoke(cli, ["ope", "compare", v2.model_version]).output
    assert "Off-policy evaluation on logged live traffic" in text and "| challenger |" in text
