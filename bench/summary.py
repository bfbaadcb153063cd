"""Prints the README's benchmark table from bench/results/*.json (and with --write, puts it in README.md, and each
package's rows in that package's README between `<!-- bench:summary:PACKAGE -->` markers).

Every number comes from a JSON file that a bench command wrote; the table names that command.
Run: python bench/summary.py --write
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
START, END = "<!-- bench:summary -->", "<!-- /bench:summary -->"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def rows() -> list[tuple[str, str, str, str]]:
    """(what, alignloop, baseline in the same run, command)."""
    out = []
    if (d := _load("ingest")) is not None:
        cmd = d.get("command", "python bench/ingest/run.py").strip()
        out.append(
            (
                "ingest: SDK throughput",
                f"{d['sdk']['events_per_s']:,.0f} ev/s ({d['sdk_vs_raw']:.2f}x raw)",
                f"raw kafka-python {d['raw_producer']['events_per_s']:,.0f} ev/s",
                cmd,
            )
        )
        g = d["gateway_single"]
        rounds = len(g.get("rounds_p99_ms", [1]))
        out.append(
            (
                "ingest: gateway single events at 500/s",
                f"p50 {g['p50_ms']:.1f} ms, p99 {g['p99_ms']:.1f} ms (median of {rounds} rounds)",
                f"raw producer p99 {d['raw_producer']['latency']['p99_ms']:.1f} ms",
                cmd,
            )
        )
        b = d["gateway_batched"]
        out.append(("ingest: gateway batches of 100", f"{b.get('events_per_s', 0):,.0f} ev/s", "-", cmd))
    if (d := _load("curation")) is not None:
        cmd = "python -m bench.curation.run"
        a, t, lat = d["acceptance"], d["throughput"], d["latency"]
        out.append(
            (
                "curation: attacked stream (stream path)",
                f"poison recall {a['trigger_poison_recall']:.0%}, spam recall {a['spam_account_recall']:.0%}, "
                f"honest dropped {a['honest_dropped']:.2%}, PII left {a['pii_left']}",
                f"{a['events']:,} events, replay == stream: {a['replay_equals_stream']}",
                cmd,
            )
        )
        out.append(
            (
                "curation: one worker",
                f"{t['worker_events_per_s']:.0f} ev/s ({t['ratio_worker_over_bare']:.2f}x)",
                f"bare aiokafka loop, same filters: {t['bare_aiokafka_events_per_s']:.0f} ev/s",
                cmd,
            )
        )
        if "two_workers_events_per_s" in t:
            out.append(
                (
                    "curation: two workers, same stream",
                    f"{t['two_workers_events_per_s']:.0f} ev/s ({t['ratio_two_workers_over_one']:.2f}x one worker)",
                    f"one worker {t['worker_events_per_s']:.0f} ev/s",
                    cmd,
                )
            )
        out.append(
            (
                "curation: event -> stored at 1,000 ev/s",
                f"p50 {lat['event_to_stored']['p50_s']:.1f} s, p95 {lat['event_to_stored']['p95_s']:.1f} s",
                "-",
                cmd,
            )
        )
    if (d := _load("retrain")) is not None:
        r = d["results"]
        cmd = d.get("command", "python bench/retrain/run.py")
        epochs = f", {d['epochs']:g} epochs" if d.get("epochs") else ""
        for key, label in (("alignloop_cold", "first run"), ("alignloop_warm", "retrain, cached reference")):
            out.append(
                (
                    f"retrain: DPO pairs/s, {label}{epochs}",
                    f"{r[key]['pairs_per_s']:.1f} pairs/s, {r[key]['peak_rss_mb']:.0f} MB",
                    f"plain TRL {r['trl_plain']['pairs_per_s']:.1f} "
                    f"(defaults {r['trl_defaults']['pairs_per_s']:.1f}), "
                    f"hand-written {r['handwritten']['pairs_per_s']:.1f} pairs/s",
                    cmd,
                )
            )
    if (d := _load("retrain_acceptance")) is not None:
        out.append(
            (
                "retrain: 1,000 style pairs",
                f"held-out accuracy {d['heldout_accuracy']:.2f}, preferred style {d['preferred_style_share']:.0%}",
                f"base {d['base_heldout_accuracy']:.2f}, {d['base_preferred_style_share']:.0%}",
                "python bench/retrain/acceptance.py",
            )
        )
    if (d := _load("deploy")) is not None:
        s, lr, tps = d["swap"], d["load_vs_resident"], d["tokens_per_s"]
        cmd = "python bench/deploy/run.py"
        out.append(
            (
                "deploy: adapter swap",
                f"{s['alignloop_swap_in_place_ms']:.1f} ms in place, {s['alignloop_swap_new_slot_ms']:.1f} ms new slot",
                f"full reload {s['full_reload_ms']:.1f} ms",
                cmd,
            )
        )
        out.append(
            (
                "deploy: install with 50 adapters resident",
                f"{lr['alignloop_ratio_50_over_1']:.2f}x of 1 resident; serving (LRU) after 100 swaps "
                f"{lr['serving_lru4_ratio_long_lived_over_fresh']:.2f}x fresh",
                f"PEFT load_adapter {lr['peft_ratio_50_over_1']:.2f}x",
                cmd,
            )
        )
        out.append(
            (
                "deploy: tokens/s",
                f"adapter {tps['adapter_over_base']:.2f}x, merged {tps['merged_over_base']:.2f}x",
                f"base {tps['base_plain_model']:.0f} tok/s",
                cmd,
            )
        )
    if (d := _load("deploy_engines")) is not None:
        t, sw, cmd = d["tokens_per_s"], d["swap_on_vllm"], "python bench/deploy/engines.py"
        out.append(
            (
                "deploy: router on vLLM, tokens/s at 1 / 32 concurrent",
                f"{t['router_on_vllm_c1']:.0f} / {t['router_on_vllm_c32']:.0f} tok/s "
                f"({d['router_over_vllm_direct_c1']:.2f}x / {d['router_over_vllm_direct_c32']:.2f}x direct)",
                f"vLLM direct {t['vllm_direct_c1']:.0f} / {t['vllm_direct_c32']:.0f} tok/s",
                cmd,
            )
        )
        out.append(
            (
                "deploy: embedded engine, tokens/s at 1 / 32 concurrent",
                f"{t['router_on_embedded_c1']:.0f} / {t['router_on_embedded_c32']:.0f} tok/s",
                f"router on vLLM {t['router_on_vllm_c1']:.0f} / {t['router_on_vllm_c32']:.0f} tok/s",
                cmd,
            )
        )
        out.append(
            (
                "deploy: promote on vLLM until served",
                f"{sw['promote_to_served_ms_median']:.0f} ms median, {sw['promote_to_served_ms_max']:.0f} ms max",
                f"vLLM load + unload alone {sw['vllm_load_plus_unload_ms_median']:.0f} ms",
                cmd,
            )
        )
        for passes in d.get("moves_under_load", {}).values():
            m, base = passes["staged"], passes["not_staged"]
            out.append(
                (
                    f"deploy: {m['moves']} moves under {m['clients']} clients, {m['setup']}, candidates staged",
                    f"{_served(m)}; {m['requests_failed']} failed of "
                    f"{m['requests_ok'] + m['requests_failed']:,} requests",
                    f"not staged: {_served(base).split(' (target')[0]}",
                    cmd,
                )
            )
    return out


def _served(m: dict) -> str:
    """Move to served everywhere, judged where the bench judged it (from the commit, once it measures that)."""
    verdict = f"(target 1 s: {'met' if m['target_met'] else 'not met'})"
    whole = f"p99 {m['move_to_served_everywhere_s_p99']:.2f} s, median {m['move_to_served_everywhere_s_median']:.2f} s"
    if "committed_to_served_everywhere_s_p99" not in m:
        return f"served everywhere {whole} {verdict}"
    return (
        f"served everywhere from the commit p99 {m['committed_to_served_everywhere_s_p99']:.2f} s, median "
        f"{m['committed_to_served_everywhere_s_median']:.2f} s {verdict}; from just before it {whole}"
    )


def table(package: str | None = None) -> str:
    """The whole table, or one package's rows (those whose `what` starts with `package:`)."""
    lines = ["| what | alignloop | baseline, same run | command |", "| --- | --- | --- | --- |"]
    chosen = [r for r in rows() if package is None or r[0].startswith(f"{package}:")]
    lines += [f"| {a} | {b} | {c} | `{d}` |" for a, b, c, d in chosen]
    return "\n".join(lines)


def _write(readme: Path, start: str, text: str) -> None:
    body = readme.read_text()
    new = re.sub(re.escape(start) + ".*?" + re.escape(END), lambda _: f"{start}\n{text}\n{END}", body, flags=re.S)
    readme.write_text(new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="replace the table between the markers in README.md")
    args = ap.parse_args()
    text = table()
    if args.write:
        _write(ROOT / "README.md", START, text)
        for readme in sorted(ROOT.glob("*/README.md")):
            for package in re.findall(r"<!-- bench:summary:(\w+) -->", readme.read_text()):
                _write(readme, f"<!-- bench:summary:{package} -->", table(package))
    print(text)


if __name__ == "__main__":
    main()
