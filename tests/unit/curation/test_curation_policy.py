"""The versioned policy file: validated, hashed with its version, the defaults written out in full."""

import pytest

from curation.errors import ConfigError
from curation.settings import (
    POLICY_DIR,
    CurationSettings,
    Policy,
    active_policy,
    load_policy,
    policy_hash,
)


def test_the_default_policy_file_holds_every_field_at_its_default():
    policy = load_policy(POLICY_DIR / "default.yaml")
    text = (POLICY_DIR / "default.yaml").read_text()
    assert policy == Policy(version=1)
    assert all(f"\n{name}:" in text for name in Policy.model_fields)


def test_the_hash_names_the_content_and_the_version():
    assert policy_hash(Policy(version=1)) == policy_hash(Policy(version=1))
    assert policy_hash(Policy(version=1)) != policy_hash(Policy(version=2))
    assert policy_hash(Policy(version=1)) != policy_hash(Policy(version=1, trigger_max_p=1e-5))


@pytest.mark.parametrize(
    "body, words",
    [
        ("window_s: 60\n", "`version`"),
        ("version: 0\n", "`version`"),
        ("version: 1\nwindow_s: 0\n", "`window_s`"),
        ("version: 1\nno_such_field: 3\n", "`no_such_field`"),
        ("version: [1\n", "valid YAML"),
    ],
)
def test_a_bad_policy_file_is_refused_naming_the_field(tmp_path, body, words):
    path = tmp_path / "p.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=words.replace("[", r"\[")):
        load_policy(path)


def test_the_policy_file_setting_takes_precedence_over_the_environment(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("version: 3\nwindow_s: 600\nlookback_s: 600\n")
    assert active_policy(CurationSettings(policy_file=str(path))).window_s == 600
    assert active_policy(CurationSettings()).version == 0
