"""Gates are a pure decision over a report; configs and policies refuse bad values with the field named."""

import re

import pytest

from retrain.config import load_run_config, parse_config
from retrain.errors import ConfigError
from retrain.evaluate import likelihood_accuracy, preference_metrics
from retrain.gates import GatePolicy, decide_gate, load_gate_policy
from retrain.report import Comparisons

GOOD = Comparisons(
    **{
        "heldout_accuracy": 0.95,
        "accuracy_gain_over_base": 0.45,
        "accuracy_gain_over_active": 0.1,
        "preferred_style_share": 0.9,
        "style_gain_over_active": 0.2,
        "kl_to_base": 0.2,
        "length_ratio_vs_base": 1.1,
        "safety_accuracy_change_vs_reference": 0.0,
    }
)


def test_a_good_report_passes_the_shipped_policy():
    decision = decide_gate(GOOD, load_gate_policy())
    assert decision.passed and not decision.failures and "max_kl_to_base" in decision.checked


@pytest.mark.parametrize(
    "metric,value,needle",
    [
        ("heldout_accuracy", 0.6, "min_heldout_accuracy"),
        ("preferred_style_share", 0.3, "min_preferred_style_share"),
        ("length_ratio_vs_base", 2.0, "max_length_ratio"),
        ("safety_accuracy_change_vs_reference", -0.05, "max_safety_accuracy_drop"),
    ],
)
def test_each_failed_threshold_is_a_reason(metric, value, needle):
    decision = decide_gate(GOOD.model_copy(update={metric: value}), load_gate_policy())
    assert not decision.passed
    assert len(decision.failures) == 1 and needle in decision.failures[0] and metric in decision.failures[0]


def test_high_reward_accuracy_alone_does_not_pass():
    # the known failure: accuracy 1.0 while the preferred behaviour collapsed in generations
    report = GOOD.model_copy(update={"heldout_accuracy": 1.0, "preferred_style_share": 0.01})
    assert not decide_gate(report, GatePolicy()).passed


def test_missing_required_metric_fails_and_missing_optional_is_skipped():
    comp = GOOD.model_copy(update={"kl_to_base": None, "accuracy_gain_over_active": None})  # no active adapter yet
    decision = decide_gate(comp, GatePolicy())
    assert decision.failures == ["`kl_to_base` is missing from the report; `max_kl_to_base` needs it"]
    assert not decide_gate(Comparisons(), GatePolicy()).passed
    assert decide_gate(comp, GatePolicy(max_kl_to_base=None)).passed


def test_policy_and_config_errors_name_the_field(tmp_path):
    (tmp_path / "g.yaml").write_text("gates:\n  min_heldout_accuracy: 2\n")
    with pytest.raises(ConfigError, match="min_heldout_accuracy"):
        load_gate_policy(tmp_path / "g.yaml")
    with pytest.raises(ConfigError, match=re.escape("dpo.loss_type")):
        parse_config({"dpo": {"loss_type": ["sigmoid", "magic"]}})
    with pytest.raises(ConfigError, match=re.escape("dpo.learning_rate")):
        parse_config({"dpo": {"learning_rate": -1}})
    with pytest.raises(ConfigError, match="must exist"):
        load_run_config(tmp_path / "none.yaml")


def test_shipped_config_is_cpu_sane_and_hashes_stably():
    cfg = load_run_config()
    assert cfg.dpo.loss_type == ["sigmoid", "sft"] and cfg.dpo.learning_rate >= 1e-4
    assert cfg.hash == load_run_config().hash
    assert parse_config({**cfg.as_dict(), "seed": 1}).hash != cfg.hash
    parse_config({"dpo": {"loss_type": ["robust"], "label_smoothing": 0.1}})
    parse_config({"dpo": {"loss_type": ["ipo"]}})


def test_preference_metrics():
    m = preference_metrics([-1.0, -2.0, -3.0], [-5.0, -1.0, -3.0], [-2.0, -2.0, -3.0], [-2.0, -2.0, -3.0], beta=0.1)
    assert m["accuracy"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert m["margin"] == pytest.approx(0.1 * ((1 + 3) + (0 - 1) + 0) / 3)
    assert preference_metrics([], [], [], [], 0.1)["accuracy"] is None
    assert likelihood_accuracy([-2.0, -9.0], [2, 3], [-4.0, -3.0], [2, 3]) == 0.5


def test_no_worse_than_active_tells_sampling_noise_from_a_real_drop():
    noisy = GOOD.model_copy(update={"style_gain_over_active": -0.05, "style_gain_over_active_se": 0.04})
    assert decide_gate(noisy, GatePolicy()).passed  # 0.05 below is within two standard errors of the tolerance
    assert not decide_gate(noisy, GatePolicy(noise_z=0)).passed
    real = GOOD.model_copy(update={"style_gain_over_active": -0.4, "style_gain_over_active_se": 0.05})
    decision = decide_gate(real, GatePolicy())
    assert not decision.passed and "standard errors" in decision.failures[0]
    assert "min_style_gain_over_active" in decision.failures[0]
