"""The CLI: replay writes the documented formats; bad input is one line and exit code 2."""

import json
import subprocess
import sys

from support.stream.generate import generate


def _alignloop(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-c", "from alignloop.cli import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_replay_writes_decisions_pairs_unpaired_and_dlq(tmp_path):
    lines, _, _ = generate(seed=2, scale=0.05, hours=1.0)
    src = tmp_path / "events.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = {k: tmp_path / f"{k}.jsonl" for k in ("decisions", "pairs", "unpaired", "dlq")}
    flags = [a for k, p in out.items() for a in (f"--{k}", str(p))]
    done = _alignloop("curation", "replay", "--input", str(src), *flags, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["decisions"] == len(out["decisions"].read_text().splitlines()) > 0
    d = json.loads(out["decisions"].read_text().splitlines()[0])
    assert set(d) == {"event_id", "decision", "reasons"}
    q = json.loads(out["dlq"].read_text().splitlines()[0])
    assert set(q) == {"line", "sha256", "reason"} and isinstance(q["line"], int)
    p = json.loads(out["pairs"].read_text().splitlines()[0])
    assert {"prompt", "chosen", "rejected", "weight", "dimension", "event_ids", "created_at", "pair_id"} <= set(p)
    u = json.loads(out["unpaired"].read_text().splitlines()[0])
    assert {"prompt", "completion", "label", "weight", "dimension", "event_ids", "created_at"} <= set(u)


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    done = _alignloop("curation", "replay", "--input", str(tmp_path / "missing.jsonl"))
    assert done.returncode == 2 and "--input" in done.stderr and "Traceback" not in done.stderr
    done = _alignloop("curation", "replay", "--input", str(tmp_path / "missing.jsonl"), "--now", "yesterday")
    assert done.returncode == 2 and "--now" in done.stderr
