"""Unseeded requests queued together share one generate call; each row still answers on its own adapter."""

from __future__ import annotations

from support.models import PROMPT


def test_queued_requests_on_mixed_versions_batch_and_match_their_single_answers(
    tiny_base, adapter_sources, reference_texts
):
    from deploy.artifacts import load_artifact_dir
    from deploy.runtime import ModelHost, prepare_adapter

    host = ModelHost(str(tiny_base), torch_threads=1)
    try:
        for src in adapter_sources.values():
            host.install(prepare_adapter(load_artifact_dir(src)))
        versions = [None, *adapter_sources] * 2
        # hold the worker on one seeded request so the rest queue up and are taken as one batch
        first = host.generate_future("v1", PROMPT, 48, 1.0, 7)
        futures = [host.generate_future(v, PROMPT, 12, 0.0, None) for v in versions]
        first.result()
        texts = [f.result().text for f in futures]
        completions = [f.result() for f in futures]
        stats = dict(host.batch_stats)
    finally:
        host.close()
    assert stats["batches"] >= 1 and stats["rows"] >= 10, stats
    assert texts == [reference_texts[v] for v in versions]
    assert all(c.completion_tokens <= 12 and c.prompt_tokens > 0 for c in completions)


def test_seeded_requests_stay_reproducible_and_text_has_no_control_characters(tiny_base):
    from deploy.runtime import ModelHost

    host = ModelHost(str(tiny_base), torch_threads=1)
    try:
        a = [host.generate_future(None, PROMPT, 24, 1.0, 42) for _ in range(3)]
        b = [host.generate_future(None, PROMPT, 24, 1.0, None) for _ in range(6)]
        texts = [f.result().text for f in a]
        sampled = [f.result().text for f in b]
    finally:
        host.close()
    assert len(set(texts)) == 1  # same seed, same answer, whatever was queued around it
    assert all(not any(ord(ch) < 32 and ch not in "\t\n\r" for ch in t) for t in texts + sampled)
