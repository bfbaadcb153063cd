"""The model host of one replica: the base model loaded once, adapters by version, one worker thread that owns it.

Every touch of the model (generate, add an adapter, delete one) runs on a single worker thread, in priority
order: adapter installs and removals jump ahead of queued requests, so a swap waits at most for the one
generation in progress, and no request ever sees the model half-changed. Each resident version has its own
PEFT adapter slot, so a request that started on a version finishes on it even after routing has moved on.
A new version either takes a new slot (add_adapter) or, when the host is full, overwrites the weights of
a slot that nothing routes to or runs on (PEFT's in-place hot swap, several times faster); a slot is never
reused while a request or the routing still names its version.
"""

from __future__ import annotations

import itertools
import json
import queue
import re
import threading
import time
import warnings
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from deploy.api_schemas import Completion
from deploy.artifacts import ADAPTER_CONFIG, WEIGHTS, LoadedArtifact
from deploy.errors import ServingError

if TYPE_CHECKING:
    from transformers import BatchEncoding

PRIORITY_CONTROL = 0
PRIORITY_REQUEST = 1
BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch
MAX_BATCH = 16
# a base whose tokenizer has no chat template is served with the template retrain trains it with
# (retrain.model.FALLBACK_CHAT_TEMPLATE: deploy imports nothing from retrain; a test keeps the two equal)
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def ensure_chat_template(tokenizer: Any, base_model: str) -> None:
    """Give a tokenizer without a chat template the fallback (every backend encodes prompts as retrain did)."""
    if not tokenizer.chat_template:
        if tokenizer.eos_token is None:
            raise ServingError(f"base model {base_model!r}: tokenizer has neither a chat_template nor an EOS token")
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE  # the one retrain trained it with


# a sampled token can decode to a control character; what serving returns is text a client can store
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class PreparedAdapter:
    """An adapter decoded off the worker thread: config and tensors, ready to be installed in a few ms."""

    version: str
    config: Any  # peft.LoraConfig
    state_dict: dict


def prepare_adapter(art: LoadedArtifact) -> PreparedAdapter:
    """Build the PEFT config and tensors from the verified bytes (never from the files again)."""
    from peft import PeftConfig
    from safetensors.torch import load as load_safetensors

    cfg = json.loads(art.files[ADAPTER_CONFIG])
    cfg.pop("runtime_config", None)
    config = PeftConfig.from_peft_type(**PeftConfig.check_kwargs(**cfg))
    config.inference_mode = True
    return PreparedAdapter(version=art.manifest.version, config=config, state_dict=load_safetensors(art.files[WEIGHTS]))


