"""The evaluation report (what `evaluate` writes and the gate reads) and the gate's result, each one model.

`report.json` on disk is `EvaluationReport.model_dump(mode="json")`; reports written before these models existed
load too (fields added since are optional).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MODELS = ("base", "active", "candidate")


class _Record(BaseModel):
    # fields an older report had and this one dropped (the unsafe rates before probes) are ignored on load
    model_config = ConfigDict(extra="ignore", frozen=True)


class SliceScores(_Record):
    """Preference metrics of one model on one slice of pairs (held-out or safety)."""

    n: int = 0
    accuracy: float | None = None  # DPO implicit-reward accuracy against the base (ties count half)
    margin: float | None = None
    likelihood_accuracy: float | None = None  # reference-free: the chosen answer's mean token log-prob is higher
    chosen_logp_mean: float | None = None


class BehaviourScores(_Record):
    """What one model's sampled answers look like."""

    n: int = 0
    preferred_share: float = 0.0
    unknown_share: float = 0.0
    mean_length_tokens: float = 0.0


class Example(_Record):
    prompt: str
    answer: str


class ProbeScore(_Record):
    """How often one probe's checks fired on one model's answers, for one source of prompt suffixes."""

    probe: str
    source: str  # plain | config | curation | rare (retrain/probes.py)
    n: int
    rate: float


class ModelScores(_Record):
    """Everything measured on one model (base, active or candidate)."""

    heldout: SliceScores
    safety: SliceScores
    behaviour: BehaviourScores
    kl_to_base: float | None = None
    examples: list[Example] = Field(default_factory=list)
    probes: list[ProbeScore] = Field(default_factory=list)


class ProbeComparison(_Record):
    """One probe on one source: the candidate's rate against the worse of the active adapter and the base.

    `increase` is candidate - max(active, base): the candidate fails only when it is worse than both."""

    probe: str
    source: str
    n: int
    candidate: float
    base: float
    active: float | None = None
    increase: float
    increase_se: float | None = None


class Comparisons(_Record):
    """The candidate against the base and the active adapter: what the gate's thresholds read (None: not measured)."""

    heldout_accuracy: float | None = None
    heldout_margin: float | None = None
    accuracy_gain_over_base: float | None = None
    accuracy_gain_over_active: float | None = None
    accuracy_gain_over_active_se: float | None = None
    safety_accuracy: float | None = None
    safety_accuracy_change_vs_reference: float | None = None
    kl_to_base: float | None = None
    preferred_style_share: float | None = None
    base_preferred_style_share: float | None = None
    style_gain_over_active: float | None = None
    style_gain_over_active_se: float | None = None
    length_ratio_vs_base: float | None = None

    def metric(self, name: str) -> float | None:
        """A comparison by its name (the gate policy names metrics); an unknown name is a programming error."""
        if name not in type(self).model_fields:
            raise KeyError(f"`{name}` is not an evaluation comparison; known: {sorted(type(self).model_fields)}")
        value: float | None = getattr(self, name)
        return value


class AdapterRef(_Record):
    version: str
    path: str


class ReportFiles(_Record):
    json_path: str = Field(alias="json")
    html: str

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True, serialize_by_alias=True)


class EvaluationReport(_Record):
    """A candidate adapter evaluated against the active adapter (if any) and the base."""

    candidate: AdapterRef
    active: AdapterRef | None = None
    base_model: str
    snapshot_hash: str
    config_hash: str
    preferred_style: str
    samples: int
    models: dict[str, ModelScores]
    comparisons: Comparisons
    probes: list[ProbeComparison] = Field(default_factory=list)  # safety probes (retrain/probes.py)
    report_files: ReportFiles | None = None


class GateResult(_Record):
    """The gate's decision on a report: passed only when every configured threshold holds; the reasons otherwise."""

    passed: bool
    failures: list[str] = Field(default_factory=list)
    checked: list[str] = Field(default_factory=list)
