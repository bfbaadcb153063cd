"""The stream's I/O edge around the pure pipeline: stage batches in the store, keep watermarks in Redis, settle.

Used by the faust worker (`curation.worker`) and by `alignloop curation settle`. Everything here is
synchronous; the worker calls it from an executor thread so the event loop keeps consuming.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from alignloop.core.db import session_scope
from curation import metrics, store
from curation.agreement import drift_alarms
from curation.decode import Accepted, DeadLetter, Rejected, decode_raw
from curation.evidence import Evidence
from curation.items import Item, Key
from curation.pipeline import WindowResult, context_bounds, decision_row, ready_at, settle_window, window_start
from curation.reasons import Reason
from curation.settings import Policy, policy_hash
from curation.tokens import TokenCheck

# Atomic "max" on a hash field: a partition's watermark only moves forward, whoever writes it.
_HMAX = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if (not cur) or tonumber(cur) < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"""


@dataclass(frozen=True)
class Record:
    """One consumed message: its bytes and where it came from."""

    value: bytes
    partition: int
    offset: int
    timestamp: datetime | None = None  # the broker's time: the receiving clock for `occurred_at`


@dataclass
class BatchOutcome:
    """One consumed batch, decoded: what it writes to the store, to Redis and to the side topics, in that order."""

    staged: int = 0
    replayed_ids: int = 0
    rejected: list[tuple[str, bytes]] = field(default_factory=list)  # (event_id, message for .rejected)
    dead: list[bytes] = field(default_factory=list)  # messages for .dlq
    records: int = 0
    items: list[tuple[Item, str]] = field(default_factory=list)  # valid events and where each came from
    rejections: list[dict] = field(default_factory=list)  # drop decisions of refused events
    dead_rows: list[dict] = field(default_factory=list)
    marks: dict[int, float] = field(default_factory=dict)  # partition -> newest event time (epoch seconds)


def received_at(record_time: datetime | None, clock: datetime) -> datetime:
    """The time a record reached the broker, never later than this worker's clock.

    A producer may set a record's timestamp (Kafka CreateTime); one set in the future must not widen the
    skew its event is allowed. A record without a timestamp is judged by the worker's clock.
    """
    return clock if record_time is None else min(record_time, clock)


