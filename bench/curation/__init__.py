"""Curation benchmarks: a seeded attacked-stream generator, its scorer and the throughput/latency run."""
