"""The router's Prometheus metrics, one registry per app (tests run several in one process)."""

from __future__ import annotations


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "alignloop_deploy_requests",
            "chat completions answered",
            ["adapter_version", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram("alignloop_deploy_request_seconds", "chat completion latency", registry=self.registry)
        self.swaps = Counter("alignloop_deploy_swaps", "routing flips applied", registry=self.registry)
        self.swap_seconds = Histogram(
            "alignloop_deploy_swap_seconds",
            "load-and-flip time of a routing change",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.load_failures = Counter(
            "alignloop_deploy_load_failures", "adapters refused on load (hash, format)", registry=self.registry
        )
        self.resident = Gauge("alignloop_deploy_resident_adapters", "adapters loaded", registry=self.registry)
        self.generation = Gauge(
            "alignloop_deploy_routing_generation", "routing generation served", registry=self.registry
        )
        self.refused = Counter(
            "alignloop_deploy_refused",
            "chat requests turned away at the door, by HTTP status (401 key, 413 size, 429 rate or queue, 504 timeout)",
            ["status"],
            registry=self.registry,
        )
        self.degraded = Gauge(
            "alignloop_deploy_degraded",
            "1 while a replica serves less than the routing "
            "(an adapter failed to load when it started, so the base answers instead)",
            registry=self.registry,
        )
        self.engine_errors = Counter(
            "alignloop_deploy_engine_errors",
            "engine calls that failed and were retried on another engine replica (vLLM backend)",
            ["engine"],
            registry=self.registry,
        )
