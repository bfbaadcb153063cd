"""The `alignloop retrain` group: light to import, one clear line on bad input."""

import json
import subprocess
import sys

from typer.testing import CliRunner

from retrain.cli import app
from retrain.errors import RetrainError
from retrain.report import AdapterRef, BehaviourScores, Comparisons, EvaluationReport, ModelScores, SliceScores


def test_importing_the_cli_does_not_import_torch():
    code = (
        "import sys, retrain.cli; print(json.dumps(sorted(m for m in ('torch', 'transformers', 'trl') "
        "if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_bad_input_raises_the_package_error_that_the_cli_prints_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["snapshot", str(tmp_path / "s"), "--pairs", str(tmp_path / "none.jsonl")])
    assert isinstance(result.exception, RetrainError) and "must exist" in str(result.exception)
    result = CliRunner().invoke(app, ["gate", str(tmp_path)])
    assert isinstance(result.exception, RetrainError)


def _report(**comparisons) -> EvaluationReport:
    empty = ModelScores(heldout=SliceScores(), safety=SliceScores(), behaviour=BehaviourScores())
    return EvaluationReport(
        candidate=AdapterRef(version="a-1", path="/a-1"),
        base_model="tiny",
        snapshot_hash="s",
        config_hash="c",
        preferred_style="courteous",
        samples=1,
        models={"base": empty, "candidate": empty},
        comparisons=Comparisons(**comparisons),
    )


def test_gate_exit_code_follows_the_decision(tmp_path):
    (tmp_path / "report.json").write_text(_report(heldout_accuracy=0.2).model_dump_json())
    result = CliRunner().invoke(app, ["gate", str(tmp_path), "--json"])
    assert result.exit_code == 1 and json.loads(result.output)["passed"] is False


def test_a_file_that_is_not_an_evaluation_report_is_refused_with_the_field_named(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({"comparisons": {"heldout_accuracy": 0.2}}))
    result = CliRunner().invoke(app, ["gate", str(tmp_path), "--json"])
    assert isinstance(result.exception, RetrainError) and "`candidate`" in str(result.exception)
