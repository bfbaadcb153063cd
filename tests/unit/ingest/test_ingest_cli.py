"""`alignloop ingest schema` prints the committed schema; `--help` stays light."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

from typer.testing import CliRunner

from ingest.cli import app


def test_schema_command_prints_the_committed_schema():
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0
    committed = json.loads(files("ingest").joinpath("schema/feedback-event-v1.json").read_text())
    assert json.loads(result.output) == committed


def test_ingest_help_imports_no_heavy_modules():
    code = (
        "import sys; from ingest.cli import app; "
        "heavy = [m for m in ('torch', 'transformers', 'fastapi', 'kafka', 'aiokafka', 'uvicorn') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert out.stdout.strip() == "[]"
