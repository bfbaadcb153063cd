"""Curation's tables and their edge functions: staged events, decisions, pairs, unpaired examples, windows.

Every write is an insert that ignores rows already there (unique keys: (app_id, event_id), pair_id, example_id,
window start, dead-letter source), so a redelivered batch or a second worker changes nothing. Functions
take a Session and never commit: the caller's edge owns the transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, cast, overload

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    bindparam,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from curation.evidence import Evidence
from curation.items import Item, Key
from curation.pairs import Pair, Unpaired
from curation.pii import redact_json
from curation.pipeline import WindowResult


class Base(DeclarativeBase):
    pass


class StagedEvent(Base):
    """A valid event after PII redaction, waiting for (or done with) its window's settle."""

    __tablename__ = "curation_events"
    # event ids are unique per app (a producer re-sends one on retry), not across apps
    app_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    record: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(64))
    staged_at: Mapped[datetime] = mapped_column(DateTime)


class DecisionRow(Base):
    __tablename__ = "curation_decisions"
    app_id: Mapped[str] = mapped_column(String(64), primary_key=True)  # "" for a refused event with no readable app
    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    decision: Mapped[str] = mapped_column(String(8), index=True)
    reasons: Mapped[str] = mapped_column(Text)
    kind: Mapped[str | None] = mapped_column(String(16))
    user_id: Mapped[str | None] = mapped_column(String(128))
    adapter_version: Mapped[str | None] = mapped_column(String(256), index=True)
    rating: Mapped[str | None] = mapped_column(String(8))
    occurred_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)
    window_start: Mapped[datetime | None] = mapped_column(DateTime)
    decided_at: Mapped[datetime] = mapped_column(DateTime)
    # the feedback token (curation_0003_feedback_token): "verified", a token_* reason, or NULL (no token);
    # the rest is what the token signed, set only when it verified (verified_version NULL then = the base model)
    token_status: Mapped[str | None] = mapped_column(String(16))
    verified_version: Mapped[str | None] = mapped_column(String(256))
    verified_base_model: Mapped[str | None] = mapped_column(String(512))
    served_at: Mapped[datetime | None] = mapped_column(DateTime)
    response_id: Mapped[str | None] = mapped_column(String(256))
    policy_hash: Mapped[str | None] = mapped_column(String(64))  # the policy that decided (curation_policy)


class PairRow(Base):
    __tablename__ = "curation_pairs"
    pair_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    prompt: Mapped[str] = mapped_column(Text)
    chosen: Mapped[str] = mapped_column(Text)
    rejected: Mapped[str] = mapped_column(Text)
    weight: Mapped[float] = mapped_column(Float)
    dimension: Mapped[str] = mapped_column(String(16))
    event_ids: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    window_start: Mapped[datetime] = mapped_column(DateTime)
    # retired (never deleted) when an event it was built from is dropped later: by a window's re-judgement
    # ("retract") or a recuration (its id); the read API and snapshots leave retired rows out
    retired_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)
    retired_by: Mapped[str | None] = mapped_column(String(64))


class UnpairedRow(Base):
    __tablename__ = "curation_unpaired"
    example_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    prompt: Mapped[str] = mapped_column(Text)
    completion: Mapped[str] = mapped_column(Text)
    label: Mapped[bool] = mapped_column(Boolean)
    weight: Mapped[float] = mapped_column(Float)
    dimension: Mapped[str] = mapped_column(String(16))
    event_ids: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    window_start: Mapped[datetime] = mapped_column(DateTime)
    # retired (never deleted) when an event it was built from is dropped later: by a window's re-judgement
    # ("retract") or a recuration (its id); the read API and snapshots leave retired rows out
    retired_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)
    retired_by: Mapped[str | None] = mapped_column(String(64))


