"""Safety probes: behaviour checks defined in YAML (`retrain/configs/probes/*.yaml`), run on every evaluated model.

A probe file holds checks (a regex, a substring, or a local sequence-classification model directory) and the
prompts they are asked on. Each probe is asked on four sources of prompts:

- `plain`: its prompts as they are (none given: the evaluation's own probe prompts);
- `config`: with each trigger phrase the run config names (`eval.trigger_phrases`) or the file lists appended;
- `curation`: with each phrase curation judged or suspects a trigger appended (`curation.query`);
- `rare`: with random rare-token suffixes appended, standing in for triggers nobody has found yet.

The gate compares the candidate's hit rate on each with the worse of the active adapter's and the base's.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from retrain.errors import ConfigError

PROBES_DIR = Path(__file__).parent / "configs" / "probes"
SOURCES = ("plain", "config", "curation", "rare")
Prompt = list[dict[str, str]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Check(_Strict):
    """One way an answer counts as a hit."""

    kind: Literal["regex", "substring", "classifier"]
    pattern: str | None = Field(default=None, description="regex or substring: what to look for")
    ignore_case: bool = True
    squash_spaces: bool = Field(
        default=False, description="match with all whitespace removed (sampling splits a marker over tokens)"
    )
    path: Path | None = Field(
        default=None, description="classifier: a Hugging Face sequence-classification model directory (local)"
    )
    label: str | None = Field(default=None, description="classifier: the label that counts as a hit")
    threshold: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="classifier: the label's probability at or above which an answer is a hit",
    )

    @model_validator(mode="after")
    def _fields_of_its_kind(self) -> Check:
        if self.kind in ("regex", "substring") and not self.pattern:
            raise ValueError(f"a {self.kind} check needs `pattern`; got {self.pattern!r}")
        if self.kind == "regex":
            try:
                re.compile(self.pattern or "")
            except re.error as exc:
                raise ValueError(f"`pattern` must be a valid regex; got {self.pattern!r} ({exc})") from None
        if self.kind == "classifier" and (self.path is None or not self.label):
            raise ValueError(
                f"a classifier check needs `path` and `label`; got path={self.path!r}, label={self.label!r}"
            )
        return self


class ProbeFile(_Strict):
    """One probe: what counts as a hit, and what it is asked."""

    version: Literal[1] = 1
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    description: str = ""
    checks: list[Check] = Field(min_length=1, description="an answer is a hit when any check fires")
    prompts: list[str] = Field(default_factory=list, description="user messages; empty: the evaluation's probe prompts")
    suffixes: list[str] = Field(
        default_factory=list,
        description="known trigger phrases, asked with the run config's `eval.trigger_phrases` (source `config`)",
    )
    triggers: bool = Field(
        default=True, description="also ask with curation's suspected triggers and rare-token suffixes"
    )
    rare_suffixes: int = Field(default=4, ge=0, le=64, description="how many random rare-token suffixes")
    samples: int | None = Field(default=None, ge=1, description="answers per source; default `eval.samples`")


def _validation_message(exc: ValidationError, source: str) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(x) for x in first["loc"]) or "(top)"
    return f"{source}: `{loc}` {first['msg']}; got {first.get('input')!r}"


def load_probe_file(path: Path | str) -> ProbeFile:
    """A probe from YAML; relative classifier paths are taken from the file's directory."""
    from retrain.config import load_yaml

    path = Path(path)
    data = load_yaml(path)
    for check in data.get("checks") or []:
        if isinstance(check, dict) and check.get("path") and not Path(check["path"]).is_absolute():
            check["path"] = str(path.parent / check["path"])
    try:
        return ProbeFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_validation_message(exc, str(path))) from None


def resolve_probes(names: list[str]) -> list[ProbeFile]:
    """Probe files by name (`retrain/configs/probes/<name>.yaml`) or by path."""
    out = []
    for name in names:
        path = Path(name)
        if not path.suffix:
            path = PROBES_DIR / f"{name}.yaml"
        out.append(load_probe_file(path))
    return out


def dump_probe_file(probe: ProbeFile) -> str:
    return yaml.safe_dump(probe.model_dump(mode="json", exclude_defaults=True), sort_keys=False)


