"""The registry on the real stores (SQLite and PostgreSQL): versions, canary, promote, rollback, audit."""

from __future__ import annotations

import re

import pytest

from alignloop.core.db import session_scope
from deploy import registry
from deploy.artifacts import LocalArtifactStorage
from deploy.errors import ArtifactError, IntegrityError, NotFoundError, RegistryError
from support.models import write_fake_artifact

WHO = {"actor": "tester", "reason": "test"}


@pytest.fixture
def storage(tmp_path):
    return LocalArtifactStorage(tmp_path / "artifact-root")


@pytest.fixture
def reg(store_engine, storage, tmp_path):
    """Registers v1..v4 (each v(n) the parent of v(n+1)) and hands back a helper bound to the engine."""

    class Reg:
        engine = store_engine

        def __call__(self, fn, *args, **kwargs):
            with session_scope(store_engine) as s:
                return fn(s, *args, storage=storage, **kwargs)

        def read(self, fn, *args, **kwargs):
            with session_scope(store_engine) as s:
                return fn(s, *args, **kwargs)

    r = Reg()
    for i in range(1, 5):
        src = write_fake_artifact(tmp_path / "src" / f"v{i}", f"v{i}", parent=f"v{i - 1}" if i > 1 else None, seed=i)
        r(registry.register_adapter, src, **WHO)
    return r


def status(reg, v):
    return reg.read(registry.get_version, v).status


def test_register_records_lineage_and_copies_into_the_root(reg, storage, tmp_path):
    v = reg.read(registry.get_version, "v2")
    assert v.status == "candidate" and v.parent_version == "v1"
    assert v.lineage.parent_version == "v1" and v.lineage.event_ids
    assert v.manifest.dataset.event_ids_file == "event_ids.txt"
    assert (storage.root / "v2" / "adapter_model.safetensors").is_file()
    assert [x.version for x in reg.read(registry.list_versions)] == ["v1", "v2", "v3", "v4"]
    # same bytes again: the same version back, no second audit line
    again = reg(registry.register_adapter, tmp_path / "src" / "v2", **WHO)
    assert again.manifest_sha256 == v.manifest_sha256
    assert [e.action for e in reg.read(registry.audit_log)].count("register") == 4


def test_a_version_name_cannot_be_reused_for_other_bytes(reg, tmp_path):
    other = write_fake_artifact(tmp_path / "other", "v1", seed=99)
    with pytest.raises(RegistryError, match="already registered with another manifest"):
        reg(registry.register_adapter, other, **WHO)


def test_register_refuses_a_tampered_source(reg, tmp_path):
    src = write_fake_artifact(tmp_path / "bad", "v9", seed=9)
    (src / "lineage.json").write_text("{}")
    with pytest.raises(IntegrityError, match=re.escape("lineage.json")):
        reg(registry.register_adapter, src, **WHO)
    with pytest.raises(NotFoundError):
        reg.read(registry.get_version, "v9")


def test_canary_then_promote_then_rollback(reg):
    r = reg(registry.promote, "v1", **WHO)
    assert (r.active, r.canary, r.generation) == ("v1", None, 1)
    r = reg(registry.start_canary, "v2", 0.25, **WHO)
    assert (r.active, r.canary, r.canary_share) == ("v1", "v2", 0.25)
    assert status(reg, "v2") == "canary"
    r = reg(registry.start_canary, "v2", 0.5, **WHO)  # the same canary: a new share
    assert r.canary_share == 0.5
    r = reg(registry.promote, **WHO)  # default: the canary
    assert (r.active, r.canary, r.canary_share) == ("v2", None, 0.0)
    assert (status(reg, "v1"), status(reg, "v2")) == ("retired", "active")
    r = reg(registry.rollback, **WHO)
    assert r.active == "v1"
    assert (status(reg, "v1"), status(reg, "v2")) == ("active", "rolled_back")
    assert reg.read(registry.get_routing, "tiny-base") == r
    actions = [(e.action, e.version, e.from_version) for e in reg.read(registry.audit_log)][4:]
    assert actions == [
        ("promote", "v1", None),
        ("canary", "v2", "v1"),
        ("canary", "v2", "v1"),
        ("promote", "v2", "v1"),
        ("rollback", "v1", "v2"),
    ]
    assert all(e.actor == "tester" and e.reason == "test" for e in reg.read(registry.audit_log))