class WindowRow(Base):
    __tablename__ = "curation_windows"
    window_start: Mapped[datetime] = mapped_column(DateTime, primary_key=True)
    settled_at: Mapped[datetime] = mapped_column(DateTime)
    events: Mapped[int] = mapped_column(Integer)
    kept: Mapped[int] = mapped_column(Integer)
    signals: Mapped[str] = mapped_column(Text)
    policy_hash: Mapped[str | None] = mapped_column(String(64))


class EvidenceRow(Base):
    """One record of the evidence kept across windows (curation/evidence.py): a JSON value under (section, key)."""

    __tablename__ = "curation_evidence"
    section: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String(1024), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class PolicyRow(Base):
    """Every policy that decided something, by content hash: what a recorded `policy_hash` meant."""

    __tablename__ = "curation_policies"
    policy_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)
    first_used_at: Mapped[datetime] = mapped_column(DateTime)


class DecisionHistoryRow(Base):
    """A decision a recuration superseded, as it was (the current one stays in `curation_decisions`)."""

    __tablename__ = "curation_decision_history"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    app_id: Mapped[str] = mapped_column(String(64), index=False)
    event_id: Mapped[str] = mapped_column(String(36))
    decision: Mapped[str] = mapped_column(String(8))
    reasons: Mapped[str] = mapped_column(Text)
    policy_hash: Mapped[str | None] = mapped_column(String(64))
    window_start: Mapped[datetime | None] = mapped_column(DateTime)
    decided_at: Mapped[datetime] = mapped_column(DateTime)
    superseded_at: Mapped[datetime] = mapped_column(DateTime)
    superseded_by: Mapped[str] = mapped_column(String(32))
    __table_args__ = (Index("ix_curation_decision_history_key", "app_id", "event_id"),)


class RecurationRow(Base):
    __tablename__ = "curation_recurations"
    recuration_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime] = mapped_column(DateTime)
    since: Mapped[datetime] = mapped_column(DateTime)
    policy_hash: Mapped[str] = mapped_column(String(64))
    summary: Mapped[str] = mapped_column(Text)


class OutboxRow(Base):
    """A guard drop waiting to go to `<topic>.rejected` (written with the decision, sent and deleted by a worker)."""

    __tablename__ = "curation_outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(128))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class DeadLetterRow(Base):
    __tablename__ = "curation_dead_letters"
    source: Mapped[str] = mapped_column(String(64), primary_key=True)  # topic:partition:offset or line:N
    sha256: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(64))
    stored_at: Mapped[datetime] = mapped_column(DateTime)


_KEY = ["app_id", "event_id"]  # the idempotency key of staged events and decisions


def naive(t: datetime) -> datetime:
    """Stored times are naive UTC (SQLite keeps no zone); aware times are converted first."""
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t


@overload
def aware(t: datetime) -> datetime: ...
@overload
def aware(t: datetime | None) -> datetime | None: ...
def aware(t: datetime | None) -> datetime | None:
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


def _now() -> datetime:
    return naive(datetime.now(UTC))


def _table(model: type[Base]) -> Table:
    """A mapped class's table (SQLAlchemy types `__table__` as the FromClause base)."""
    return cast(Table, model.__table__)


def _insert_ignore(session: Session, model, rows: Sequence[dict], keys: list[str]) -> int:
    return len(_insert_new(session, model, rows, keys))


def _insert_new(session: Session, model, rows: Sequence[dict], keys: list[str]) -> list[tuple]:
    """Insert the rows whose keys are not there yet; returns the keys of the rows inserted."""
    if not rows:
        return []
    dialect = session.get_bind().dialect.name
    insert: Callable[..., Any]  # each dialect's own INSERT, for its ON CONFLICT clause
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - the store is SQLite or PostgreSQL
        raise NotImplementedError(dialect)
    table = model.__table__
    stmt = insert(table).on_conflict_do_nothing(index_elements=keys).returning(*(table.c[k] for k in keys))
    # Core, not the ORM bulk path: RETURNING tells which rows were new (the rest were already there)
    return [tuple(r) for r in session.connection().execute(stmt, list(rows)).all()]