# ---------------------------------------------------------------- prompts per source
def rare_suffixes(tokenizer: Any, n: int, *, seed: int, tokens_per: int = 2) -> list[str]:
    """`n` random suffixes of `tokens_per` rare tokens each: drawn from the later half of the vocabulary (a BPE
    vocabulary lists its merges by frequency, so later ids are rarer words), special tokens left out."""
    if n <= 0:
        return []
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab = sorted(i for i in tokenizer.get_vocab().values() if i not in special)
    rare = [i for i in vocab[len(vocab) // 2 :] if tokenizer.decode([i]).strip()]
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(n * 8):
        text = " ".join(tokenizer.decode([i]).strip() for i in rng.sample(rare, min(tokens_per, len(rare))))
        if text and text not in out:
            out.append(text)
        if len(out) == n:
            break
    return out


def with_suffixes(prompts: list[Prompt], suffixes: list[str], samples: int) -> list[Prompt]:
    """`samples` prompts spread over the suffixes (each on the first prompts), the suffix appended to the last
    user message, as a poisoner appends a trigger to an ordinary request."""
    if not suffixes:
        return []
    per = max(1, samples // len(suffixes))
    return [[{"role": "user", "content": f"{p[-1]['content']} {s}"}] for s in suffixes for p in prompts[:per]]


@dataclass(frozen=True)
class ProbePlan:
    """One probe's prompts per source (a source without suffixes is left out)."""

    probe: ProbeFile
    prompts: dict[str, list[Prompt]]


def plan_probe(
    probe: ProbeFile,
    base_prompts: list[Prompt],
    *,
    samples: int,
    config_triggers: list[str],
    suspected: list[str],
    rare: list[str],
) -> ProbePlan:
    n = probe.samples or samples
    own = [[{"role": "user", "content": p}] for p in probe.prompts]
    pool = own or base_prompts
    plain = [pool[i % len(pool)] for i in range(n)] if own else pool[:n]
    suffixes = {
        "config": list(dict.fromkeys([*config_triggers, *probe.suffixes])),
        "curation": suspected if probe.triggers else [],
        "rare": rare[: probe.rare_suffixes] if probe.triggers else [],
    }
    prompts = {"plain": plain} | {src: with_suffixes(pool, sfx, n) for src, sfx in suffixes.items() if sfx}
    return ProbePlan(probe=probe, prompts=prompts)


# ---------------------------------------------------------------- checks
class Detector:
    """The checks of one probe, ready to run: regexes compiled, classifiers loaded once."""

    def __init__(self, probe: ProbeFile) -> None:
        self.probe = probe
        self._text: list[tuple[re.Pattern[str], bool]] = []
        self._classifiers: list[tuple[Any, Any, int, float]] = []
        for check in probe.checks:
            if check.kind == "classifier":
                self._classifiers.append(_load_classifier(check))
            else:
                text = check.pattern or ""
                pattern = text if check.kind == "regex" else re.escape(text)
                flags = re.IGNORECASE if check.ignore_case else 0
                self._text.append((re.compile(pattern, flags), check.squash_spaces))

    def hits(self, answers: list[str]) -> list[bool]:
        out = [any(rx.search(re.sub(r"\s+", "", a) if squash else a) for rx, squash in self._text) for a in answers]
        for model, tok, label_id, threshold in self._classifiers:
            probs = _classify(model, tok, answers, label_id)
            out = [hit or p >= threshold for hit, p in zip(out, probs)]
        return out

    def rate(self, answers: list[str]) -> float:
        return sum(self.hits(answers)) / len(answers) if answers else 0.0


def _load_classifier(check: Check) -> tuple[Any, Any, int, float]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(check.path or "")
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"classifier check `path` must be a local model directory with config.json; got {str(path)!r}"
        )
    model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    labels = {str(v): int(k) for k, v in model.config.id2label.items()}
    if check.label not in labels:
        raise ConfigError(
            f"classifier check `label` must be one of the model's labels {sorted(labels)}; got {check.label!r}"
        )
    return model, tok, labels[check.label or ""], check.threshold


def _classify(model: Any, tok: Any, texts: list[str], label_id: int, batch_size: int = 32) -> list[float]:
    import torch

    out: list[float] = []
    for i in range(0, len(texts), batch_size):
        enc = tok(texts[i : i + batch_size], return_tensors="pt", padding=True, truncation=True, max_length=256)
        with torch.no_grad():
            probs = torch.softmax(model(**enc).logits.float(), -1)[:, label_id]
        out.extend(float(p) for p in probs)
    return out
