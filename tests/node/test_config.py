from __future__ import annotations

from pathlib import Path

import pytest

from node.config import ConfigError, Settings, load_settings, resolve_home


def test_home_from_flag_then_environment(tmp_path: Path) -> None:
    assert resolve_home(tmp_path / "a", {"COMITY_HOME": str(tmp_path / "b")}) == tmp_path / "a"
    assert resolve_home(None, {"COMITY_HOME": str(tmp_path / "b")}) == tmp_path / "b"


def test_no_home_is_a_usage_error() -> None:
    with pytest.raises(ConfigError, match="--home"):
        resolve_home(None, {})


def test_precedence_flag_env_toml_default(tmp_path: Path) -> None:
    assert load_settings(tmp_path, {}, {}) == Settings(home=tmp_path)
    (tmp_path / "comity.toml").write_text("keyset_validity_days = 30\n")
    assert load_settings(tmp_path, {}, {}).keyset_validity_days == 30
    env = {"COMITY_KEYSET_VALIDITY_DAYS": "20"}
    assert load_settings(tmp_path, env, {}).keyset_validity_days == 20
    s = load_settings(tmp_path, env, {"keyset_validity_days": 10})
    assert s.keyset_validity_days == 10 and s.keyset_validity == 10 * 86400
    assert load_settings(tmp_path, env, {"keyset_validity_days": None}).keyset_validity_days == 20


def test_node_table_in_toml(tmp_path: Path) -> None:
    (tmp_path / "comity.toml").write_text("[node]\nkeyset_validity_days = 7\n")
    assert load_settings(tmp_path, {}, {}).keyset_validity_days == 7


@pytest.mark.parametrize(("toml", "env", "message"), [
    ("keyset_validity_days = 'x'\n", {}, "not of type int"),
    ("keyset_validity_days = true\n", {}, "not of type int"),
    ("keyset_validity_days = 0\n", {}, "at least 1"),
    ("this is not toml", {}, "comity.toml"),
    ("", {"COMITY_KEYSET_VALIDITY_DAYS": "ninety"}, "not an integer"),
])
def test_bad_settings_are_usage_errors(tmp_path: Path, toml: str, env: dict[str, str], message: str) -> None:
    (tmp_path / "comity.toml").write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_settings(tmp_path, env, {})
