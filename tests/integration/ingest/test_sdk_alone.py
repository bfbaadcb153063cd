"""The SDK for apps installed alone: a fresh virtualenv without torch or the service sends via the gateway and Kafka."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from support.kafka_topics import read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]

# runs inside the fresh virtualenv: one event over HTTP through the gateway, one into Kafka, their ids on stdout
APP = textwrap.dedent("""
    import json, sys

    import alignloop_sdk
    from alignloop_sdk import FeedbackClient, HttpFeedbackClient

    url, key, bootstrap, topic = sys.argv[1:5]
    with HttpFeedbackClient("shop-bot", url, key) as feedback:
        http = feedback.rate(user_id="u-1", prompt="Where is my order?", response="It ships today.", rating="up")
    with FeedbackClient("shop-bot", bootstrap, topic=topic) as feedback:
        kafka = feedback.compare(user_id="u-2", prompt="Hi", responses=["Hello!", "What."], chosen=0)
    heavy = sorted(m for m in ("torch", "faust", "prefect", "transformers", "alignloop", "ingest") if m in sys.modules)
    print(json.dumps({"http": str(http.event_id), "kafka": str(kafka.event_id), "sdk": alignloop_sdk.__file__,
                      "heavy": heavy}))
""")


def _run(python: Path, *args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    # without PYTHONPATH: the checkout (or the main venv's paths) must not leak into the fresh environment
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    return subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def sdk_python(tmp_path_factory) -> Path:
    """The python of a fresh virtualenv holding only the SDK, pip-installed from a copy of this repo's sdk/."""
    root = tmp_path_factory.mktemp("sdk-alone")
    source = shutil.copytree(REPO / "sdk", root / "sdk", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=300)
    python = root / "venv" / "bin" / "python"
    done = _run(
        python,
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        "-c",
        str(REPO / "constraints.txt"),
        str(source),
        cwd=root,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return python


def test_the_sdk_installs_without_torch_or_the_service(sdk_python, tmp_path):
    for module in ("torch", "alignloop", "ingest", "faust", "prefect"):
        done = _run(sdk_python, "-c", f"import {module}", cwd=tmp_path)
        assert done.returncode != 0 and f"No module named '{module}'" in done.stderr, (module, done.stderr)
    listed = _run(sdk_python, "-m", "pip", "list", "--format=json", cwd=tmp_path)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"alignloop-sdk", "pydantic", "httpx", "kafka-python"} <= names
    assert not names & {"torch", "alignloop", "faust-streaming", "prefect", "transformers", "sqlalchemy"}


def test_an_app_with_only_the_sdk_sends_through_the_gateway_and_kafka(sdk_python, gateway, kafka_bootstrap, tmp_path):
    done = _run(
        sdk_python, "-c", APP, gateway.url, gateway.key, kafka_bootstrap, gateway.topic, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 0, done.stderr
    sent = json.loads(done.stdout)
    assert Path(sent["sdk"]).is_relative_to(sdk_python.parents[1]), sent["sdk"]  # the installed copy, not the checkout
    assert sent["heavy"] == []
    on_topic = {e["event_id"]: e for e in map(json.loads, read_topic(kafka_bootstrap, gateway.topic))}
    assert set(on_topic) == {sent["http"], sent["kafka"]}
    assert on_topic[sent["http"]]["kind"] == "rating" and on_topic[sent["http"]]["app_id"] == "shop-bot"
    assert on_topic[sent["kafka"]]["kind"] == "comparison" and on_topic[sent["kafka"]]["chosen"] == 0
