"""The curation report: reason counts, keep rate per app, feedback token statuses, agreement per window and drift
alarms, from the store."""

from __future__ import annotations

import json
from collections import Counter

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from curation import store
from curation.agreement import drift_alarms


def build_report(session: Session) -> dict:
    reasons: Counter = Counter()
    for (r,) in session.execute(select(store.DecisionRow.reasons)):
        for code in json.loads(r) or ["kept"]:
            reasons[code] += 1
    apps: dict[str, dict] = {}
    refused = store.DecisionRow.kind.is_(None)  # refused at decode: counted apart, whatever app it names
    q = select(store.DecisionRow.app_id, refused, store.DecisionRow.decision, func.count()).group_by(
        store.DecisionRow.app_id, refused, store.DecisionRow.decision
    )
    for app_id, was_refused, decision, n in session.execute(q):
        a = apps.setdefault("(refused)" if was_refused or not app_id else app_id, {"events": 0, "kept": 0})
        a["events"] += n
        a["kept"] += n if decision != "drop" else 0
    tokens = {
        status or "none": n
        for status, n in session.execute(
            select(store.DecisionRow.token_status, func.count()).group_by(store.DecisionRow.token_status)
        )
    }
    windows = []
    starts, up_rates = [], []
    for start, signals, events, kept in store.load_window_signals(session):
        windows.append(
            {
                "start": start.isoformat(),
                "events": events,
                "kept": kept,
                "alpha": signals.get("alpha"),
                "triggers": signals.get("triggers", []),
                "payloads": signals.get("payloads", []),
                "brigades": len(signals.get("brigades", [])),
                "burst_users": len(signals.get("burst_users", [])),
                "new_accounts": signals.get("memory", {}).get("new_accounts"),
                "new_account_wave": signals.get("memory", {}).get("new_account_wave", False),
            }
        )
        starts.append(start.isoformat())
        up_rates.append(signals.get("up_rate", {}))
    # the same alarms the worker counts in curation_drift_alarms_total as it settles each window
    alarms = drift_alarms(up_rates, apps)
    for app_id, a in apps.items():
        a["keep_rate"] = a["kept"] / a["events"] if a["events"] else 0.0
        a["drift_alarms"] = [starts[i] for i in alarms.get(app_id, [])]
    return {
        "rows": store.count_rows(session),
        "reasons": dict(reasons.most_common()),
        "apps": dict(sorted(apps.items())),
        "tokens": dict(sorted(tokens.items())),
        "windows": windows,
    }
