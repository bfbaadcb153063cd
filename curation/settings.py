"""Curation settings (env `ALIGNLOOP_CURATION_<FIELD>`, policy `ALIGNLOOP_CURATION_POLICY__<FIELD>`); built lazily."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Policy(BaseModel):
    """What the guards consider abuse. Every number here is in event time, so replay is deterministic."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # a policy file's version (curation/policies/*.yaml); 0 for a policy built from the environment alone.
    # Every window and decision records the policy's content hash (`policy_hash`), version included.
    version: int = Field(0, ge=0, description="the policy file's version, raised whenever a value changes")
    # settle windows: decisions for [start, start+window) are made once event time passed start+window+lookahead,
    # from the events of [start-lookback, start+window+lookahead)
    window_s: int = Field(1800, ge=1, description="length of one settle window")
    lookahead_s: int = Field(1800, ge=0, description="event time a window waits for later evidence")
    lookback_s: int = Field(4 * 3600, ge=0, description="history each window's guards look at")
    # event time is trusted up to this far past the broker's clock (the record's receive time); an event dated
    # later is refused `future_event`, so no event moves a watermark (and settles windows) ahead of real time
    max_future_skew_s: int = Field(300, ge=0, description="how far occurred_at may lead the broker's time")
    # rate and bot signals
    user_per_min: int = Field(12, ge=1, description="events of one user in any 60 s above which it is a burst")
    source_per_min: int = Field(40, ge=1, description="events of one ip_hash or device_id in any 60 s")
    source_max_users: int = Field(8, ge=1, description="distinct accounts on one ip_hash or device in any 10 minutes")
    app_per_min: int = Field(5000, ge=1, description="events of one app in any 60 s (signal only, never drops)")
    regular_min_events: int = Field(12, ge=3, description="events needed to judge inter-arrival regularity")
    regular_max_cv: float = Field(0.15, ge=0, description="coefficient of variation of gaps below which it is a bot")
    # duplicates
    near_dup_jaccard: float = Field(0.8, gt=0, le=1, description="MinHash Jaccard of 5-gram shingles")
    # trivial edits
    trivial_edit_distance: float = Field(
        0.03, ge=0, lt=1, description="normalised edit distance below which an edit is trivial"
    )
    # reliability (one-coin Dawid-Skene)
    reliability_prior: float = Field(0.7, gt=0.5, lt=1)
    reliability_prior_strength: float = Field(4.0, gt=0)
    reliability_min_overlap: int = Field(
        6, ge=1, description="judged items shared with others before a user can be dropped"
    )
    reliability_drop_below: float = Field(0.4, ge=0, lt=1)
    # brigades (co-action)
    coaction_window_s: int = Field(900, ge=1)
    coaction_min_items: int = Field(3, ge=1, description="items two accounts must co-vote the same way on")
    brigade_min_accounts: int = Field(5, ge=2)
    # poisoned edits
    phrase_min_accounts: int = Field(3, ge=2, description="distinct accounts that must share a rare phrase")
    phrase_max_account_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="a phrase used by more than this share of "
        "all accounts seen is common (a greeting), never judged a trigger",
    )
    phrase_max_background: int = Field(1, ge=0, description="background occurrences allowed for a 'rare' phrase")
    phrase_min_shaping_share: float = Field(
        0.9, gt=0, le=1, description="share of a trigger's uses in edits and comparisons"
    )
    phrase_max_p: float = Field(1e-4, gt=0, le=1, description="binomial tail a trigger's enrichment must beat")
    unsafe_patterns: tuple[str, ...] = Field((), description="regexes of content that is never preferred")
    # evidence across windows (curation/evidence.py): judged over each account's and phrase's whole history
    churn_max_devices: int = Field(4, ge=2, description="distinct device_ids at which an account is a rotating bot")
    churn_max_ips: int = Field(8, ge=2, description="distinct ip_hashes at which an account is a rotating bot")
    timing_min_gaps: int = Field(
        30, ge=5, description="gaps under 4.5 h between an account's events before its long-run timing can flag it"
    )
    timing_max_band_share: float = Field(
        0.85,
        gt=0.5,
        le=1,
        description="share of those gaps (whole history) "
        "inside one factor-4 band of durations at which it is a metronome",
    )
    wave_max_p: float = Field(
        1e-4,
        gt=0,
        le=1,
        description="Poisson tail a window's new accounts must beat against the running mean to be a new-account wave",
    )
    memory_refit_votes: int = Field(1000, ge=1, description="new votes between refits of long-run reliability")
    contrarian_min_overlap: int = Field(
        12, ge=1, description="judged items shared with others before the long-run reliability can flag an account"
    )
    contrarian_below: float = Field(0.35, ge=0, lt=0.5, description="long-run agreement below which it is a contrarian")
    covote_link_p: float = Field(
        1e-3,
        gt=0,
        le=1,
        description="Poisson tail two accounts' same-way votes on the same items must beat to be linked",
    )
    covote_max_p: float = Field(
        1e-3,
        gt=0,
        le=1,
        description="binomial tail a group's votes on an item must beat against everyone else's rate for that label",
    )
    trigger_max_p: float = Field(
        1e-4,
        gt=0,
        le=1,
        description="tail probability an appended phrase's moves away "
        "from refusals must beat against its base prompts' rates",
    )
    payload_min_accounts: int = Field(3, ge=2, description="distinct accounts (and prompts) inserting a payload")
    payload_test_every: int = Field(8, ge=1, description="insertions of a phrase between two payload tests")
    payload_natural_rate: float = Field(
        0.5,
        gt=0,
        description="model answers carrying a phrase per insertion of it, at least, for phrases honest editors add",
    )
    payload_max_p: float = Field(
        1e-4,
        gt=0,
        le=1,
        description="Poisson lower tail an inserted phrase's natural occurrences must fall under to be a payload",
    )

    @model_validator(mode="after")
    def _windows(self) -> Policy:
        if self.lookback_s < self.window_s and self.lookback_s:
            from curation.errors import ConfigError

            raise ConfigError(f"`lookback_s` must be 0 or at least `window_s` ({self.window_s}); got {self.lookback_s}")
        return self