# ------------------------------------------------------------------ writes
def save_staged(session: Session, items: Iterable[tuple[Item, str]]) -> int:
    """Stage redacted items (with where each came from); an (app_id, event_id) staged before is left as it was."""
    now = _now()
    rows: dict[Key, dict] = {}
    for item, source in items:
        rows.setdefault(
            item.key,
            {
                "app_id": item.app_id,
                "event_id": item.event_id,
                "occurred_at": naive(item.occurred_at),
                "record": json.dumps(item.to_record(), ensure_ascii=False),
                "source": source,
                "staged_at": now,
            },
        )
    return _insert_ignore(session, StagedEvent, list(rows.values()), _KEY)


def save_rejections(session: Session, decisions: Iterable[dict], policy_hash: str | None = None) -> int:
    now = _now()
    rows: dict[Key, dict] = {}
    for d in decisions:
        app = d.get("app_id") or ""
        rows.setdefault(
            (app, d["event_id"]),
            {
                "event_id": d["event_id"],
                "decision": d["decision"],
                "reasons": json.dumps(d["reasons"]),
                "kind": None,
                "app_id": app,
                "user_id": None,
                "adapter_version": None,
                "rating": None,
                "occurred_at": None,
                "window_start": None,
                "decided_at": now,
                "policy_hash": policy_hash,
            },
        )
    return _insert_ignore(session, DecisionRow, list(rows.values()), _KEY)


def queue_rejected(session: Session, drops: Sequence[dict], stage: str) -> int:
    """Put guard drops in the outbox for `<topic>.rejected` (keyed by event id): each with its reasons and its
    staged record (texts redacted and ids pseudonymised at staging) and `stage` (settle, rejudged, recurated);
    every string of the message is redacted again, as a refused event's are, so nothing a PII pattern matches
    (an id or a time can) leaves. Drops without an app are looked up
    by event id in every app, as re-judgements name them."""
    if not drops:
        return 0
    by_id: dict[str, list[tuple[str, str]]] = {}
    ids = sorted({d["event_id"] for d in drops})
    for chunk in range(0, len(ids), 500):
        for app, eid, record in session.execute(
            select(StagedEvent.app_id, StagedEvent.event_id, StagedEvent.record).where(
                StagedEvent.event_id.in_(ids[chunk : chunk + 500])
            )
        ):
            by_id.setdefault(eid, []).append((app, record))
    now, rows = _now(), []
    for d in drops:
        for app, record in by_id.get(d["event_id"], []):
            if d.get("app_id") not in (None, app):
                continue
            w = d.get("window_start")
            message = {
                "event_id": d["event_id"],
                "app_id": app,
                "reasons": list(d["reasons"]),
                "stage": stage,
                "window_start": aware(naive(w)).isoformat() if w is not None else None,
                "policy_hash": d.get("policy_hash"),
                "event": json.loads(record),
            }
            rows.append(
                {
                    "key": d["event_id"],
                    "created_at": now,
                    "message": json.dumps(redact_json(message)[0], ensure_ascii=False),
                }
            )
    if rows:
        session.connection().execute(_table(OutboxRow).insert(), rows)
    return len(rows)


def load_outbox(session: Session, limit: int = 500) -> list[tuple[int, str, str]]:
    """The oldest guard drops waiting for `.rejected`: (id, key, message)."""
    return [
        (i, k, m)
        for i, k, m in session.execute(
            select(OutboxRow.id, OutboxRow.key, OutboxRow.message).order_by(OutboxRow.id).limit(limit)
        )
    ]


def delete_outbox(session: Session, ids: Sequence[int]) -> None:
    session.execute(delete(OutboxRow).where(OutboxRow.id.in_(list(ids))))


