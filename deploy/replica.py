"""The replica: follows the registry's routing (Redis wake-up plus a periodic re-read), loads adapters on its backend
off the request path from verified bytes, then flips; pins the version each request runs on. A thread of its own
asks the engine what it holds. Between moves it stages the newest candidate (verified, loaded, not routed), so the
canary or promote that follows only flips."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from deploy.backends import Backend, open_backend
from deploy.errors import ServingError
from deploy.metrics import Metrics
from deploy.models import AdapterVersion, Routing
from deploy.routing import choose_evictions, choose_version
from deploy.settings import DeploySettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Waiting:
    """What staging needs beside the routing: the newest candidate, and the version a rollback returns to
    (which staging never evicts)."""

    candidate: AdapterVersion | None = None
    rollback_target: str | None = None


class Replica:
    """One serving process: the registry's routing applied to one backend (embedded model or vLLM servers)."""

    def __init__(self, settings: DeploySettings, backend: Backend | None = None) -> None:
        if not settings.base_model:
            raise ServingError("`ALIGNLOOP_DEPLOY_BASE_MODEL` must name the base model directory to serve; got nothing")
        from alignloop.core.db import open_store
        from alignloop.core.settings import get_settings as core_settings
        from deploy.artifacts import LocalArtifactStorage
        from deploy.migrations import FOLDER

        self.settings = settings
        self.base_model = settings.base_model
        self.model_name = settings.resolved_model_name()
        self.token_key = core_settings().resolved_feedback_token_key()  # curation verifies with the same key
        self.engine = open_store(settings.resolved_store_url(), branches=[FOLDER])
        self.storage = LocalArtifactStorage(settings.resolved_artifact_root())
        self.metrics = Metrics()
        self.backend = backend or open_backend(settings)
        context = self.backend.context or settings.max_prompt_tokens
        self.prompt_limit = min(settings.max_prompt_tokens, context)  # a longer prompt the model cannot read anyway
        self.routing: Routing | None = None  # what this replica serves; None until the first reconcile
        self.desired: Routing | None = None
        self.applied_at: float | None = None
        self.last_error: str | None = None
        self.last_reconcile_at: float | None = None
        self.last_swap: dict[str, Any] | None = None  # where the time of the last flip went
        self.degraded: dict[str, Any] | None = None  # versions left out of the routing served, and why
        self.staged: dict[str, Any] | None = None  # the candidate loaded ahead of its move, or why it was not
        self._stage_refused: set[str] = set()  # candidates whose artifact failed its check: not tried again
        self._held_back: str | None = None  # the staged candidate this replica loaded and nothing routes to yet
        self._heard_at: float | None = None
        self.last_look_s: float | None = None  # how long the engine took to say what it holds, last time
        self._pins: dict[str | None, int] = defaultdict(int)
        self._last_used: dict[str, float] = {}
        self._pin_lock = threading.Lock()
        self._reconcile_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._loop = threading.Thread(target=self._reconcile_loop, name="deploy-reconcile", daemon=True)
        self._looker = threading.Thread(target=self._look_loop, name="deploy-look", daemon=True)
        self.listener: Any = None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        from deploy.control import ControlListener

        self.listener = ControlListener(
            self.settings.resolved_redis_url(), self.settings.control_channel, self._on_change
        )
        self.listener.start()  # subscribe first, so a change during the first reconcile is not missed
        self.listener.subscribed.wait(timeout=3)
        self._look()
        self.reconcile()
        # the model and libraries are long-lived: keep them out of the collector's full passes, which
        # otherwise land on a later swap (measured: up to a second on the first promote under load)
        gc.collect()
        gc.freeze()
        self._loop.start()
        self._looker.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self.listener is not None:
            self.listener.stop()
        for thread in (self._loop, self._looker):
            if thread.is_alive():
                thread.join(timeout=5)
        self.backend.close()
        self.engine.dispose()

    def wake(self) -> None:
        self._wake.set()

    def _on_change(self, base_model: str) -> None:
        if base_model in ("", self.base_model):
            self._heard_at = time.perf_counter()
            self._wake.set()

    def _look_loop(self) -> None:
        """Every `reconcile_interval_s`, ask the engine what it holds (a restarted vLLM server holds nothing), on a
        thread of its own: a busy server can take a second to list its models, and a move never waits for that.
        A look that finds a routed version missing wakes the reconcile, which loads it again."""
        while not self._stop.wait(self.settings.reconcile_interval_s):
            try:
                self._look()
            except Exception:  # a failed look must not end the loop; the next one looks again
                log.exception("engine look failed")
                continue
            routing = self.routing
            if routing is not None and not routing.versions() <= set(self.backend.resident):
                self._wake.set()

    def _look(self) -> None:
        t = time.perf_counter()
        self.backend.refresh()
        self.last_look_s = time.perf_counter() - t

    def _reconcile_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.reconcile_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.reconcile()
            except Exception:  # a bad loop turn must not end the loop; the error is in last_error
                log.exception("reconcile failed")

    # ------------------------------------------------------------ reconcile: load, then flip
    def reconcile(self) -> bool:
        """Bring this replica to the registry's routing. Returns True when it serves the desired routing."""
        with self._reconcile_lock:
            t0 = time.perf_counter()
            heard, self._heard_at = self._heard_at, None
            self.last_reconcile_at = time.time()
            phases: dict[str, float | str] = {"wake_s": t0 - heard} if heard else {}
            t1 = time.perf_counter()
            found = self._read_registry()
            if found is None:
                return False
            desired, versions, waiting = found
            self.desired = desired
            phases["registry_s"] = time.perf_counter() - t1
            current = self.routing
            if (
                current is not None
                and current.generation == desired.generation
                and desired.versions() <= set(self.backend.resident)
            ):
                self._evict(desired)  # adapters pinned by running requests at the last flip may be free now
                self._stage(waiting, desired)
                return True
            failed = self._load_missing(versions, current, desired, phases)
            if failed is None:
                return False
            self._flip(current, desired, failed, phases, t0)
            return not failed

    def _read_registry(self) -> tuple[Routing, dict[str, AdapterVersion], Waiting] | None:
        """The routing, its versions, and (when staging) the newest candidate and the rollback target, read in one
        transaction."""
        from alignloop.core.db import session_scope
        from deploy import registry

        try:
            with session_scope(self.engine) as session:
                desired = registry.get_routing(session, self.base_model)
                versions = {v: registry.get_version(session, v) for v in desired.versions()}
                waiting = Waiting()
                if self.settings.stage_candidates:
                    waiting = Waiting(
                        registry.newest_candidate(session, self.base_model),
                        registry.rollback_target(session, self.base_model, desired.active),
                    )
                return desired, versions, waiting
        except Exception as exc:  # noqa: BLE001 - any failure to read means: keep serving, say why
            self.last_error = f"registry unreachable: {exc}"[:500]
            log.warning("%s", self.last_error)
            return None

    def _load_missing(
        self,
        versions: dict[str, AdapterVersion],
        current: Routing | None,
        desired: Routing,
        phases: dict[str, float | str],
    ) -> dict[str, str] | None:
        """Load every routed version the backend lacks; the versions that failed at start-up, or None when one
        failed later (the replica then keeps serving what it serves)."""
        from deploy import registry

        failed: dict[str, str] = {}
        for v, info in versions.items():
            if v in self.backend.resident:
                continue
            try:
                if info.base_model != self.base_model:
                    raise ServingError(
                        f"adapter {v!r} is for base model {info.base_model!r}, this replica serves {self.base_model!r}"
                    )
                t1 = time.perf_counter()
                artifact = registry.load_version_artifact(info, self.storage)  # sha256, every load
                t2 = time.perf_counter()
                held, mode = self.backend.install(v, artifact, self._spare_slot(current, desired))
                phases.update(
                    {
                        f"verify_{v}_s": t2 - t1,
                        f"install_wait_{v}_s": time.perf_counter() - t2 - held,
                        f"install_{v}_s": held,
                        f"install_{v}_mode": mode,
                    }
                )
            except Exception as exc:  # noqa: BLE001 - a refused adapter never stops the replica
                self.metrics.load_failures.inc()
                if current is None:  # serving nothing yet: the base (and what did load) beats refusing all
                    failed[v] = f"{type(exc).__name__}: {exc}"[:600]
                    log.error("refused adapter %r at start-up (%s); serving without it", v, exc)
                    continue
                self.last_error = (f"refused adapter {v!r}: {exc}; still serving generation {current.generation}")[:800]
                log.error("%s", self.last_error)
                return None
        return failed

    def _flip(
        self,
        current: Routing | None,
        desired: Routing,
        failed: dict[str, str],
        phases: dict[str, float | str],
        t0: float,
    ) -> None:
        served = without_versions(desired, failed)
        now = time.perf_counter()
        with self._pin_lock:
            self.routing = served  # the flip: one reference, read by every new request
            for v in served.versions():
                self._last_used[v] = now
        self.applied_at = time.time()
        recovered = self.degraded is not None and not failed
        self.degraded = (
            {
                "versions": sorted(failed),
                "error": "; ".join(f"{v}: {e}" for v, e in failed.items()),
                "serving_instead": "the base model" if desired.active in failed else served.active,
            }
            if failed
            else None
        )
        self.metrics.degraded.set(1 if failed else 0)
        self.last_error = None if self.degraded is None else f"degraded: {self.degraded['error']}"[:800]
        if current is None or current.generation != desired.generation or recovered:
            phases["total_s"] = time.perf_counter() - t0
            self.last_swap = {
                "generation": desired.generation,
                **{k: round(x, 4) if isinstance(x, float) else x for k, x in phases.items()},
            }
            self.metrics.swaps.inc()
            self.metrics.swap_seconds.observe(float(phases["total_s"]))
            log.info(
                "serving generation %s: active=%s canary=%s (%.1f%%)",
                desired.generation,
                desired.active,
                desired.canary,
                100 * desired.canary_share,
            )
        self._evict(desired)
        self.metrics.generation.set(desired.generation)

    def _stage(self, waiting: Waiting, routing: Routing) -> None:
        """Load the newest candidate ahead of its move: into a free slot, or else in place of the least recently
        used version nothing routes to, runs on, or rolls back to; never past `max_resident`. Verified like any
        load; one whose artifact fails is not tried again. Runs only when the replica serves the registry's
        routing."""
        from deploy import registry

        candidate = waiting.candidate
        self._give_back_staged(routing, candidate)
        resident = set(self.backend.resident)
        if candidate is None or candidate.version in resident | routing.versions() | self._stage_refused:
            return  # nothing waiting (or staging off: `_read_registry` then reads no candidate), or already done
        reuse = None
        if len(resident) >= self.settings.max_resident:
            back = {waiting.rollback_target} if waiting.rollback_target else set()
            reuse = self._free_slot(routing.versions() | back)
            if reuse is None:
                return  # every slot routed, running or the rollback target: the load waits for the move
        v = candidate.version
        try:
            artifact = registry.load_version_artifact(candidate, self.storage)  # sha256, like every load
            held, mode = self.backend.install(v, artifact, reuse)
        except Exception as exc:  # noqa: BLE001 - a candidate that fails its check waits for its move to be refused
            self._stage_refused.add(v)
            self.staged = {"version": v, "error": f"{type(exc).__name__}: {exc}"[:600]}
            log.warning("not staging candidate %r: %s", v, exc)
            return
        with self._pin_lock:
            self._last_used[v] = time.perf_counter()
        self._held_back, self.staged = v, {"version": v, "install_s": round(held, 4), "mode": mode}
        log.info("staged candidate %r (%s, %.3f s)", v, mode, held)
        self.metrics.resident.set(len(self.backend.resident))

    def _give_back_staged(self, routing: Routing, candidate: AdapterVersion | None) -> None:
        """The staged version's move came (it is an ordinary routed version from now on), or it was rejected or
        superseded before its move: its slot goes back (unless a request runs on it)."""
        held_back = self._held_back
        if held_back is not None and held_back in routing.versions():
            self._held_back = self.staged = None
        elif held_back is not None and held_back != (candidate.version if candidate else None):
            with self._pin_lock:
                free = held_back not in self._pinned()
            if free:
                self.backend.remove(held_back)
                self._last_used.pop(held_back, None)
                self._held_back = self.staged = None

    def _spare_slot(self, current: Routing | None, desired: Routing) -> str | None:
        """When the backend is full: the least recently used version that nothing routes to or runs on, whose
        slot the next load may overwrite in place (requests route by `self.routing`, so neither the current
        nor the desired versions can be taken)."""
        return self._free_slot(desired.versions() | (current.versions() if current is not None else set()))

    def _free_slot(self, keep: set[str]) -> str | None:
        """When the backend is full: the least recently used version not in `keep` and not running."""
        with self._pin_lock:
            spare = choose_evictions(
                self.backend.resident,
                self._last_used,
                keep=keep,
                pinned=self._pinned(),
                max_resident=self.settings.max_resident - 1,
            )
        if spare:
            self._last_used.pop(spare[0], None)
            return spare[0]
        return None

    def _evict(self, routing: Routing) -> None:
        """Unload least recently used adapters beyond max_resident; never a routed one or one a request holds."""
        with self._pin_lock:
            victims = choose_evictions(
                self.backend.resident,
                self._last_used,
                keep=routing.versions(),
                pinned=self._pinned(),
                max_resident=self.settings.max_resident,
            )
        for v in victims:
            self.backend.remove(v)
            self._last_used.pop(v, None)
        self.metrics.resident.set(len(self.backend.resident))

    def _pinned(self) -> set[str]:
        return {v for v, n in self._pins.items() if n > 0 and v}

    # ------------------------------------------------------------ requests
    def pin(self, user: str | None, asked: str | None = None) -> tuple[Routing, str | None]:
        """The routing now and the version it gives `user` (or the served version the request names), held so
        no flip unloads it under the request; `release` it when the answer is done."""
        with self._pin_lock:
            routing = self.routing
            if routing is None:
                raise ServingError(f"replica not ready: {self.last_error or 'first reconcile still running'}")
            version = asked if asked is not None and asked in routing.versions() else choose_version(routing, user)
            self._pins[version] += 1
            if version is not None:
                self._last_used[version] = time.perf_counter()
        return routing, version

    def release(self, version: str | None) -> None:
        with self._pin_lock:
            self._pins[version] -= 1

    def health(self) -> dict[str, Any]:
        r, d = self.routing, self.desired
        return {
            "status": "starting"
            if r is None
            else "degraded"
            if self.degraded
            else ("stale" if d and d.generation != r.generation else "ok"),
            "replica_id": self.settings.replica_id,
            "base_model": self.base_model,
            "model": self.model_name,
            "backend": self.backend.health(),
            "serving": None
            if r is None
            else {"active": r.active, "canary": r.canary, "canary_share": r.canary_share, "generation": r.generation},
            "desired_generation": None if d is None else d.generation,
            "resident": sorted(self.backend.resident),
            "applied_at": self.applied_at,
            "last_reconcile_at": self.last_reconcile_at,
            "last_look_s": self.last_look_s,
            "last_error": self.last_error,
            "last_swap": self.last_swap,
            "control_channel_subscribed": bool(self.listener and self.listener.subscribed.is_set()),
            "degraded": self.degraded,
            "staged": self.staged,
        }


def without_versions(routing: Routing, failed: dict[str, str]) -> Routing:
    """`routing` less the versions that failed to load: the base serves in place of a failed active."""
    if not failed:
        return routing
    canary = routing.canary if routing.canary not in failed else None
    return routing.model_copy(
        update={
            "active": routing.active if routing.active not in failed else None,
            "canary": canary,
            "canary_share": routing.canary_share if canary else 0.0,
        }
    )