class CurationSettings(BaseSettings):
    """Where curation reads and writes (topics, group, store, Redis) and the policy it applies."""

    model_config = SettingsConfigDict(env_prefix="ALIGNLOOP_CURATION_", env_nested_delimiter="__", extra="ignore")

    topic: str = Field(
        "alignloop.feedback.v1", description="the feedback topic; rejected/dlq are <topic>.rejected/.dlq"
    )
    group: str = Field("alignloop-curation", description="the consumer group every worker joins")
    store_url: str | None = Field(None, description="SQLAlchemy URL; default: the core store")
    redis_url: str | None = Field(None, description="default: the core Redis")
    kafka_bootstrap: str | None = Field(None, description="default: the core bootstrap servers")
    datadir: str | None = Field(None, description="faust's data directory; default: <home>/curation/<worker id>")
    web_port: int = Field(0, ge=0, description="faust's web port; 0 disables the web server")
    metrics_port: int = Field(0, ge=0, description="Prometheus /metrics port; 0 disables it")
    batch_size: int = Field(500, ge=1, description="events written per store transaction")
    batch_within_s: float = Field(0.2, gt=0, description="longest wait to fill a batch")
    settle_every_s: float = Field(1.0, gt=0, description="how often a worker tries to settle closed windows")
    session_timeout_s: float = Field(
        10.0, ge=3, description="Kafka session timeout: how soon a dead worker's partitions move to the others"
    )
    idle_flush_s: float = Field(
        0,
        ge=0,
        description="settle every open window after this long without events "
        "(0: never; events later for those windows are late)",
    )
    policy: Policy = Field(default_factory=Policy)
    policy_file: str | None = Field(
        None,
        description="a versioned policy YAML (curation/policies/default.yaml); "
        "when set it is the policy, and POLICY__* are ignored",
    )
    pseudonym_key: SecretStr | None = Field(
        None,
        description="HMAC key of the pseudonyms of user, session and device "
        "ids and sources; default: the secret "
        "`curation-pseudonym-key` under home",
    )


@lru_cache
def get_settings() -> CurationSettings:
    return CurationSettings()


POLICY_DIR = Path(__file__).parent / "policies"


def load_policy(path: Path | str) -> Policy:
    """A versioned policy from YAML: `version` plus any Policy field (the rest keep their defaults)."""
    from curation.errors import ConfigError

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"`policy_file` must be a readable YAML file; got {str(path)!r} ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"`policy_file` {str(path)!r} must be valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("version"), int) or data["version"] < 1:
        got = data.get("version") if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"`version` of policy file {str(path)!r} must be an integer >= 1; got {got!r}")
    try:
        return Policy(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"`{field}` in policy file {str(path)!r}: {err['msg']}; got {err.get('input')!r}") from None


def active_policy(settings: CurationSettings | None = None) -> Policy:
    """The policy curation applies: the policy file when one is set, else the POLICY__* environment."""
    settings = settings or get_settings()
    return load_policy(settings.policy_file) if settings.policy_file else settings.policy


@lru_cache(maxsize=64)
def policy_hash(policy: Policy) -> str:
    """The policy's content hash (sha256 of its canonical JSON, version included): recorded with every
    window and decision, so what decided an event stays known after the policy changes."""
    body = json.dumps(policy.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def load_pseudonym_key(settings: CurationSettings, home) -> bytes:
    """The pseudonyms' key: from settings, else a random one created once under `home` (mode 0600).

    Workers and the replay that must agree on pseudonyms share it; whoever holds it can test a guessed id.
    """
    if settings.pseudonym_key is not None and settings.pseudonym_key.get_secret_value():
        return settings.pseudonym_key.get_secret_value().encode()
    from alignloop.core.keys import load_or_create_secret

    return load_or_create_secret(home, "curation-pseudonym-key").encode()


@lru_cache
def default_pseudonym_key() -> bytes:
    from alignloop.core.settings import get_settings as core_settings

    return load_pseudonym_key(get_settings(), core_settings().home)