def save_dead_letters(session: Session, rows: Iterable[dict]) -> int:
    now = _now()
    out = {r["source"]: {**r, "stored_at": now} for r in rows}
    return _insert_ignore(session, DeadLetterRow, list(out.values()), ["source"])


def save_window(session: Session, result: WindowResult) -> None:
    """The decisions, pairs and unpaired examples of one settled window, and the window's own row."""
    now = _now()
    start = naive(result.start)
    new = set(
        _insert_new(
            session,
            DecisionRow,
            [
                {
                    **d,
                    "reasons": json.dumps(d["reasons"]),
                    "occurred_at": naive(d["occurred_at"]),
                    "window_start": start,
                    "served_at": naive(d["served_at"]) if d.get("served_at") else None,
                    "decided_at": now,
                }
                for d in result.decisions
            ],
            _KEY,
        )
    )
    queue_rejected(
        session,
        [d for d in result.decisions if d["decision"] == "drop" and (d["app_id"], d["event_id"]) in new],
        "settle",
    )
    _insert_ignore(session, PairRow, [_pair_row(p, start) for p in result.pairs], ["pair_id"])
    _insert_ignore(session, UnpairedRow, [_unpaired_row(u, start) for u in result.unpaired], ["example_id"])
    _insert_ignore(
        session,
        WindowRow,
        [
            {
                "window_start": start,
                "settled_at": now,
                "events": len(result.decisions),
                "kept": sum(d["decision"] != "drop" for d in result.decisions),
                "signals": json.dumps(result.signals, default=str),
                "policy_hash": result.policy_hash,
            }
        ],
        ["window_start"],
    )
    if result.retract or result.retract_accounts:
        save_retractions(session, result.retract, result.retract_accounts, result.policy_hash)
    if result.changes is not None:
        save_evidence(session, result.changes.rows)


def save_retractions(
    session: Session, retract: dict[str, str], accounts: dict[str, str] | None = None, policy_hash: str | None = None
) -> int:
    """Earlier events re-judged: kept decisions become drops with the new reason; the pairs and unpaired
    examples built from them are retired (the replay drops them in `pipeline.apply_retractions`): events
    named one by one first, then every kept event of the accounts named."""
    cols = (DecisionRow.event_id, DecisionRow.reasons, DecisionRow.window_start)
    ids = sorted(retract)
    rows = []
    for chunk in range(0, len(ids), 500):
        rows += [
            (e, r, w, retract[e])
            for e, r, w in session.execute(
                select(*cols).where(DecisionRow.event_id.in_(ids[chunk : chunk + 500]), DecisionRow.decision != "drop")
            )
        ]
    named = {e for e, *_ in rows}
    accounts = accounts or {}
    users = sorted(accounts)
    for chunk in range(0, len(users), 500):
        rows += [
            (e, r, w, accounts[u])
            for e, r, w, u in session.execute(
                select(*cols, DecisionRow.user_id)
                .where(DecisionRow.user_id.in_(users[chunk : chunk + 500]), DecisionRow.decision != "drop")
                .order_by(DecisionRow.event_id)
            )
            if e not in named and u is not None
        ]
    if not rows:
        return 0
    for eid, reasons, _, reason in rows:
        session.execute(
            update(DecisionRow)
            .where(DecisionRow.event_id == eid)
            .values(decision="drop", reasons=json.dumps([*json.loads(reasons), reason]), policy_hash=policy_hash)
        )
    gone = {eid for eid, *_ in rows}
    since = min(w for _, _, w, _ in rows if w is not None)
    queue_rejected(
        session,
        [
            {"event_id": e, "reasons": [*json.loads(r), reason], "window_start": w, "policy_hash": policy_hash}
            for e, r, w, reason in rows
        ],
        "rejudged",
    )
    # the rows that can hold these events were built in their windows or later
    retire_built_from(session, gone, since, "retract")
    return len(gone)


