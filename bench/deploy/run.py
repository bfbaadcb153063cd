"""Deploy benchmark: adapter swap vs full model reload, load time with 1 vs 50 adapters resident, tokens/s.

    python bench/deploy/run.py            # writes bench/results/deploy.json
    python bench/deploy/run.py --quick    # fewer repeats, for a smoke run

Every number is a median over repeats in this one process; the ratios (against a full reload, against the
base model) are what to compare across machines, since absolute times drift with load.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results" / "deploy.json"


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def med_ms(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1000, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-model", help="a HF model dir; default: a ~2M-param random tiny Llama built here")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps numbers comparable)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    import peft
    import torch
    import transformers
    from peft import PeftModel
    from peft.utils.hotswap import hotswap_adapter
    from transformers import AutoModelForCausalLM

    from deploy.artifacts import load_artifact_dir
    from deploy.runtime import ModelHost, prepare_adapter
    from tests.support.models import PROMPT, AdapterFactory, build_tiny_base_model

    torch.set_num_threads(args.threads)
    reps = 5 if args.quick else 15
    n_many = 50
    work = Path(tempfile.mkdtemp(prefix="alignloop-bench-deploy-"))
    base_dir = Path(args.base_model) if args.base_model else build_tiny_base_model(work / "base", hidden=256, layers=3)
    factory = AdapterFactory(base_dir)
    sources = [factory.build(work / "adapters" / f"b{i}", f"b{i}", seed=i + 1) for i in range(n_many + 2)]
    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(base_dir).parameters())

    # -------- swap: alignloop's path (read + sha256 verify + decode + install) vs PEFT's options.
    # new slot: add_adapter under a new name, then drop the old; in place: a full host (4 resident) overwrites
    # its least recently used slot, which is what a long-running replica does
    host = ModelHost(str(base_dir), torch_threads=args.threads)
    host.install(prepare_adapter(load_artifact_dir(sources[0])))
    state = {"i": 1, "current": "b0"}

    def alignloop_swap():
        src = sources[state["i"] % len(sources)]
        art = load_artifact_dir(src)
        host.install(prepare_adapter(art))
        host.remove(state["current"])
        state["current"], state["i"] = art.manifest.version, state["i"] + 1

    alignloop_swap()  # warm-up
    swap = timed(alignloop_swap, reps)

    full_host = ModelHost(str(base_dir), torch_threads=args.threads)
    lru: list[str] = []
    for src in sources[n_many - 4 : n_many]:
        full_host.install(prepare_adapter(load_artifact_dir(src)))
        lru.append(load_artifact_dir(src).manifest.version)
    slot_i = {"i": 0}

    def alignloop_swap_in_place():
        art = load_artifact_dir(sources[slot_i["i"] % (n_many - 4)])
        full_host.install(prepare_adapter(art), reuse=lru.pop(0))
        lru.append(art.manifest.version)
        slot_i["i"] += 1
        assert full_host.last_install_mode.startswith("hotswap"), full_host.last_install_mode

    alignloop_swap_in_place()
    swap_in_place = timed(alignloop_swap_in_place, reps)
    full_host.close()

    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir), str(sources[0]), adapter_name="a0"
    ).eval()
    cnt = {"i": 1}

    def peft_load_set_delete():
        name, old = f"a{cnt['i']}", f"a{cnt['i'] - 1}"
        peft_model.load_adapter(str(sources[cnt["i"] % len(sources)]), adapter_name=name)
        peft_model.set_adapter(name)
        peft_model.delete_adapter(old)
        cnt["i"] += 1

    peft_load_set_delete()
    load_set_delete = timed(peft_load_set_delete, reps)
    hs = {"i": 0}

    def peft_hotswap():
        hotswap_adapter(
            peft_model, str(sources[hs["i"] % len(sources)]), adapter_name=f"a{cnt['i'] - 1}", torch_device="cpu"
        )
        hs["i"] += 1

    peft_hotswap()
    hotswap = timed(peft_hotswap, reps)

    def full_reload():
        m = AutoModelForCausalLM.from_pretrained(base_dir)
        PeftModel.from_pretrained(m, str(sources[1])).eval()

    full_reload()
    reload_ = timed(full_reload, max(3, reps // 3))

    # -------- load time with 1 vs 50 adapters resident; the two sides alternate so load drift hits both
    def resident_host(n: int) -> ModelHost:
        h = ModelHost(str(base_dir), torch_threads=args.threads)
        for src in sources[:n]:
            h.install(prepare_adapter(load_artifact_dir(src)))
        return h

    probes = [prepare_adapter(load_artifact_dir(s)) for s in sources[n_many : n_many + 2]]
    hosts = {1: resident_host(1), n_many: resident_host(n_many)}
    install: dict[int, list[float]] = {1: [], n_many: []}
    for _ in range(max(2, reps // 2)):
        for p in probes:
            for n, h in hosts.items():
                t0 = time.perf_counter()
                h.install(p)
                install[n].append(time.perf_counter() - t0)
                h.remove(p.version)
    for h in hosts.values():
        h.close()
    install_1, install_50 = install[1], install[n_many]

    def peft_with(n: int):
        m = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base_dir), str(sources[0]), adapter_name="r0"
        )
        for i in range(1, n):
            m.load_adapter(str(sources[i]), adapter_name=f"r{i}")
        return m

    peft_models = {1: peft_with(1), n_many: peft_with(n_many)}
    peft_times: dict[int, list[float]] = {1: [], n_many: []}
    for _ in range(max(2, reps // 2)):
        for n, m in peft_models.items():
            t0 = time.perf_counter()
            m.load_adapter(str(sources[n_many]), adapter_name="probe")
            peft_times[n].append(time.perf_counter() - t0)
            m.delete_adapter("probe")
    peft_1, peft_50 = peft_times[1], peft_times[n_many]
    del peft_models

    # the serving path: a host that has swapped 2 x n_many times with at most 4 resident (LRU) against a
    # fresh one, alternating: flat means the long-lived replica swaps as fast as a new one
    def churn(h: ModelHost, resident: list[str], p) -> float:
        t0 = time.perf_counter()
        h.install(p, reuse=resident.pop(0) if len(resident) >= 4 else None)
        dt = time.perf_counter() - t0
        resident.append(p.version)
        return dt

    cycle = [prepare_adapter(load_artifact_dir(s)) for s in sources[:12]]
    old_host, old_res = ModelHost(str(base_dir), torch_threads=args.threads), []
    for k in range(2 * n_many):
        churn(old_host, old_res, cycle[k % len(cycle)])
    new_host, new_res = ModelHost(str(base_dir), torch_threads=args.threads), []
    for k in range(2 * n_many - 4, 2 * n_many):  # the same 4 resident as the long-lived host: only age differs
        churn(new_host, new_res, cycle[k % len(cycle)])
    lru_old, lru_new = [], []
    for k in range(2 * n_many, 2 * n_many + 2 * reps):
        p = cycle[k % len(cycle)]
        if p.version not in old_res:
            lru_old.append(churn(old_host, old_res, p))
        if p.version not in new_res:
            lru_new.append(churn(new_host, new_res, p))
    old_host.close()
    new_host.close()

    # -------- tokens/s: base, adapter (unmerged, per-request adapter_names), merged; interleaved so drift hits all
    new_tokens = 32 if args.quick else 64
    tok_reps = 3 if args.quick else 7
    tok = host.tokenizer
    enc = tok.apply_chat_template(
        PROMPT, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    merged = copy.deepcopy(peft_model).merge_and_unload().eval()
    plain = AutoModelForCausalLM.from_pretrained(base_dir).eval()

    def plain_generate(model):
        def run():
            with torch.inference_mode():
                model.generate(**enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)

        return run

    def host_generate(version):
        return lambda: host.generate_future(version, PROMPT, new_tokens, 0.0, None).result()

    variants = {
        "base_plain_model": plain_generate(plain),
        "base_via_peft_model": host_generate(None),
        "adapter_unmerged": host_generate(state["current"]),
        "merged": plain_generate(merged),
    }
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():
        fn()  # warm-up
    for _ in range(tok_reps):
        for k, fn in variants.items():
            samples[k] += timed(fn, 1)
    tps = {k: round(new_tokens / statistics.median(v), 1) for k, v in samples.items()}
    tps_plain, tps_base, tps_adapter, tps_merged = (
        tps["base_plain_model"],
        tps["base_via_peft_model"],
        tps["adapter_unmerged"],
        tps["merged"],
    )
    host.close()

    result = {
        "what": "alignloop deploy: adapter hot swap vs full reload, load time vs resident count, tokens/s",
        "command": "python bench/deploy/run.py" + (" --quick" if args.quick else ""),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "torch_threads": args.threads,
        },
        "model": {
            "base": str(base_dir)
            if args.base_model
            else "random tiny Llama (tests/support/models.py, hidden 256, 3 layers)",
            "params": n_params,
            "adapter": "LoRA r=4 on q_proj, v_proj",
        },
        "swap": {
            "alignloop_swap_new_slot_ms": med_ms(swap),
            "alignloop_swap_in_place_ms": med_ms(swap_in_place),
            "peft_load_set_delete_ms": med_ms(load_set_delete),
            "peft_hotswap_adapter_ms": med_ms(hotswap),
            "full_reload_ms": med_ms(reload_),
            "full_reload_over_alignloop_swap_new_slot": round(statistics.median(reload_) / statistics.median(swap), 1),
            "full_reload_over_alignloop_swap_in_place": round(
                statistics.median(reload_) / statistics.median(swap_in_place), 1
            ),
            "note": "alignloop swaps include reading every file and its sha256 check; full reload = base + adapter",
        },
        "load_vs_resident": {
            "alignloop_install_ms_1_resident": med_ms(install_1),
            f"alignloop_install_ms_{n_many}_resident": med_ms(install_50),
            f"alignloop_ratio_{n_many}_over_1": round(statistics.median(install_50) / statistics.median(install_1), 2),
            "peft_load_adapter_ms_1_resident": med_ms(peft_1),
            f"peft_load_adapter_ms_{n_many}_resident": med_ms(peft_50),
            f"peft_ratio_{n_many}_over_1": round(statistics.median(peft_50) / statistics.median(peft_1), 2),
            f"serving_lru4_install_ms_after_{2 * n_many}_swaps": med_ms(lru_old),
            "serving_lru4_install_ms_fresh_host": med_ms(lru_new),
            "serving_lru4_ratio_long_lived_over_fresh": round(
                statistics.median(lru_old) / statistics.median(lru_new), 2
            ),
            "note": "serving keeps at most max_resident adapters (LRU): swap cost stays at the few-resident level",
        },
        "tokens_per_s": {
            "new_tokens": new_tokens,
            "batch": 1,
            "base_plain_model": tps_plain,
            "base_via_peft_model": tps_base,
            "adapter_unmerged": tps_adapter,
            "merged": tps_merged,
            "adapter_over_base": round(tps_adapter / tps_plain, 3),
            "merged_over_base": round(tps_merged / tps_plain, 3),
        },
    }
    shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