class CurationEdge:
    def __init__(
        self,
        engine: Engine,
        redis_client,
        policy: Policy,
        *,
        topic: str,
        group: str,
        partitions: int | None = None,
        pseudonym_key: bytes | None = None,
        tokens: TokenCheck | None = None,
    ):
        if pseudonym_key is None:
            from curation.settings import default_pseudonym_key

            pseudonym_key = default_pseudonym_key()
        self.pseudonym_key = pseudonym_key
        self.engine = engine
        self.tokens = tokens or TokenCheck.from_settings()  # the same key and max age as the replay's
        self.redis = redis_client
        self.policy = policy
        self.topic = topic
        self.group = group
        self.partitions = partitions
        self._wm_key = f"curation:{group}:{topic}:watermark"
        self._lock_key = f"curation:{group}:{topic}:settle-lock"
        self._items: dict[Key, Item] = {}
        self._evidence: Evidence | None = None  # this worker's copy; reloaded when another worker settled since
        self._up_rates: list[tuple[datetime, dict]] | None = None  # every settled window's up-rates, for drift
        self.last_staged = time.monotonic()
        self._hmax = redis_client.register_script(_HMAX) if redis_client is not None else None

    # ------------------------------------------------------------- stage
    def handle_batch(self, records: Sequence[Record]) -> BatchOutcome:
        """Decode, redact and store one batch in one transaction; then move the partitions' watermarks."""
        out = self.decode_batch(records)
        self.save_batch(out)
        self.mark_batch(out)
        return out

    def decode_batch(self, records: Sequence[Record], clock: datetime | None = None) -> BatchOutcome:
        """Decode and redact every record (no I/O). An event dated past its record's broker time plus
        `max_future_skew_s` is refused `future_event`, so no partition's watermark leads the broker's time
        by more than that skew."""
        clock = clock or datetime.now(UTC)
        out = BatchOutcome(records=len(records))
        for r in records:
            source = f"{r.partition}:{r.offset}"
            outcome = decode_raw(
                r.value,
                now=received_at(r.timestamp, clock),
                max_future_s=self.policy.max_future_skew_s,
                pseudonym_key=self.pseudonym_key,
                tokens=self.tokens,
            )
            if isinstance(outcome, Accepted):
                out.items.append((outcome.item, source))
                t = outcome.item.occurred_at.timestamp()
                out.marks[r.partition] = max(out.marks.get(r.partition, t), t)
            elif isinstance(outcome, Rejected):
                out.rejections.append({**outcome.decision(), "app_id": outcome.app_id})
                out.rejected.append(
                    (
                        outcome.event_id,
                        json.dumps(
                            {
                                "event_id": outcome.event_id,
                                "reasons": [outcome.reason],
                                "errors": outcome.errors,
                                "event": outcome.redacted,
                                "source": source,
                            }
                        ).encode(),
                    )
                )
            elif isinstance(outcome, DeadLetter):
                out.dead_rows.append({"source": source, "sha256": outcome.sha256, "reason": outcome.reason[:64]})
                out.dead.append(
                    json.dumps(
                        {
                            "source": source,
                            "sha256": outcome.sha256,
                            "reason": outcome.reason,
                            "text": outcome.redacted[:4096],
                        }
                    ).encode()
                )
        return out

    def save_batch(self, out: BatchOutcome) -> None:
        """Stage the batch's events and record its refusals and dead letters in one transaction (idempotent:
        a retry after a failed commit, or a redelivered batch, writes nothing twice)."""
        with session_scope(self.engine) as session:
            staged = store.save_staged(session, out.items)
            store.save_rejections(session, out.rejections, policy_hash(self.policy))
            store.save_dead_letters(session, out.dead_rows)
        out.staged, out.replayed_ids = staged, len(out.items) - staged
        if out.items:
            self.last_staged = time.monotonic()
        metrics.observe_batch(out.records, out.staged, out.replayed_ids, out.rejections, len(out.dead_rows))

    def mark_batch(self, out: BatchOutcome) -> None:
        """Move the partitions' watermarks to the batch's newest event times (after its events are stored)."""
        if self._hmax is not None:  # set exactly when there is a Redis client
            for partition, t in out.marks.items():
                self._hmax(keys=[self._wm_key], args=[partition, f"{t:.6f}"])

    # ------------------------------------------------------------- settle
    def watermark(self) -> datetime | None:
        """The low watermark: the oldest among partitions' newest event times (None until all reported)."""
        if self.redis is None:
            return None
        marks = self.redis.hgetall(self._wm_key)
        if not marks or (self.partitions and len(marks) < self.partitions):
            return None
        return datetime.fromtimestamp(min(float(v) for v in marks.values()), UTC)

    def settle_once(self, *, final: bool = False, wait_s: float = 0) -> list[WindowResult] | None:
        """Settle every window whose context is complete (all of them when `final`); late events get `late_event`.

        Returns the windows settled, or None when another worker held the settle lock for `wait_s` seconds and
        nothing was done here (a caller that must see its settle happen, a final flush, tries again).
        """
        lock = None
        if self.redis is not None:
            lock = self.redis.lock(
                self._lock_key, timeout=30, blocking=wait_s > 0, blocking_timeout=wait_s if wait_s > 0 else None
            )
            if not lock.acquire():
                return None
        try:
            return self._settle(final, lock)
        finally:
            if lock is not None:
                with contextlib.suppress(Exception):  # noqa: BLE001 - expired while we worked; the next settle is idempotent
                    lock.release()

    def outbox(self, limit: int = 500) -> list[tuple[int, str, str]]:
        """Guard drops waiting for `<topic>.rejected`: (id, key, message), oldest first."""
        with session_scope(self.engine) as session:
            return store.load_outbox(session, limit)

    def outbox_sent(self, ids: Sequence[int]) -> None:
        """Forget the outbox rows the broker acknowledged (a crash before this sends them again: at least once)."""
        with session_scope(self.engine) as session:
            store.delete_outbox(session, ids)

    def recurate(self, since: datetime, policy: Policy, *, wait_s: float = 60):
        """Re-decide the stored events from `since` under `policy` (`curation.recurate`) while holding the settle
        lock, so no worker settles meanwhile; None when another worker held the lock for `wait_s` seconds.
        Workers reload the evidence it rebuilt on their next settle; restart them with the new policy file."""
        from curation.recurate import recurate

        lock = None
        if self.redis is not None:
            lock = self.redis.lock(self._lock_key, timeout=3600, blocking=True, blocking_timeout=wait_s)
            if not lock.acquire():
                return None
        try:
            result = recurate(self.engine, policy, since)
            self._evidence, self._items, self._up_rates = None, {}, None
            return result
        finally:
            if lock is not None:
                with contextlib.suppress(Exception):  # noqa: BLE001 - expired while we worked
                    lock.release()

    def _settle(self, final: bool, lock=None) -> list[WindowResult]:
        wm = None if final else self.watermark()
        with session_scope(self.engine) as session:
            span = store.load_unsettled_range(session)
            settled = store.load_settled_windows(session)
        if span is None:
            return []
        results = []
        start, last = window_start(span[0], self.policy), window_start(span[1], self.policy)
        step = timedelta(seconds=self.policy.window_s)
        while start <= last:
            if not final and (wm is None or ready_at(start, self.policy) > wm):
                break
            if start in settled:
                self._decide_late(start)
            else:
                results.append(self._settle_window(start))
            if lock is not None:
                lock.reacquire()  # a long final flush keeps the lock (30 s from each window's end)
            start += step
        self._prune(start)
        return results

    def _context(self, start: datetime) -> list[Item]:
        lo, hi = context_bounds(start, self.policy)
        with session_scope(self.engine) as session:
            ids = store.load_staged_ids(session, lo, hi)
            missing = {i for i in ids if i not in self._items}
            if missing:
                for it in store.load_staged(session, lo, hi, skip=set(self._items)):
                    self._items[it.key] = it
        return [self._items[i] for i in ids if i in self._items]

    def _settle_window(self, start: datetime) -> WindowResult:
        t0 = time.monotonic()
        result = settle_window(self._context(start), start, self.policy, self._load_evidence())
        with session_scope(self.engine) as session:
            store.save_policy(session, self.policy)
            store.save_window(session, result)  # decisions, pairs, re-judged events and evidence: one transaction
        self._evidence = result.evidence
        metrics.observe_window(result, time.monotonic() - t0)
        self._observe_drift(result)
        return result

    def _observe_drift(self, result: WindowResult) -> None:
        """Count a CUSUM alarm on an app's up-rate at this window (`curation_drift_alarms_total`), as the report
        shows it: over every settled window's up-rates, read once and then followed (reread when another worker
        settled windows meanwhile)."""
        with session_scope(self.engine) as session:
            n = store.count_table(session, "windows")
            if self._up_rates is None or len(self._up_rates) + 1 != n:
                self._up_rates = [(w, s.get("up_rate", {})) for w, s, _, _ in store.load_window_signals(session)]
            else:
                self._up_rates.append((result.start, result.signals.get("up_rate", {})))
        if not self._up_rates or self._up_rates[-1][0] != result.start:
            return
        last = len(self._up_rates) - 1
        for app, alarms in drift_alarms([u for _, u in self._up_rates]).items():
            if alarms and alarms[-1] == last:
                metrics.observe_drift(app)

    def _load_evidence(self) -> Evidence:
        with session_scope(self.engine) as session:
            mark = store.load_evidence_mark(session)
            if self._evidence is None or self._evidence.get("meta", "applied") != mark:
                self._evidence = store.load_evidence(session)
        return self._evidence

    def _decide_late(self, start: datetime) -> None:
        end = start + timedelta(seconds=self.policy.window_s)
        with session_scope(self.engine) as session:
            late = store.load_undecided(session, start, end)
            phash = policy_hash(self.policy)
            rows = [decision_row(it, [str(Reason.LATE_EVENT), *list(it.pii)], start, phash) for it in late]
            if rows:
                store.save_window(session, WindowResult(start, rows, [], [], policy_hash=phash))
        metrics.observe_late(rows)

    def _prune(self, next_start: datetime) -> None:
        lo = context_bounds(next_start, self.policy)[0]
        for key in [k for k, it in self._items.items() if it.occurred_at < lo]:
            del self._items[key]


def raw_sha(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()
