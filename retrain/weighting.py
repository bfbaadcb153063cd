"""Per-example weights (curation's vote margin and reliability) in TRL's DPO and KTO losses.

TRL 1.16 has no per-example weight: its losses are a plain mean over the batch. Each row's gradient is scaled
instead, on the policy's per-token log-probs (the only path by which a row's loss reaches the weights): row i
gets `n * w_i / sum(w)`, so for every loss whose per-row term depends on that row alone (sigmoid, ipo, robust,
hinge, ... and KTO's, whose KL baseline is detached) the update is that of the weighted mean
`sum(w_i * loss_i) / sum(w)`. A weight of 0 then contributes nothing, and a weight of 2 counts as the same
row twice. The logged loss stays TRL's unweighted mean. TRL's `sft` term is one token mean over the batch, so
its tokens are scaled the same way (a weight of 0 removes them; doubling is exact only for equal lengths), and
the `aot` losses sort rows across the batch, so the run config refuses weights with them.
"""

from __future__ import annotations

from typing import Any

WEIGHT = "weight"


def row_scales(weights: Any) -> Any:
    """Each row's gradient factor: `n * w_i / sum(w)` (all zero when every weight is zero)."""
    total = weights.sum()
    if float(total) <= 0:
        return weights * 0
    return weights * (len(weights) / total)


def _grad_scale():
    import torch

    class GradScale(torch.autograd.Function):
        """Identity forward; the backward multiplies the gradient by `scale` (broadcast per row)."""

        @staticmethod
        def forward(ctx: Any, x: Any, scale: Any) -> Any:
            ctx.save_for_backward(scale)
            return x.view_as(x)

        @staticmethod
        def backward(ctx: Any, grad: Any) -> tuple[Any, None]:
            (scale,) = ctx.saved_tensors
            return grad * scale, None

    return GradScale


class _ScaledLogProbs:
    """The model as TRL's loss calls it, with each row's log-prob gradient scaled (policy passes only)."""

    def __init__(self, model: Any, scales: Any) -> None:
        self._model = model
        self._scales = scales

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self._model(*args, **kwargs)
        logps = getattr(out, "log_probs", None)
        if logps is None or not logps.requires_grad:  # reference and KL passes run without grad
            return out
        # DPO's batch is [chosen..., rejected...]: each pair's scale covers both of its rows
        per_row = self._scales.to(logps.device, logps.dtype).repeat(logps.shape[0] // len(self._scales))
        out.log_probs = _grad_scale().apply(logps, per_row[:, None])
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class _CollateWithWeights:
    """TRL's collator plus a `weight` tensor (TRL's own collators drop columns they do not know)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        out = self.inner(examples)
        if examples and WEIGHT in examples[0]:
            out[WEIGHT] = torch.tensor([float(e[WEIGHT]) for e in examples], dtype=torch.float32)
        return out


def weighted(trainer_cls: type) -> type:
    """A subclass of a TRL DPO/KTO trainer whose loss weighs each row by its dataset's `weight` column."""
    base: Any = trainer_cls  # TRL's trainers are untyped to mypy

    class Weighted(base):
        data_collator: Any
        _signature_columns: Any

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.data_collator = _CollateWithWeights(self.data_collator)

        def _set_signature_columns_if_needed(self) -> None:
            super()._set_signature_columns_if_needed()
            if WEIGHT not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, WEIGHT]

        def compute_ref_log_probs(self, model: Any, inputs: dict[str, Any]) -> Any:
            return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k != WEIGHT})

        def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
            inputs = dict(inputs)
            weights = inputs.pop(WEIGHT, None)
            if weights is None:
                return super()._compute_loss(model, inputs, return_outputs)
            return super()._compute_loss(_ScaledLogProbs(model, row_scales(weights)), inputs, return_outputs)

    Weighted.__name__ = Weighted.__qualname__ = f"Weighted{trainer_cls.__name__}"
    return Weighted