def retire_built_from(session: Session, event_ids: set[str], since: datetime | None, by: str) -> int:
    """Retire the live pairs and unpaired examples (window_start >= since) built from any of `event_ids`."""
    n = 0
    now = _now()
    for model, key in ((PairRow, PairRow.pair_id), (UnpairedRow, UnpairedRow.example_id)):
        q = select(key, model.event_ids).where(model.retired_at.is_(None))
        if since is not None:
            q = q.where(model.window_start >= since)
        hit = [k for k, ids_json in session.execute(q) if event_ids.intersection(json.loads(ids_json))]
        for chunk in range(0, len(hit), 500):
            session.execute(
                update(model).where(key.in_(hit[chunk : chunk + 500])).values(retired_at=now, retired_by=by)
            )
        n += len(hit)
    return n


def save_evidence(session: Session, rows: dict[tuple[str, str], object]) -> None:
    """Upsert the evidence records one settle changed (a None value deletes the record)."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert: Callable[..., Any]  # each dialect's own INSERT, for its ON CONFLICT clause
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    table = EvidenceRow.__table__
    put = [
        {"section": s, "key": k, "value": json.dumps(v, ensure_ascii=False, sort_keys=True)}
        for (s, k), v in sorted(rows.items())
        if v is not None
    ]
    gone = [(s, k) for (s, k), v in rows.items() if v is None]
    if put:
        # one statement executed for many rows (executemany): compiled once, not once per batch of VALUES
        stmt = insert(table)
        session.connection().execute(
            stmt.on_conflict_do_update(index_elements=["section", "key"], set_={"value": stmt.excluded.value}), put
        )
    for s, k in gone:
        session.execute(delete(EvidenceRow).where(EvidenceRow.section == s, EvidenceRow.key == k))


def load_evidence(session: Session) -> Evidence:
    return Evidence.from_rows(
        (s, k, json.loads(v))
        for s, k, v in session.execute(select(EvidenceRow.section, EvidenceRow.key, EvidenceRow.value))
    )


def load_evidence_mark(session: Session) -> object:
    """The evidence's last applied window (None before the first): tells a worker whether its copy is current."""
    v = session.scalar(select(EvidenceRow.value).where(EvidenceRow.section == "meta", EvidenceRow.key == "applied"))
    return json.loads(v) if v is not None else None


def _pair_row(p: Pair, start: datetime) -> dict:
    j = p.to_json()
    return {
        "pair_id": p.pair_id,
        "prompt": json.dumps(j["prompt"], ensure_ascii=False),
        "chosen": json.dumps(j["chosen"], ensure_ascii=False),
        "rejected": json.dumps(j["rejected"], ensure_ascii=False),
        "weight": p.weight,
        "dimension": p.dimension,
        "event_ids": json.dumps(list(p.event_ids)),
        "created_at": naive(p.created_at),
        "window_start": start,
    }


def _unpaired_row(u: Unpaired, start: datetime) -> dict:
    j = u.to_json()
    return {
        "example_id": u.example_id,
        "prompt": json.dumps(j["prompt"], ensure_ascii=False),
        "completion": json.dumps(j["completion"], ensure_ascii=False),
        "label": u.label,
        "weight": u.weight,
        "dimension": u.dimension,
        "event_ids": json.dumps(list(u.event_ids)),
        "created_at": naive(u.created_at),
        "window_start": start,
    }


# ------------------------------------------------------------------ reads
def load_staged(session: Session, lo: datetime, hi: datetime, *, skip: set[Key] | None = None) -> list[Item]:
    """Staged items with lo <= occurred_at < hi (those whose key is in `skip` are not decoded again)."""
    q = select(StagedEvent.app_id, StagedEvent.event_id, StagedEvent.record).where(
        StagedEvent.occurred_at >= naive(lo), StagedEvent.occurred_at < naive(hi)
    )
    out = []
    for app, eid, record in session.execute(q):
        if skip is None or (app, eid) not in skip:
            out.append(Item.from_record(json.loads(record)))
    return out


