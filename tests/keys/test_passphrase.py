from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from keys.errors import PassphraseMismatchError, PassphraseUnavailableError
from keys.passphrase import resolve_passphrase


def prompts(*answers: str) -> tuple[Callable[[str], str], list[str]]:
    asked: list[str] = []
    queue = list(answers)

    def prompt(text: str) -> str:
        asked.append(text)
        return queue.pop(0)

    return prompt, asked


def no_prompt(text: str) -> str:
    raise AssertionError("must not prompt")


def test_environment_comes_first(tmp_path: Path) -> None:
    f = tmp_path / "pp"
    f.write_text("from-file\n")
    env = {"COMITY_PASSPHRASE": "from-env", "COMITY_PASSPHRASE_FILE": str(f)}
    assert resolve_passphrase(env, isatty=lambda: True, prompt=no_prompt) == b"from-env"


def test_environment_is_utf8() -> None:
    assert resolve_passphrase({"COMITY_PASSPHRASE": "żółw"}, isatty=lambda: False) == "żółw".encode()


def test_file_strips_exactly_one_trailing_newline(tmp_path: Path) -> None:
    f = tmp_path / "pp"
    f.write_bytes(b"secret \n\n")
    env = {"COMITY_PASSPHRASE_FILE": str(f)}
    assert resolve_passphrase(env, isatty=lambda: True, prompt=no_prompt) == b"secret \n"
    f.write_bytes(b"secret\r\n")
    assert resolve_passphrase(env, isatty=lambda: False) == b"secret"
    f.write_bytes(b"secret")
    assert resolve_passphrase(env, isatty=lambda: False) == b"secret"


def test_unreadable_file_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(PassphraseUnavailableError, match="cannot read the passphrase file"):
        resolve_passphrase({"COMITY_PASSPHRASE_FILE": str(tmp_path / "missing")}, isatty=lambda: True,
                           prompt=no_prompt)


@pytest.mark.parametrize("env", [{"COMITY_PASSPHRASE": ""}, {"COMITY_PASSPHRASE_FILE": "EMPTY"}])
def test_empty_passphrase_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"\n")
    env = {k: str(tmp_path / "empty") if v == "EMPTY" else v for k, v in env.items()}
    with pytest.raises(PassphraseUnavailableError, match="empty"):
        resolve_passphrase(env, isatty=lambda: False)


def test_terminal_prompt_once_when_opening() -> None:
    prompt, asked = prompts("typed")
    assert resolve_passphrase({}, isatty=lambda: True, prompt=prompt) == b"typed"
    assert len(asked) == 1


def test_terminal_prompt_twice_at_init() -> None:
    prompt, asked = prompts("typed", "typed")
    assert resolve_passphrase({}, confirm=True, isatty=lambda: True, prompt=prompt) == b"typed"
    assert len(asked) == 2


def test_terminal_confirmation_must_match() -> None:
    prompt, _ = prompts("typed", "tpyed")
    with pytest.raises(PassphraseMismatchError):
        resolve_passphrase({}, confirm=True, isatty=lambda: True, prompt=prompt)


def test_empty_typed_passphrase_is_refused() -> None:
    prompt, _ = prompts("")
    with pytest.raises(PassphraseUnavailableError, match="empty"):
        resolve_passphrase({}, isatty=lambda: True, prompt=prompt)


def test_no_source_and_no_terminal_is_unavailable() -> None:
    with pytest.raises(PassphraseUnavailableError, match="COMITY_PASSPHRASE"):
        resolve_passphrase({}, isatty=lambda: False, prompt=no_prompt)