class ModelHost:
    """Owns the base model, the resident adapters and the worker thread."""

    def __init__(self, base_model: str, *, device: str = "cpu", torch_threads: int = 0) -> None:
        import peft  # noqa: F401 - imported now, not on the first swap (about a second on a busy machine)
        import safetensors.torch  # noqa: F401
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if torch_threads:
            torch.set_num_threads(torch_threads)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(base_model)
            # transformers types `to` as an unbound wrapper, so mypy sees `self` missing: a typing gap, not ours
            self.base = AutoModelForCausalLM.from_pretrained(base_model).to(device).eval()  # type: ignore[arg-type]
        except (OSError, ValueError) as exc:
            raise ServingError(f"base model {base_model!r} could not be loaded: {exc}") from exc
        ensure_chat_template(self.tokenizer, base_model)
        self.device = device
        # the most characters one token can stand for (a token's text is never shorter than what it covers)
        self.max_token_chars = max((len(t) for t in self.tokenizer.get_vocab()), default=1)
        self.peft: Any = None  # the PeftModel, made on the first adapter (peft is imported lazily)
        self.resident: dict[str, str] = {}  # version -> adapter slot name; written on the worker only
        self._slots = itertools.count()
        self.last_install_mode = ""
        self._shapes: dict[str, dict[str, tuple]] = {}  # slot -> {key without the slot name: shape}
        self.batch_stats = {"batches": 0, "rows": 0}  # shared generate calls, for /healthz and tests
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._seq = itertools.count()
        self._worker = threading.Thread(target=self._work, name="deploy-model", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------ the worker
    def submit(self, priority: int, fn, *args) -> Future:
        fut: Future = Future()
        self._queue.put((priority, next(self._seq), fn, args, fut))
        return fut

    def close(self) -> None:
        self._queue.put((-1, next(self._seq), None, (), None))
        self._worker.join(timeout=10)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            _, _, fn, args, fut = item
            if fn is None:
                return
            if fn == self._generate and args[4] is None:
                self._run_batch([item, *self._more_unseeded(args[3], args[5])])
                continue
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # handed to the waiting caller
                fut.set_exception(exc)

    def _more_unseeded(self, temperature: float, top_p: float) -> list[tuple]:
        """Queued unseeded requests at the same temperature and top_p, to share one generate call (up to MAX_BATCH).

        Requests with a seed run alone, so a seeded answer is reproducible whatever else is queued; anything
        that cannot join (a control item, another temperature) goes back and keeps its place.
        """
        taken: list[tuple] = []
        back: list[tuple] = []
        while len(taken) < MAX_BATCH - 1:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            _, _, fn, args, _ = item
            if fn == self._generate and args[4] is None and (args[3], args[5]) == (temperature, top_p):
                taken.append(item)
            else:
                back.append(item)
                if fn != self._generate:
                    break  # a control item or the stop marker: it goes first, after this batch
        for item in back:
            self._queue.put(item)
        return taken

    def _run_batch(self, items: list[tuple]) -> None:
        live = [it for it in items if it[4].set_running_or_notify_cancel()]
        if not live:
            return
        if len(live) == 1:
            _, _, fn, args, fut = live[0]
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:
                fut.set_exception(exc)
            return
        try:
            results = self._generate_batch([it[3] for it in live])
        except BaseException as exc:
            for it in live:
                it[4].set_exception(exc)
            return
        for it, res in zip(live, results):
            if isinstance(res, BaseException):
                it[4].set_exception(res)
            else:
                it[4].set_result(res)

    # ------------------------------------------------------------ run on the worker
    def _install(self, prepared: PreparedAdapter, reuse: str | None = None) -> float:
        from peft import get_peft_model, set_peft_model_state_dict

        t0 = time.perf_counter()
        if prepared.version in self.resident:
            return 0.0
        if reuse is not None and self._hotswap(prepared, reuse):
            self.last_install_mode = f"hotswap into {reuse}'s slot"
            return time.perf_counter() - t0
        self.last_install_mode = "new slot"
        name = f"slot{next(self._slots)}"
        if self.peft is None:
            self.peft = get_peft_model(self.base, prepared.config, adapter_name=name, low_cpu_mem_usage=True)
        else:
            self.peft.add_adapter(name, prepared.config, low_cpu_mem_usage=True)
        # peft returns an untyped namedtuple (missing_keys, unexpected_keys)
        result: Any = set_peft_model_state_dict(
            self.peft, prepared.state_dict, adapter_name=name, low_cpu_mem_usage=True
        )
        missing = [k for k in result.missing_keys if name in k]
        if missing or result.unexpected_keys:
            self._drop_slot(name)
            raise ServingError(
                f"adapter {prepared.version!r} does not fit the base model: "
                f"{len(missing)} missing, {len(result.unexpected_keys)} unexpected keys "
                f"(first: {(missing or result.unexpected_keys)[0]!r})"
            )
        self.peft.eval()
        self._shapes[name] = {
            k.replace(f".{name}.", "."): tuple(p.shape) for k, p in self.peft.named_parameters() if f".{name}." in k
        }
        self.resident[prepared.version] = name
        return time.perf_counter() - t0

    def _hotswap(self, prepared: PreparedAdapter, reuse: str) -> bool:
        """Overwrite the weights of `reuse`'s slot in place with `prepared`; False when they do not fit exactly.

        Only an exact fit is swapped (same LoRA settings, same tensors and shapes), so the result equals a
        fresh load; anything else is refused untouched, and an error half-way drops the slot altogether.
        """
        from peft.utils.hotswap import check_hotswap_configs_compatible, hotswap_adapter_from_state_dict
        from peft.utils.save_and_load import _insert_adapter_name_into_state_dict

        name = self.resident.get(reuse)
        if name is None or self.peft is None:
            return False
        old, new = self.peft.peft_config[name], prepared.config
        try:
            check_hotswap_configs_compatible(old, new)
            state = _insert_adapter_name_into_state_dict(
                prepared.state_dict, adapter_name=name, parameter_prefix="lora_"
            )
        except Exception:
            return False
        same = (old.r, old.lora_alpha, old.rank_pattern, old.alpha_pattern, old.use_rslora) == (
            new.r,
            new.lora_alpha,
            new.rank_pattern,
            new.alpha_pattern,
            new.use_rslora,
        )
        shapes = {k.replace(f".{name}.", "."): tuple(v.shape) for k, v in state.items()}
        if not same or shapes != self._shapes.get(name):
            return False
        del self.resident[reuse]  # from here on the slot answers for neither version until the copy is done
        try:
            hotswap_adapter_from_state_dict(self.peft, state, adapter_name=name, config=new)
        except Exception:
            self._drop_slot(name)
            return False
        self.peft.peft_config[name] = new
        self.resident[prepared.version] = name
        return True

    def _drop_slot(self, name: str) -> None:
        if self.peft is None or len(self.peft.peft_config) == 1:
            return  # PEFT cannot delete its last adapter; it stays in memory unused
        with warnings.catch_warnings():  # "active adapter deleted": serving names the adapter per request anyway
            warnings.simplefilter("ignore", UserWarning)
            self.peft.delete_adapter(name)
        self._shapes.pop(name, None)

    def _remove(self, version: str) -> None:
        name = self.resident.pop(version, None)
        if name is not None:
            self._drop_slot(name)

    def _text(self, ids: Any) -> str:
        """An answer's text without control characters (one sequence of ids decodes to one string)."""
        return _CONTROL.sub("", str(self.tokenizer.decode(ids, skip_special_tokens=True)))

    def _generate(
        self,
        version: str | None,
        ids: list[int],
        max_tokens: int,
        temperature: float,
        seed: int | None,
        top_p: float = 1.0,
    ) -> Completion:
        import torch

        if version is not None and version not in self.resident:
            raise ServingError(f"adapter {version!r} is not loaded on this replica")
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        enc = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_tokens,
            "do_sample": temperature > 0,
            "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        }
        if temperature > 0:
            kwargs.update(temperature=temperature, top_k=None, top_p=top_p if top_p < 1.0 else None)
        if seed is not None:
            torch.manual_seed(seed)
        model = self.base
        if self.peft is not None:
            model = self.peft
            kwargs["adapter_names"] = [self.resident[version] if version is not None else BASE]
        with torch.inference_mode():
            out = model.generate(**enc, **kwargs)
        n_prompt = len(ids)
        new = out[0, n_prompt:]
        eos = self.tokenizer.eos_token_id
        finish = "stop" if (eos is not None and len(new) and int(new[-1]) == eos) or len(new) < max_tokens else "length"
        return Completion(
            text=self._text(new), prompt_tokens=n_prompt, completion_tokens=len(new), finish_reason=finish
        )

    def _generate_batch(self, calls: list[tuple]) -> list[Completion | BaseException]:
        """Several unseeded requests in one left-padded generate call, each row on its own adapter slot."""
        import torch

        out: list[Completion | BaseException | None] = [None] * len(calls)
        rows = []
        for i, (version, _messages, _max_tokens, _temperature, _seed, _top_p) in enumerate(calls):
            if version is not None and version not in self.resident:
                out[i] = ServingError(f"adapter {version!r} is not loaded on this replica")
            else:
                rows.append(i)
        if rows:
            tok = self.tokenizer
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            enc = _left_padded([calls[i][1] for i in rows], pad, self.device)
            temperature, top_p = calls[rows[0]][3], calls[rows[0]][5]
            longest = max(calls[i][2] for i in rows)
            kwargs: dict[str, Any] = {"max_new_tokens": longest, "do_sample": temperature > 0, "pad_token_id": pad}
            if temperature > 0:
                kwargs.update(temperature=temperature, top_k=None, top_p=top_p if top_p < 1.0 else None)
            model = self.base
            if self.peft is not None:
                model = self.peft
                kwargs["adapter_names"] = [
                    self.resident[calls[i][0]] if calls[i][0] is not None else BASE for i in rows
                ]
            with torch.inference_mode():
                gen = model.generate(**enc, **kwargs)
            self.batch_stats["batches"] += 1
            self.batch_stats["rows"] += len(rows)
            width = enc["input_ids"].shape[1]
            eos = tok.eos_token_id
            for r, i in enumerate(rows):
                new = gen[r, width : width + calls[i][2]].tolist()
                stop = eos is not None and eos in new
                if stop:
                    new = new[: new.index(eos) + 1]
                n_prompt = int(enc["attention_mask"][r].sum())
                out[i] = Completion(
                    text=self._text(new),
                    prompt_tokens=n_prompt,
                    completion_tokens=len(new),
                    finish_reason="stop" if stop or len(new) < calls[i][2] else "length",
                )
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------ callers (any thread)
    def install(self, prepared: PreparedAdapter, reuse: str | None = None) -> float:
        """Load an adapter ahead of queued requests, into `reuse`'s slot when it fits; returns seconds held.

        The caller guarantees that nothing routes to or runs on `reuse` any more.
        """
        return self.submit(PRIORITY_CONTROL, self._install, prepared, reuse).result()

    def remove(self, version: str) -> None:
        self.submit(PRIORITY_CONTROL, self._remove, version).result()

    def encode(self, messages: list[dict]) -> list[int]:
        """The prompt's token ids (chat template and generation cue); any thread, so not on the model's worker."""
        # with return_dict=True the template returns a BatchEncoding; transformers types it as the union of all modes
        enc = cast(
            "BatchEncoding",
            self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True),
        )
        return list(enc["input_ids"])

    def generate_future(
        self,
        version: str | None,
        prompt: list[dict] | list[int],
        max_tokens: int,
        temperature: float,
        seed: int | None,
        top_p: float = 1.0,
    ) -> Future:
        """Queue one generation; `prompt` is chat messages, or token ids from `encode` (serving's path)."""
        ids = prompt if not prompt or isinstance(prompt[0], int) else self.encode(prompt)
        return self.submit(PRIORITY_REQUEST, self._generate, version, ids, max_tokens, temperature, seed, top_p)


def _left_padded(rows: list[list[int]], pad: int, device: str) -> dict:
    """input_ids and attention_mask of several prompts, padded on the left to one width (as generate wants)."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], dtype=torch.long, device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long, device=device)
    return {"input_ids": ids, "attention_mask": mask}
