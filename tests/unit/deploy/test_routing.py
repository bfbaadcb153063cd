"""Routing decisions: sticky canary buckets, shares, and which adapters to unload."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from deploy.models import Routing
from deploy.routing import canary_bucket, choose_evictions, choose_version


def test_no_canary_sends_everyone_to_active():
    r = Routing(base_model="b", active="v1")
    assert {choose_version(r, f"u{i}") for i in range(100)} == {"v1"}
    assert choose_version(Routing(base_model="b"), "u1") is None  # None = the base model


def test_canary_share_is_close_to_the_asked_share_and_sticky():
    r = Routing(base_model="b", active="v1", canary="v2", canary_share=0.2)
    picks = [choose_version(r, f"user-{i}") for i in range(5000)]
    share = picks.count("v2") / len(picks)
    assert 0.18 < share < 0.22
    assert picks == [choose_version(r, f"user-{i}") for i in range(5000)]  # same user, same side


def test_request_without_user_goes_to_active():
    r = Routing(base_model="b", active="v1", canary="v2", canary_share=1.0)
    assert choose_version(r, None) == "v1"
    assert choose_version(r, "") == "v1"
    assert choose_version(r, "someone") == "v2"


def test_growing_the_share_keeps_canary_users_on_the_canary():
    small = Routing(base_model="b", active="v1", canary="v2", canary_share=0.1)
    big = small.model_copy(update={"canary_share": 0.5})
    users = [f"u{i}" for i in range(2000)]
    assert all(choose_version(big, u) == "v2" for u in users if choose_version(small, u) == "v2")


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=20))
def test_bucket_is_in_unit_interval(user, version):
    assert 0.0 <= canary_bucket(user, version) < 1.0


def test_evictions_keep_routed_and_pinned_and_drop_least_recent():
    resident = ["a", "b", "c", "d", "e"]
    last = {"a": 1.0, "b": 5.0, "c": 2.0, "d": 3.0, "e": 4.0}
    assert choose_evictions(resident, last, keep={"e"}, pinned={"a"}, max_resident=3) == ["c", "d"]
    assert choose_evictions(resident, last, keep=set(), pinned=set(), max_resident=5) == []
    # everything pinned or routed: memory goes over the bound rather than pulling an adapter from a running request
    assert choose_evictions(resident, last, keep={"a", "b"}, pinned={"c", "d", "e"}, max_resident=2) == []
