"""Prometheus metrics on a per-app CollectorRegistry (two apps in one process never collide)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ROUTING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class MonitorSnapshot(Protocol):  # routerops.db.monitor_gauges.MonitorGauges (serving only reads it)
    category_alerts: dict[str, float]
    latest: dict[str, float]
    categories: dict[str, dict[str, float]]
    model_quality: dict[tuple[str, str], float]
    model_quality_count: dict[tuple[str, str], float]


_LATEST_HELP = {
    "routerops_monitor_pgr": "PGR at the live alpha in the latest monitor run (absent when null)",
    "routerops_monitor_baseline_pgr": "Baseline PGR (recorded answers) of the latest monitor run (absent when null)",
    "routerops_monitor_pgr_defined": "1 if the latest monitor run's PGR was defined, 0 if null",
    "routerops_monitor_pgr_tolerance": "PGR drop below baseline tolerated by the latest monitor run",
    "routerops_monitor_strong_share": "Strong-call share at the live alpha in the latest monitor run",
    "routerops_monitor_alpha": "Alpha of the latest monitor run",
    "routerops_monitor_last_run_timestamp_seconds": "When the latest successful monitor run finished (Unix time)",
    "routerops_model_quality_floor": "Measured quality below which a fleet model alerts (ROUTEROPS_MODEL_QUALITY_FLOOR)",
}
_CATEGORY_HELP = {
    "pgr": "PGR of this golden-set category in the latest monitor run (reported categories, absent when null)",
    "baseline_pgr": "Baseline PGR of this category in the latest monitor run (absent when null)",
    "strong_share": "Strong-call share of this category in the latest monitor run",
    "n_labelled": "Labelled traces of this category in the latest monitor run",
}


class MonitorCollector:
    """The latest monitor figures as they were read at the last scrape: a sample exists only for a
    defined figure, and categories of an older run disappear (a Gauge would keep them)."""

    def __init__(self) -> None:
        self.snapshot: MonitorSnapshot | None = None

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        if snap is None:
            return
        for name, value in snap.latest.items():
            family = GaugeMetricFamily(name, _LATEST_HELP.get(name, name))
            family.add_metric([], value)
            yield family
        cat = GaugeMetricFamily("routerops_category_regression_active",
                                "1 while a category_regression alert of this golden-set category is open",
                                labels=["category"])
        for category, value in sorted(snap.category_alerts.items()):
            cat.add_metric([category], value)
        yield cat
        for figure, help_text in _CATEGORY_HELP.items():
            suffix = "labelled_traces" if figure == "n_labelled" else figure
            family = GaugeMetricFamily(f"routerops_category_{suffix}", help_text, labels=["category"])
            for category, value in sorted(snap.categories.get(figure, {}).items()):
                family.add_metric([category], value)
            yield family
        quality = GaugeMetricFamily("routerops_model_measured_quality",
                                    "Measured quality of this fleet model in the latest monitor run: golden "
                                    "(mean quality on the golden replay), exploration (win rate on judged "
                                    "exploration pairs), outcomes (mean graded score); absent when unmeasured",
                                    labels=["model", "source"])
        for (model, source), value in sorted(snap.model_quality.items()):
            quality.add_metric([model, source], value)
        yield quality
        count = GaugeMetricFamily("routerops_model_measured_quality_count",
                                  "Labelled golden answers, judged exploration pairs or graded outcome rows the "
                                  "measured quality of this model is computed on", labels=["model", "source"])
        for (model, source), value in sorted(snap.model_quality_count.items()):
            count.add_metric([model, source], value)
        yield count


class ServingMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("routerops_requests_total", "Chat completions served",
                                ["strategy", "model"], registry=r)
        self.errors = Counter("routerops_request_errors_total", "Requests answered with an error",
                              ["status"], registry=r)
        self.latency = Histogram("routerops_request_latency_seconds", "End-to-end chat completion latency",
                                 ["strategy"], buckets=LATENCY_BUCKETS, registry=r)
        self.routing_latency = Histogram("routerops_routing_latency_seconds",
                                         "Time to decide weak or strong (embedding + router)",
                                         buckets=ROUTING_BUCKETS, registry=r)
        self.routed = Counter("routerops_routed_total", "Routing decisions", ["role"], registry=r)
        self.routing_cache = Counter("routerops_routing_cache_total",
                                     "Routing scores answered from the cache (hit) or by the embedder (miss)",
                                     ["result"], registry=r)
        self.strong_share = Gauge("routerops_strong_call_share",
                                  "Share of routed requests sent to the strong model", registry=r)
        self.alpha = Gauge("routerops_alpha", "Live routing threshold", registry=r)
        self.router_version = Gauge("routerops_router_version_info",
                                    "Live router version (value 1 on the live version's label)",
                                    ["version"], registry=r)
        self.reload_errors = Counter("routerops_router_reload_errors_total", "Failed reload checks", registry=r)
        self.cascade = Counter("routerops_cascade_requests_total", "Cascade requests", ["escalated"], registry=r)
        self.escalation_rate = Gauge("routerops_cascade_escalation_rate", "Share of cascade requests escalated",
                                     registry=r)
        self.spec_acceptance = Histogram("routerops_speculative_acceptance_rate",
                                         "Per-request draft acceptance rate", buckets=[i / 10 for i in range(11)],
                                         registry=r)
        self.spec_acceptance_last = Gauge("routerops_speculative_acceptance_rate_last",
                                          "Acceptance rate of the latest speculative request", registry=r)
        self.alert_active = Gauge("routerops_alert_active",
                                  "1 while a monitoring alert of this kind is open (pgr_regression, category_regression, drift, ...)",
                                  ["kind"], registry=r)
        self.failovers = Counter("routerops_failovers_total",
                                 "Requests served by the other model because this backend was unavailable",
                                 ["backend", "error"], registry=r)
        self.circuit_skips = Counter("routerops_circuit_skips_total",
                                     "Calls that skipped this backend because its circuit was open",
                                     ["backend"], registry=r)
        self.circuit_state = Gauge("routerops_circuit_state",
                                   "Circuit breaker of this backend: 0 closed, 1 half-open, 2 open",
                                   ["backend"], registry=r)
        self.explorations = Counter("routerops_explorations_total",
                                    "Exploration calls (the other model's answer in the background), by outcome: "
                                    "stored, failed (the backend failed), dropped (queue full)",
                                    ["outcome"], registry=r)
        self.exploration_cost = Counter("routerops_exploration_cost_usd_total",
                                        "Dollars spent on exploration calls", registry=r)
        self.stream_errors = Counter("routerops_stream_errors_total",
                                     "Streams ended with an error event after their first token",
                                     ["backend"], registry=r)
        # per fleet model (issue 27): traffic share, cost, latency, predicted quality of the routed answers
        self.model_answers = Counter("routerops_model_answers_total", "Answers served by this model (every strategy)",
                                     ["model"], registry=r)
        self.model_share = Gauge("routerops_model_traffic_share",
                                 "Share of the answers since start served by this model", ["model"], registry=r)
        self.model_cost = Counter("routerops_model_cost_usd_total", "Estimated USD spent on this model's answers",
                                  ["model"], registry=r)
        self.model_latency = Histogram("routerops_model_latency_seconds",
                                       "End-to-end latency of requests this model answered", ["model"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.model_quality = Histogram("routerops_model_predicted_quality",
                                       "The router's predicted P(good answer) for this model when the fleet "
                                       "decision chose it", ["model"], buckets=[i / 10 for i in range(11)], registry=r)
        self._answers: dict[str, float] = {}
        self.monitor = MonitorCollector()
        r.register(self.monitor)
        self.request_log_failures = Counter("routerops_request_log_write_failures_total",
                                            "Request-log writes that failed (the row was buffered)",
                                            ["error"], registry=r)
        self.request_log_buffered = Gauge("routerops_request_log_buffered",
                                          "Request-log rows waiting in memory for the database", registry=r)
        self.request_log_flushed = Counter("routerops_request_log_flushed_total",
                                           "Buffered request-log rows written once the database was back",
                                           registry=r)
        self.request_log_dropped = Counter("routerops_request_log_dropped_total",
                                           "Request-log rows lost: buffer full (oldest dropped), rejected, "
                                           "or an unreadable spill-file line", ["reason"], registry=r)
        self.request_log_spilled = Counter("routerops_request_log_spilled_total",
                                           "Buffered request-log rows written to a spill file at shutdown "
                                           "(database unreachable)", registry=r)
        self.request_log_replayed = Counter("routerops_request_log_replayed_total",
                                            "Spilled request-log rows written to the database at a later start",
                                            registry=r)
        self.feedback_unavailable = Counter("routerops_feedback_unavailable_total",
                                            "Feedback refused with 503 because the database was unreachable",
                                            registry=r)
        self._counts = {"weak": 0, "strong": 0, "cascade": 0, "escalated": 0}
        self._live_version: str | None = None
        self._alert_kinds: set[str] = set()

    def observe_model(self, model: str, seconds: float, cost_usd: float, p_good: float | None = None) -> None:
        self.model_answers.labels(model).inc()
        self.model_cost.labels(model).inc(max(0.0, cost_usd))
        self.model_latency.labels(model).observe(seconds)
        if p_good is not None:
            self.model_quality.labels(model).observe(p_good)
        self._answers[model] = self._answers.get(model, 0.0) + 1
        total = sum(self._answers.values())
        for name, n in self._answers.items():
            self.model_share.labels(name).set(n / total)

    def observe_route(self, role: str, seconds: float, cached: bool | None = None) -> None:
        self.routed.labels(role).inc()
        if cached is not None:
            self.routing_cache.labels("hit" if cached else "miss").inc()
        self.routing_latency.observe(seconds)
        self._counts[role] = self._counts.get(role, 0) + 1
        total = self._counts["weak"] + self._counts["strong"]
        self.strong_share.set(self._counts["strong"] / total if total else 0.0)

    def observe_cascade(self, escalated: bool) -> None:
        self.cascade.labels(str(bool(escalated)).lower()).inc()
        self._counts["cascade"] += 1
        self._counts["escalated"] += int(bool(escalated))
        self.escalation_rate.set(self._counts["escalated"] / self._counts["cascade"])

    def observe_speculative(self, acceptance_rate: float | None) -> None:
        if acceptance_rate is not None:
            self.spec_acceptance.observe(acceptance_rate)
            self.spec_acceptance_last.set(acceptance_rate)

    def set_router(self, version: str | None, alpha: float) -> None:
        label = version or "none"
        if self._live_version is not None and self._live_version != label:
            self.router_version.labels(self._live_version).set(0)
        self.router_version.labels(label).set(1)
        self._live_version = label
        self.alpha.set(alpha)

    def set_alert_gauges(self, gauges: dict[str, float]) -> None:
        kinds = {name.removeprefix("routerops_").removesuffix("_active"): value for name, value in gauges.items()}
        for kind in self._alert_kinds - kinds.keys():  # a kind no longer reported reads 0, never a stale 1
            self.alert_active.labels(kind).set(0.0)
        for kind, value in kinds.items():  # "routerops_<kind>_active" -> label kind=<kind>
            self.alert_active.labels(kind).set(value)
        self._alert_kinds |= kinds.keys()

    def set_monitor(self, snapshot: MonitorSnapshot) -> None:
        self.monitor.snapshot = snapshot

    def render(self) -> bytes:
        return generate_latest(self.registry)