def test_rollback_stops_a_running_canary_first(reg):
    reg(registry.promote, "v1", **WHO)
    reg(registry.start_canary, "v2", 0.1, **WHO)
    r = reg(registry.rollback, **WHO)
    assert (r.active, r.canary) == ("v1", None)
    assert status(reg, "v2") == "rolled_back" and status(reg, "v1") == "active"


def test_rollback_walks_back_through_previous_actives_then_to_base(reg):
    for v in ("v1", "v2", "v3"):
        reg(registry.promote, v, **WHO)
    assert reg(registry.rollback, **WHO).active == "v2"
    assert reg(registry.rollback, **WHO).active == "v1"
    assert reg(registry.rollback, **WHO).active is None  # the base model
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg(registry.rollback, **WHO)


def test_rollback_to_a_named_version_also_stops_the_canary(reg):
    reg(registry.promote, "v1", **WHO)
    reg(registry.promote, "v2", **WHO)
    reg(registry.start_canary, "v3", 0.5, **WHO)
    r = reg(registry.rollback, to="v1", **WHO)
    assert (r.active, r.canary) == ("v1", None)
    assert [status(reg, v) for v in ("v1", "v2", "v3")] == ["active", "rolled_back", "rolled_back"]
    r = reg(registry.rollback, to="v2", **WHO)  # a rolled-back version can be restored deliberately
    assert r.active == "v2"


@pytest.mark.parametrize(
    "move, message",
    [
        (lambda reg: reg(registry.promote, "nope", **WHO), "not registered"),
        (lambda reg: reg(registry.promote, **WHO), "nothing is deployed yet"),
        (lambda reg: reg(registry.start_canary, "v1", 0.0, **WHO), "`share` must be in"),
        (lambda reg: reg(registry.start_canary, "v1", 1.5, **WHO), "`share` must be in"),
        (lambda reg: reg(registry.rollback, to="v1", **WHO), "was active before"),
        (lambda reg: reg(registry.promote, "v1", actor="", reason="x"), "`actor`"),
        (lambda reg: reg(registry.promote, "v1", actor="x", reason=" "), "`reason`"),
    ],
)
def test_bad_moves_say_why_and_change_nothing(reg, move, message):
    with pytest.raises(RegistryError, match=message):
        move(reg)
    assert reg.read(registry.get_routing, "tiny-base").generation == 0
    assert [status(reg, v) for v in ("v1", "v2")] == ["candidate", "candidate"]


def test_conflicting_moves_are_refused(reg):
    reg(registry.promote, "v1", **WHO)
    with pytest.raises(RegistryError, match="already active"):
        reg(registry.promote, "v1", **WHO)
    reg(registry.start_canary, "v2", 0.1, **WHO)
    with pytest.raises(RegistryError, match="canary 'v2' is already running"):
        reg(registry.start_canary, "v3", 0.1, **WHO)
    with pytest.raises(RegistryError, match="canary 'v2' is running"):
        reg(registry.promote, "v3", **WHO)
    reg(registry.rollback, **WHO)
    with pytest.raises(RegistryError, match="rolled_back"):
        reg(registry.promote, "v2", **WHO)


def test_a_tampered_stored_artifact_cannot_be_promoted(reg, storage):
    reg(registry.promote, "v1", **WHO)
    target = storage.root / "v2" / "adapter_model.safetensors"
    data = bytearray(target.read_bytes())
    data[-3] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=re.escape("sha256 mismatch for 'adapter_model.safetensors'")):
        reg(registry.promote, "v2", **WHO)
    r = reg.read(registry.get_routing, "tiny-base")
    assert (r.active, r.generation) == ("v1", 1)
    assert status(reg, "v2") == "candidate"
    assert [e.action for e in reg.read(registry.audit_log)][-1] == "promote"  # nothing logged for the refusal