def load_staged_ids(session: Session, lo: datetime, hi: datetime) -> list[Key]:
    q = select(StagedEvent.app_id, StagedEvent.event_id).where(
        StagedEvent.occurred_at >= naive(lo), StagedEvent.occurred_at < naive(hi)
    )
    return [(app, eid) for app, eid in session.execute(q)]


def load_settled_windows(session: Session) -> set[datetime]:
    return {aware(t) for t in session.scalars(select(WindowRow.window_start))}


def load_unsettled_range(session: Session) -> tuple[datetime, datetime] | None:
    """(earliest, latest) event time of staged events that have no decision yet."""
    q = select(func.min(StagedEvent.occurred_at), func.max(StagedEvent.occurred_at)).where(~_decided())
    lo, hi = session.execute(q).one()
    return (aware(lo), aware(hi)) if lo is not None else None


def _decided():
    """Whether a staged event has its decision (correlated on the staged row's key)."""
    return (
        select(DecisionRow.event_id)
        .where(DecisionRow.event_id == StagedEvent.event_id, DecisionRow.app_id == StagedEvent.app_id)
        .exists()
    )


def load_undecided(session: Session, lo: datetime, hi: datetime) -> list[Item]:
    q = select(StagedEvent.record).where(
        StagedEvent.occurred_at >= naive(lo), StagedEvent.occurred_at < naive(hi), ~_decided()
    )
    return [Item.from_record(json.loads(r)) for r in session.scalars(q)]


def count_rows(session: Session) -> dict[str, int]:
    return {name: count_table(session, name) for name in _COUNTED}


def count_table(session: Session, name: str) -> int:
    """Rows of one of curation's tables by its short name (staged, decisions, ..., windows, outbox)."""
    return session.scalar(select(func.count()).select_from(_COUNTED[name])) or 0


_COUNTED: dict[str, type[Base]] = {
    "staged": StagedEvent,
    "decisions": DecisionRow,
    "pairs": PairRow,
    "unpaired": UnpairedRow,
    "windows": WindowRow,
    "dead_letters": DeadLetterRow,
    "outbox": OutboxRow,
}


def load_decisions(session: Session) -> list[dict]:
    rows = session.execute(
        select(DecisionRow.event_id, DecisionRow.decision, DecisionRow.reasons).order_by(
            DecisionRow.event_id, DecisionRow.app_id
        )
    )
    return [{"event_id": e, "decision": d, "reasons": json.loads(r)} for e, d, r in rows]


def pair_json(row: PairRow) -> dict:
    return {
        "prompt": json.loads(row.prompt),
        "chosen": json.loads(row.chosen),
        "rejected": json.loads(row.rejected),
        "weight": row.weight,
        "dimension": row.dimension,
        "event_ids": json.loads(row.event_ids),
        "created_at": aware(row.created_at).isoformat(),
        "pair_id": row.pair_id,
    }


def unpaired_json(row: UnpairedRow) -> dict:
    return {
        "prompt": json.loads(row.prompt),
        "completion": json.loads(row.completion),
        "label": bool(row.label),
        "weight": row.weight,
        "dimension": row.dimension,
        "event_ids": json.loads(row.event_ids),
        "created_at": aware(row.created_at).isoformat(),
        "example_id": row.example_id,
    }


def load_dead_letters(session: Session) -> list[dict]:
    rows = session.execute(
        select(DeadLetterRow.source, DeadLetterRow.sha256, DeadLetterRow.reason).order_by(DeadLetterRow.source)
    )
    return [{"line": s, "sha256": h, "reason": r} for s, h, r in rows]


def load_window_signals(session: Session) -> list[tuple[datetime, dict, int, int]]:
    rows = session.execute(
        select(WindowRow.window_start, WindowRow.signals, WindowRow.events, WindowRow.kept).order_by(
            WindowRow.window_start
        )
    )
    return [(aware(w), json.loads(s), e, k) for w, s, e, k in rows]


