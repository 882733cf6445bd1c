"""Alerts: webhook delivery to a real local HTTP receiver (with a failing first attempt), the alerts
table, deduplication until recovery, and the Prometheus gauges."""

from __future__ import annotations

import pytest
from monitoring_helpers import Receiver
from sqlalchemy import select

from routerops.db import session_scope
from routerops.db.models import Alert
from routerops.monitoring.alerts import (
    Condition,
    active_alert_gauges,
    process_conditions,
    send_webhook,
    write_textfile,
)


@pytest.fixture
def receiver():
    with Receiver(fail_first=1) as r:
        yield r


def test_webhook_retries_after_a_failed_first_attempt(receiver):
    payload = {"text": "hello", "blocks": []}
    result = send_webhook(receiver.url, payload, retries=2, backoff_s=0.01)
    assert result.delivered and result.attempts == 2
    assert receiver.attempts == 2 and receiver.received == [payload]


def test_webhook_gives_up_with_the_error_when_unreachable():
    with Receiver() as r:
        url = r.url
    result = send_webhook(url, {"text": "x"}, retries=1, backoff_s=0.01, timeout_s=2)  # server closed
    assert not result.delivered and result.attempts == 2 and "Connect" in (result.error or "")


def test_one_alert_per_regression_until_it_recovers(settings, receiver, monkeypatch):
    monkeypatch.setenv("ROUTEROPS_ALERT_WEBHOOK_URL", receiver.url)
    monkeypatch.setenv("ROUTEROPS_ALERT_WEBHOOK_BACKOFF_S", "0.01")
    from routerops.settings import get_settings

    s = get_settings()
    key = "pgr_regression:golden.jsonl:abcd"

    def step(active: bool | None) -> list[Alert]:
        cond = Condition("pgr_regression", key, active, message="PGR 0.40 < baseline 0.70", payload={"pgr": 0.4})
        with session_scope(s) as session:
            return process_conditions(session, s, [cond], monitor_run_id="r1")

    assert len(step(True)) == 1  # first regression: sent (after one failed attempt)
    assert step(True) == []  # still regressed: nothing new
    assert step(None) == []  # not measurable this run (no labels): the open alert stays open
    with session_scope(s) as session:
        rows = session.scalars(select(Alert)).all()
        assert [(r.status, r.delivered, r.attempts) for r in rows] == [("open", True, 2)]
        assert active_alert_gauges(session)["routerops_pgr_regression_active"] == 1.0
        textfile = write_textfile(session, s)
    assert "routerops_pgr_regression_active 1.0" in textfile.read_text()
    assert len(receiver.received) == 1
    msg = receiver.received[0]
    assert msg["text"].startswith("[routerops] pgr_regression") and msg["blocks"][0]["type"] == "header"

    assert step(False) == []  # recovered: resolved, nothing sent
    with session_scope(s) as session:
        assert session.scalars(select(Alert.status)).all() == ["resolved"]
        assert active_alert_gauges(session)["routerops_pgr_regression_active"] == 0.0
    assert len(step(True)) == 1  # a later regression alerts again
    assert len(receiver.received) == 2


def test_failed_delivery_is_retried_on_the_next_run(settings, monkeypatch):
    from routerops.settings import get_settings

    with Receiver() as r:
        dead_url = r.url
    monkeypatch.setenv("ROUTEROPS_ALERT_WEBHOOK_URL", dead_url)
    monkeypatch.setenv("ROUTEROPS_ALERT_WEBHOOK_RETRIES", "0")
    s = get_settings()
    cond = Condition("drift", "drift:x", True, message="drift in weak_words")
    with session_scope(s) as session:
        (alert,) = process_conditions(session, s, [cond])
        assert not alert.delivered and alert.last_error
    with Receiver() as live:
        s2 = get_settings(alert_webhook_url=live.url)
        with session_scope(s2) as session:
            assert process_conditions(session, s2, [cond]) == []  # no second alert...
            row = session.scalars(select(Alert)).one()
            assert row.delivered  # ...but the undelivered one went out now
        assert len(live.received) == 1


def test_gauges_cover_every_known_kind_and_any_other_kind_once_seen(settings):
    with session_scope(settings) as session:
        gauges = active_alert_gauges(session)
        assert gauges == {"routerops_pgr_regression_active": 0.0, "routerops_category_regression_active": 0.0,
                          "routerops_drift_active": 0.0, "routerops_live_drift_active": 0.0,
                          "routerops_strong_share_shift_active": 0.0}
        # a kind a later release (or a plug-in check) adds: its gauge appears with its first alert
        cond = Condition("latency_slo", "latency_slo:api", True, message="p99 above the SLO")
        process_conditions(session, settings, [cond])
        assert active_alert_gauges(session)["routerops_latency_slo_active"] == 1.0
        process_conditions(session, settings, [Condition("latency_slo", "latency_slo:api", False)])
        assert active_alert_gauges(session)["routerops_latency_slo_active"] == 0.0  # resolved: 0, still there