def test_a_manifest_edited_in_the_root_is_caught(reg, storage):
    (storage.root / "v3" / "manifest.json").write_text((storage.root / "v3" / "manifest.json").read_text() + " ")
    with pytest.raises(IntegrityError, match=re.escape("manifest.json")):
        reg(registry.start_canary, "v3", 0.2, **WHO)


def test_a_location_outside_the_root_is_refused(reg, storage, store_engine):
    from deploy import store

    with session_scope(store_engine) as s:
        store.get_version_row(s, "v4").location = "../elsewhere"
    with pytest.raises(ArtifactError, match=r"escapes the artifact root|relative path"):
        reg(registry.promote, "v4", **WHO)


def test_a_rejected_candidate_is_audited_and_never_routable(reg):
    out = reg.read(registry.reject_candidate, "v3", actor="flows", reason="gate failed: heldout_accuracy 0.4 < 0.7")
    assert out.status == "rejected" and status(reg, "v3") == "rejected"
    with pytest.raises(RegistryError, match="only a candidate can become the canary"):
        reg(registry.start_canary, "v3", 0.5, **WHO)
    with pytest.raises(RegistryError, match="only a candidate can be rejected"):
        reg.read(registry.reject_candidate, "v3", actor="t", reason="again")
    entry = [e for e in reg.read(registry.audit_log) if e.version == "v3"][-1]
    assert entry.action == "reject" and "heldout_accuracy" in entry.reason


def test_rollback_to_base_always_works_even_with_every_adapter_damaged(reg, storage):
    import shutil

    from deploy.models import BASE

    reg(registry.promote, "v1", **WHO)
    reg(registry.promote, "v2", **WHO)
    reg(registry.start_canary, "v3", 0.5, **WHO)
    (storage.root / "v1" / "adapter_model.safetensors").write_bytes(b"damaged")  # the previous active
    shutil.rmtree(storage.root / "v2")  # the active one: gone altogether
    with pytest.raises(ArtifactError):
        reg(registry.rollback, to="v1", **WHO)  # a named version is verified first, and refused
    r = reg(registry.rollback, to=BASE, **WHO)
    assert (r.active, r.canary, r.generation) == (None, None, 4)
    assert [status(reg, v) for v in ("v1", "v2", "v3")] == ["retired", "rolled_back", "rolled_back"]
    entry = reg.read(registry.audit_log)[-1]
    assert (entry.action, entry.version, entry.from_version, entry.detail["canary_stopped"]) == (
        "rollback",
        None,
        "v2",
        "v3",
    )
    assert reg(registry.rollback, to=BASE, **WHO).active is None  # on the base already: still a recorded move


def test_base_is_no_version_name(reg, tmp_path):
    src = write_fake_artifact(tmp_path / "src" / "base", "base", seed=9)
    with pytest.raises(RegistryError, match="reserved"):
        reg(registry.register_adapter, src, **WHO)


def test_the_canary_start_is_its_first_canary_entry_not_a_later_share_change(reg):
    assert reg.read(registry.canary_started_at, "tiny-base") is None
    reg(registry.promote, "v1", **WHO)
    assert reg.read(registry.canary_started_at, "tiny-base") is None  # an active adapter, no canary
    reg(registry.start_canary, "v2", 0.1, **WHO)
    started = reg.read(registry.canary_started_at, "tiny-base")
    reg(registry.start_canary, "v2", 0.5, **WHO)  # the same canary, a larger share: the period goes on
    assert reg.read(registry.canary_started_at, "tiny-base") == started
    entries = [e for e in reg.read(registry.audit_log) if e.action == "canary"]
    assert started == entries[0].at and reg.read(registry.get_routing, "tiny-base").updated_at > started
    reg(registry.rollback, **WHO)
    assert reg.read(registry.canary_started_at, "tiny-base") is None