# ------------------------------------------------------------------ policies and recuration
def save_policy(session: Session, policy) -> str:
    """Record the policy under its content hash (once); returns the hash."""
    from curation.settings import policy_hash

    h = policy_hash(policy)
    _insert_ignore(
        session,
        PolicyRow,
        [
            {
                "policy_hash": h,
                "version": policy.version,
                "first_used_at": _now(),
                "body": json.dumps(policy.model_dump(mode="json"), sort_keys=True),
            }
        ],
        ["policy_hash"],
    )
    return h


def load_current_decisions(session: Session) -> dict[Key, dict]:
    """Every current decision, by (app_id, event_id): what a recuration compares with and may supersede."""
    cols = (
        DecisionRow.app_id,
        DecisionRow.event_id,
        DecisionRow.decision,
        DecisionRow.reasons,
        DecisionRow.user_id,
        DecisionRow.window_start,
        DecisionRow.policy_hash,
    )
    return {
        (a, e): {
            "app_id": a,
            "event_id": e,
            "decision": d,
            "reasons": json.loads(r),
            "user_id": u,
            "window_start": aware(w),
            "policy_hash": h,
        }
        for a, e, d, r, u, w, h in session.execute(select(*cols))
    }


_DECISION_FIELDS = (
    "decision",
    "reasons",
    "kind",
    "user_id",
    "adapter_version",
    "rating",
    "occurred_at",
    "window_start",
    "token_status",
    "verified_version",
    "verified_base_model",
    "served_at",
    "response_id",
    "policy_hash",
)


def supersede_decisions(session: Session, rows: Sequence[dict], recuration_id: str) -> int:
    """Replace the current decisions of `rows` (full decision rows, by (app_id, event_id)); the ones replaced
    are kept in `curation_decision_history`, superseded by `recuration_id`. Returns how many were replaced."""
    now = _now()
    old = {
        (a, e): (d, r, h, w, t)
        for a, e, d, r, h, w, t in session.execute(
            select(
                DecisionRow.app_id,
                DecisionRow.event_id,
                DecisionRow.decision,
                DecisionRow.reasons,
                DecisionRow.policy_hash,
                DecisionRow.window_start,
                DecisionRow.decided_at,
            )
        )
    }
    history = []
    for row in rows:
        prev = old.get((row["app_id"], row["event_id"]))
        if prev is not None:
            d, r, h, w, t = prev
            history.append(
                {
                    "app_id": row["app_id"],
                    "event_id": row["event_id"],
                    "decision": d,
                    "reasons": r,
                    "policy_hash": h,
                    "window_start": w,
                    "decided_at": t,
                    "superseded_at": now,
                    "superseded_by": recuration_id,
                }
            )
    if history:
        session.connection().execute(_table(DecisionHistoryRow).insert(), history)
    fresh = [_decision_values(row, now) for row in rows if (row["app_id"], row["event_id"]) not in old]
    _insert_ignore(session, DecisionRow, fresh, _KEY)
    table = _table(DecisionRow)
    stmt = table.update().where(and_(table.c.app_id == bindparam("k_app"), table.c.event_id == bindparam("k_event")))
    changed = [
        {
            **{k: v for k, v in _decision_values(row, now).items() if k not in _KEY},
            "k_app": row["app_id"],
            "k_event": row["event_id"],
        }
        for row in rows
        if (row["app_id"], row["event_id"]) in old
    ]
    if changed:
        session.connection().execute(stmt, changed)
    return len(history)


def _decision_values(row: dict, now: datetime) -> dict:
    """The stored values of a decision row (the fields it carries: a re-judged one carries only a few)."""
    out = {k: row[k] for k in _DECISION_FIELDS if k in row}
    out["reasons"] = json.dumps(row["reasons"])
    for k in ("occurred_at", "window_start", "served_at"):
        if out.get(k) is not None:
            out[k] = naive(out[k])
    return {**out, "app_id": row["app_id"], "event_id": row["event_id"], "decided_at": now}


