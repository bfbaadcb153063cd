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
SETTLE = Histogram("curation_settle_seconds", "Time to settle one window")
LATE = Counter("curation_late_events_total", "Events that arrived after their window was settled")
TOKENS = Counter("curation_feedback_tokens_total", "Decided events by feedback token status (none: no token)",
                 ["status"])


def observe_batch(consumed: int, staged: int, replayed: int, rejected: int, dead: int, items) -> None:
    EVENTS.labels("staged").inc(staged)
    EVENTS.labels("duplicate_event_id").inc(replayed)
    EVENTS.labels("rejected").inc(rejected)
    EVENTS.labels("dead_letter").inc(dead)
    if rejected:
        REASONS.labels("contract").inc(rejected)


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


def observe_late(rows) -> None:
    LATE.inc(len(rows))
    for d in rows:
        DECISIONS.labels(d["app_id"] or "", d["decision"]).inc()
