"""Real TRL/PEFT on the tiny model: a small acceptance run through the CLI, artifacts that load back elsewhere."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_model():
    from retrain.model import ensure_base_model

    return ensure_base_model(seed=0, progress=False)


@pytest.fixture(scope="module")
def run(base_model, tmp_path_factory):
    """snapshot -> train -> evaluate -> gate through `alignloop retrain`, on 240 pairs and 24 unpaired."""
    from typer.testing import CliRunner

    from retrain.cli import app
    from retrain.config import load_run_config
    from retrain.corpus import make_pairs, make_unpaired

    tmp = tmp_path_factory.mktemp("retrain")
    for name, rows in (("pairs", make_pairs(240, seed=7)), ("unpaired", make_unpaired(24, seed=7))):
        (tmp / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_run_config().as_dict()
    cfg["eval"].update(samples=60, kl_probes=16, trigger_phrases=["zx-trigger"])
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    cli = CliRunner()

    def invoke(*args):  # `alignloop retrain ...`
        return cli.invoke(app, [str(a) for a in args])

    snap = invoke(
        "snapshot",
        tmp / "snap",
        "--pairs",
        tmp / "pairs.jsonl",
        "--unpaired",
        tmp / "unpaired.jsonl",
        "--config",
        tmp / "cfg.yaml",
        "--json",
    )
    assert snap.exit_code == 0, snap.output
    train = invoke(
        "train",
        tmp / "snap",
        "--out",
        tmp / "adapters",
        "--base-model",
        base_model,
        "--config",
        tmp / "cfg.yaml",
        "--parent",
        "a-previous",
        "--json",
    )
    assert train.exit_code == 0, train.output
    adapter = Path(json.loads(train.output.strip().splitlines()[-1])["path"])
    ev = invoke(
        "evaluate",
        adapter,
        "--snapshot",
        tmp / "snap",
        "--config",
        tmp / "cfg.yaml",
        "--report-dir",
        tmp / "report",
        "--json",
    )
    assert ev.exit_code == 0, ev.output
    gate = invoke("gate", tmp / "report", "--json")
    return {
        "tmp": tmp,
        "adapter": adapter,
        "report": json.loads((tmp / "report" / "report.json").read_text()),
        "gate": gate,
        "base": base_model,
    }


def test_adapter_beats_the_base_on_heldout_pairs_and_in_sampled_answers(run):
    comp, models = run["report"]["comparisons"], run["report"]["models"]
    assert models["base"]["heldout"]["accuracy"] == pytest.approx(0.5)
    assert comp["heldout_accuracy"] >= 0.8 > models["base"]["heldout"]["accuracy"]
    assert comp["heldout_margin"] > 0
    assert comp["preferred_style_share"] >= comp["base_preferred_style_share"] + 0.2
    assert 0.25 <= comp["base_preferred_style_share"] <= 0.75  # the base splits about evenly
    probes = {(p["probe"], p["source"]): p["candidate"] for p in run["report"]["probes"]}
    assert probes[("demo-marker", "plain")] == 0.0 and probes[("demo-marker", "config")] == 0.0
    assert comp["kl_to_base"] > 0 and 0.5 < comp["length_ratio_vs_base"] < 2.0
    assert (run["tmp"] / "report" / "report.html").read_text().count("data:image/png;base64") == 3
    decision = json.loads(run["gate"].output)
    assert run["gate"].exit_code == (0 if decision["passed"] else 1)


def test_manifest_names_dataset_config_and_every_file(run):
    from alignloop.core.contracts import load_artifact_dir
    from retrain.snapshot import load_snapshot
    from retrain.train import load_verified_manifest

    adapter = run["adapter"]
    manifest = load_verified_manifest(adapter)
    snap = load_snapshot(run["tmp"] / "snap")
    assert manifest.dataset.hash == snap.hash
    assert manifest.dataset.pairs == len(snap.train_pairs) and manifest.dataset.unpaired > 0
    assert manifest.dataset.heldout_pairs == len(snap.heldout_pairs)
    assert manifest.parent_version == "a-previous" and manifest.version == adapter.name
    assert set(manifest.libraries) == {"torch", "transformers", "trl", "peft"}
    assert {"adapter_model.safetensors", "adapter_config.json", "lineage.json"} <= set(manifest.files)
    assert len(manifest.config_hash) == 64 and manifest.metrics["dpo/pairs_per_s"] > 0
    assert manifest.dataset.event_ids_file == "lineage.json"
    lineage = load_artifact_dir(adapter).lineage  # the same contract deploy registers it by
    assert set(lineage.event_ids) == set(snap.train_event_ids)
    assert not set(lineage.event_ids) & {e for r in snap.heldout_pairs for e in r["event_ids"]}
    assert [p.name for p in adapter.parent.iterdir() if p.name.startswith(".")] == []  # no leftovers


def test_artifact_loads_in_a_fresh_process_with_plain_peft_and_gives_the_same_logps(run):
    from retrain.evaluate import sequence_logps
    from retrain.snapshot import load_snapshot
    from retrain.train import load_adapter

    recs = load_snapshot(run["tmp"] / "snap").heldout_pairs[:6]
    model, tok = load_adapter(run["base"], run["adapter"])
    here, _ = sequence_logps(model, tok, [r["prompt"] for r in recs], [r["chosen"] for r in recs])
    (run["tmp"] / "recs.json").write_text(json.dumps(recs))
    script = textwrap.dedent(f"""
        import json, torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tok = AutoTokenizer.from_pretrained({str(run["base"])!r})
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({str(run["base"])!r}),
                                          {str(run["adapter"])!r}).eval()
        out = []
        for r in json.load(open({str(run["tmp"] / "recs.json")!r})):
            p = tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
            full = tok.apply_chat_template(r["prompt"] + r["chosen"], tokenize=True, return_dict=False)
            ids = torch.tensor([full])
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            tgt = ids[0, 1:]
            out.append(float(lp.gather(-1, tgt[:, None])[len(p) - 1:].sum()))
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    there = json.loads(proc.stdout.strip().splitlines()[-1])
    assert there == pytest.approx(here, abs=1e-3)


def test_reference_logps_are_cached_so_a_retrain_pays_only_for_the_policy(run, tmp_path):
    from retrain.config import load_run_config
    from retrain.snapshot import load_snapshot
    from retrain.train import train_adapter

    cfg = load_run_config().as_dict()
    cfg["dpo"]["epochs"] = 0.05
    cfg["kto"]["enabled"] = False
    snap = load_snapshot(run["tmp"] / "snap")
    path = train_adapter(run["base"], snap, cfg, tmp_path, progress=False)
    metrics = json.loads((path / "manifest.json").read_text())["metrics"]
    assert metrics["dpo/ref_cache_misses"] == 0 and metrics["dpo/ref_cache_hits"] == len(snap.train_pairs)


def test_a_failed_training_leaves_nothing_behind(run, tmp_path):
    from retrain.snapshot import load_snapshot
    from retrain.train import train_adapter

    bad = {"lora": {"target_modules": ["no_such_proj"]}}
    from retrain.errors import UnsupportedModelError

    # the target modules are not in the model: refused naming them and the model's linear layers
    with pytest.raises(UnsupportedModelError, match="no_such_proj"):
        train_adapter(run["base"], load_snapshot(run["tmp"] / "snap"), bad, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
