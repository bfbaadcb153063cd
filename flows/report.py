"""The demo's HTML report: the summary, the gate report and plots, in one self-contained file."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _plots(s: dict) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    shares = s.get("live_shares") or []
    if shares:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        labels = [sh["after"] for sh in shares]
        xs = range(len(labels))
        w = 0.38
        for off, key, color, name in (
            (-w / 2, "courteous", "#2a7", "courteous style"),
            (w / 2, "brief_signoff", "#47c", "brief sign-off"),
        ):
            vals = [sh[key] for sh in shares]
            ax.bar([x + off for x in xs], vals, w, color=color, label=name)
            for x, v in zip(xs, vals):
                ax.text(x + off, v + 0.02, f"{v:.0%}", ha="center", fontsize=8)
        ax.set_xticks(list(xs), labels)
        ax.set_ylim(0, 1.1)
        ax.set_ylabel("share of live answers")
        ax.set_title("Each preference on live serving, per turn")
        ax.legend(fontsize=8, loc="upper left")
        out.append(("Each preference's share after each promoted turn", _png(fig)))
        plt.close(fig)

    reasons = {k: v for k, v in s["reasons"].items() if k}
    if reasons:
        fig, ax = plt.subplots(figsize=(6, 0.35 * len(reasons) + 1))
        names = sorted(reasons, key=lambda n: reasons[n])
        ax.barh(names, [reasons[n] for n in names], color="#c63")
        ax.set_xlabel("events")
        ax.set_title("Curation: reason codes")
        out.append(("Why events were dropped or redacted", _png(fig)))
        plt.close(fig)

    traces = [(t["turn"], t["canary_watch"]["trace"]) for t in s.get("turns", []) if t.get("canary_watch")]
    if traces:
        fig, ax = plt.subplots(figsize=(5, 3))
        for k, rounds in traces:
            ax.plot([r["canary_events"] for r in rounds], [r["p_worse"] for r in rounds], marker="o", label=f"turn {k}")
        ax.axhline(0.95, color="#c33", ls="--", label="roll back above")
        ax.axhline(0.05, color="#3a3", ls="--", label="promote below")
        ax.set_xlabel("feedback events on the canary")
        ax.set_ylabel("P(canary worse)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        ax.set_title("Canary watch (sequential test), per turn")
        out.append(("Canary watch", _png(fig)))
        plt.close(fig)
    return out


def write_demo_report(summary: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(json.dumps(v, default=str))}</td></tr>"
        for k, v in summary.items()
        if k not in ("audit",)
    )
    audit = "".join(
        f"<tr><td>{html.escape(str(e.get('at')))}</td><td>{html.escape(str(e.get('actor')))}</td>"
        f"<td>{html.escape(str(e.get('action')))}</td><td>{html.escape(str(e.get('version')))}</td>"
        f"<td>{html.escape(str(e.get('reason')))}</td></tr>"
        for e in summary.get("audit", [])
    )
    figs = "".join(
        f"<figure><img src='data:image/png;base64,{b64}'><figcaption>{html.escape(t)}</figcaption></figure>"
        for t, b64 in _plots(summary)
    )
    path.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>alignloop demo</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}td{{border-bottom:1px solid #ddd;padding:4px;
vertical-align:top;font-size:13px}}figure{{display:inline-block;margin:8px}}</style></head><body>
<h1>alignloop demo</h1>{figs}<h2>Summary</h2><table>{rows}</table>
<h2>Audit log (last entries)</h2><table><tr><th>at</th><th>actor</th><th>action</th><th>version</th><th>reason</th></tr>
{audit}</table></body></html>""")
    return path
