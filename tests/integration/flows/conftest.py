"""Flow tests: one Prefect test harness for the session, the embedded tiny model, curated data made offline."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

SMALL_RUN = Path(__file__).parent / "small-run.yaml"


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def base_model() -> str:
    from retrain.model import ensure_base_model

    return str(ensure_base_model(progress=False))


@pytest.fixture
def loop_env(tmp_path, monkeypatch, redis_url):
    """A home, store and artifact root of this test's own (settings caches cleared around it)."""
    from support.settings import clear_settings_caches

    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("ALIGNLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ALIGNLOOP_STORE_URL", store_url)
    monkeypatch.setenv("ALIGNLOOP_REDIS_URL", redis_url)
    monkeypatch.setenv("ALIGNLOOP_DEPLOY_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    clear_settings_caches()
    from alignloop.core.db import open_store

    engine = open_store(store_url)
    yield {"store_url": store_url, "redis_url": redis_url, "engine": engine, "tmp": tmp_path}
    engine.dispose()
    clear_settings_caches()


@pytest.fixture(scope="session")
def small_run() -> Path:
    return SMALL_RUN


@pytest.fixture(scope="session")
def make_events():
    return offline_events


@pytest.fixture(scope="session")
def curate_events():
    return curate


def offline_events(n: int, *, preferred: str, seed: int, start: datetime | None = None) -> list[dict]:
    """Honest feedback on corpus answers (no serving): comparisons, edits and ratings that prefer `preferred`."""
    from retrain.corpus import PROMPTS, make_answer

    rng = random.Random(seed)
    other = "curt" if preferred == "courteous" else "courteous"
    t = start or datetime.now(UTC) - timedelta(hours=6)
    users = [f"honest-{i:02d}" for i in range(30)]
    out = []
    for i in range(n):
        t += timedelta(seconds=rng.uniform(5, 15))
        user, prompt = rng.choice(users), rng.choice(PROMPTS)
        good, bad = make_answer(prompt, preferred, rng), make_answer(prompt, other, rng)
        common = {
            "schema_version": 1,
            "event_id": str(uuid.uuid4()),
            "occurred_at": t.isoformat(),
            "app_id": "flows-test",
            "user_id": user,
            "prompt": prompt,
        }
        r = i % 3
        if r == 0:
            flip = rng.random() < 0.5
            out.append(
                {
                    **common,
                    "kind": "comparison",
                    "responses": [bad, good] if flip else [good, bad],
                    "chosen": 1 if flip else 0,
                }
            )
        elif r == 1:
            out.append({**common, "kind": "edit", "response": bad, "edited": good})
        else:
            out.append({**common, "kind": "rating", "response": good, "rating": "up"})
    return out


def curate(engine, events: list[dict]) -> dict:
    """Events through curation's replay path into the store (as the worker would settle them)."""
    from alignloop.core.db import session_scope
    from curation import store
    from curation.replay import run_replay
    from curation.settings import get_settings

    result = run_replay([json.dumps(e) for e in events], get_settings().policy)
    with session_scope(engine) as session:
        for w in result.windows:
            store.save_window(session, w)
    return {
        "decisions": len(result.decisions),
        "pairs": len(result.pairs),
        "dropped": sum(d["decision"] == "drop" for d in result.decisions),
    }