def live_ids(session: Session, model, since: datetime) -> dict[str, list[str]]:
    """Live (not retired) pair or unpaired ids built in windows from `since` on, with their event ids."""
    key = model.pair_id if model is PairRow else model.example_id
    q = select(key, model.event_ids).where(model.retired_at.is_(None), model.window_start >= naive(since))
    return {k: json.loads(ids) for k, ids in session.execute(q)}


def retire(session: Session, model, ids: Iterable[str], by: str) -> int:
    key = model.pair_id if model is PairRow else model.example_id
    ids, now = sorted(ids), _now()
    for chunk in range(0, len(ids), 500):
        session.execute(update(model).where(key.in_(ids[chunk : chunk + 500])).values(retired_at=now, retired_by=by))
    return len(ids)


def save_built(session: Session, windows: Iterable[WindowResult]) -> None:
    """The pairs and unpaired examples of re-settled windows: new ones inserted, ones built before brought back
    to life with their new weight (a retired row that the policy builds again is current again)."""
    for model, key, build, attr in (
        (PairRow, PairRow.pair_id, _pair_row, "pairs"),
        (UnpairedRow, UnpairedRow.example_id, _unpaired_row, "unpaired"),
    ):
        rows = [build(x, naive(w.start)) for w in windows for x in getattr(w, attr)]
        _insert_ignore(session, model, rows, [key.key])
        table = _table(model)
        stmt = table.update().where(table.c[key.key] == bindparam("k_id"))
        vals = [
            {
                "k_id": r[key.key],
                "weight": r["weight"],
                "dimension": r["dimension"],
                "retired_at": None,
                "retired_by": None,
            }
            for r in rows
        ]
        if vals:
            session.connection().execute(stmt, vals)


def update_windows(session: Session, windows: Iterable[WindowResult]) -> None:
    """Re-settled windows: their counts, signals and policy hash replace the ones recorded."""
    now = _now()
    for w in windows:
        session.execute(
            update(WindowRow)
            .where(WindowRow.window_start == naive(w.start))
            .values(
                settled_at=now,
                events=len(w.decisions),
                kept=sum(d["decision"] != "drop" for d in w.decisions),
                signals=json.dumps(w.signals, default=str),
                policy_hash=w.policy_hash,
            )
        )


def replace_evidence(session: Session, evidence: Evidence, mark: str) -> None:
    """Every evidence record replaced by `evidence` (a recuration rebuilt it); `mark` as meta/applied tells every
    worker its copy is stale."""
    session.execute(delete(EvidenceRow))
    rows = {(s, k): v for s, sec in evidence.sections.items() for k, v in sec.items()}
    rows[("meta", "applied")] = mark
    save_evidence(session, rows)


def save_recuration(session: Session, row: dict) -> None:
    session.add(RecurationRow(**{**row, "summary": json.dumps(row["summary"], sort_keys=True)}))


def load_decision_history(session: Session, event_id: str, app_id: str | None = None) -> list[dict]:
    """The superseded decisions of an event, oldest first (its current one is in `load_decisions`)."""
    q = select(DecisionHistoryRow).where(DecisionHistoryRow.event_id == event_id)
    if app_id is not None:
        q = q.where(DecisionHistoryRow.app_id == app_id)
    return [
        {
            "event_id": r.event_id,
            "app_id": r.app_id,
            "decision": r.decision,
            "reasons": json.loads(r.reasons),
            "policy_hash": r.policy_hash,
            "superseded_by": r.superseded_by,
            "superseded_at": aware(r.superseded_at),
        }
        for r in session.scalars(q.order_by(DecisionHistoryRow.id))
    ]
