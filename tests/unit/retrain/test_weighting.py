"""Per-example weights as gradient factors: the pure part, and the run config's refusal where they cannot apply."""

from __future__ import annotations

import pytest
import torch

from retrain.config import parse_config
from retrain.errors import ConfigError
from retrain.weighting import row_scales


def test_each_row_gets_its_share_of_the_batch_and_the_factors_average_one():
    assert row_scales(torch.tensor([1.0, 0.0, 2.0])).tolist() == [1.0, 0.0, 2.0]
    assert row_scales(torch.tensor([0.5, 0.5])).tolist() == [1.0, 1.0]  # only ratios count
    assert row_scales(torch.tensor([0.2, 0.6])).sum().item() == pytest.approx(2.0)
    assert row_scales(torch.tensor([0.0, 0.0])).tolist() == [0.0, 0.0]  # nothing to learn from, not NaN


def test_weights_are_on_by_default_and_refused_with_losses_that_sort_the_batch():
    cfg = parse_config({})
    assert cfg.dpo.use_weights and cfg.kto.use_weights
    with pytest.raises(ConfigError, match=r"dpo.*\['aot'\] sorts pairs.*use_weights"):
        parse_config({"dpo": {"loss_type": ["aot"]}})
    assert parse_config({"dpo": {"loss_type": ["aot"], "use_weights": False}}).dpo.loss_type == ["aot"]
