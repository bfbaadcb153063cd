"""Prometheus metrics of the curation stage: counts by outcome and reason, keep rate per app, agreement, drift."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("curation_events_total", "Consumed events by outcome", ["outcome"])
DECISIONS = Counter("curation_decisions_total", "Decisions by app and decision", ["app_id", "decision"])
REASONS = Counter("curation_reasons_total", "Reason codes on decisions", ["reason"])
PAIRS = Counter("curation_pairs_total", "Preference pairs built", ["dimension"])
UNPAIRED = Counter("curation_unpaired_total", "Unpaired (KTO) examples built", ["dimension"])
KEEP_RATE = Gauge("curation_keep_rate", "Share of an app's events kept in the last settled window", ["app_id"])
ALPHA = Gauge("curation_krippendorff_alpha", "Krippendorff's alpha (nominal) of kept votes in the last window")
UP_RATE = Gauge("curation_up_rate", "Share of kept ratings that are up in the last settled window", ["app_id"])
DRIFT = Counter("curation_drift_alarms_total", "CUSUM alarms on an app's up-rate", ["app_id"])
GUARD_DROPS_SENT = Counter("curation_guard_drops_sent_total", "Guard drops sent to the .rejected topic")
SETTLE = Histogram("curation_settle_seconds", "Time to settle one window")
LATE = Counter("curation_late_events_total", "Events that arrived after their window was settled")
TOKENS = Counter(
    "curation_feedback_tokens_total", "Decided events by feedback token status (none: no token)", ["status"]
)


HEALTHY = Gauge(
    "curation_worker_healthy",
    "1 while every dependency of the worker answers, 0 while one is "
    "retried (consumed events then wait, unacknowledged)",
)
DEPENDENCY_UP = Gauge(
    "curation_dependency_up", "Whether the worker's last call to a dependency succeeded", ["dependency"]
)
RETRIES = Counter("curation_dependency_retries_total", "Failed calls to a dependency, each retried", ["dependency"])


def observe_batch(consumed: int, staged: int, replayed: int, rejections: list[dict], dead: int) -> None:
    EVENTS.labels("staged").inc(staged)
    EVENTS.labels("duplicate_event_id").inc(replayed)
    EVENTS.labels("rejected").inc(len(rejections))
    EVENTS.labels("dead_letter").inc(dead)
    for d in rejections:
        reason = d["reasons"][0]
        REASONS.labels("contract" if reason.startswith("contract_") else reason).inc()


def observe_dependency(name: str, up: bool, healthy: bool) -> None:
    DEPENDENCY_UP.labels(name).set(1 if up else 0)
    HEALTHY.set(1 if healthy else 0)
    if not up:
        RETRIES.labels(name).inc()


def observe_window(result, seconds: float) -> None:
    SETTLE.observe(seconds)
    per_app: dict[str, list[int]] = {}
    for d in result.decisions:
        DECISIONS.labels(d["app_id"] or "", d["decision"]).inc()
        for r in d["reasons"]:
            REASONS.labels(r).inc()
        TOKENS.labels(d.get("token_status") or "none").inc()
        kept = per_app.setdefault(d["app_id"] or "", [0, 0])
        kept[0] += d["decision"] != "drop"
        kept[1] += 1
    for app, (k, n) in per_app.items():
        KEEP_RATE.labels(app).set(k / n if n else 0.0)
    for p in result.pairs:
        PAIRS.labels(p.dimension).inc()
    for u in result.unpaired:
        UNPAIRED.labels(u.dimension).inc()
    alpha = result.signals.get("alpha")
    if alpha is not None:
        ALPHA.set(alpha)
    for app, (ups, n) in result.signals.get("up_rate", {}).items():
        if n:
            UP_RATE.labels(app).set(ups / n)


def observe_drift(app_id: str) -> None:
    DRIFT.labels(app_id or "").inc()


def observe_late(rows) -> None:
    LATE.inc(len(rows))
    for d in rows:
        DECISIONS.labels(d["app_id"] or "", d["decision"]).inc()
