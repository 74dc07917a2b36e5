"""Where the keystore passphrase comes from, in this order:

1. ``COMITY_PASSPHRASE`` (UTF-8);
2. else the file named by ``COMITY_PASSPHRASE_FILE`` (its bytes, less one trailing newline);
3. else a terminal prompt, when standard input is a terminal (asked twice at ``init``);
4. else ``PassphraseUnavailableError``.

The environment, the terminal test and the prompt are arguments, so that callers (and
tests) decide what they are; nothing here reads ``os.environ``.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from .errors import PassphraseMismatchError, PassphraseUnavailableError

ENV_PASSPHRASE = "COMITY_PASSPHRASE"  # noqa: S105 (a variable name)
ENV_PASSPHRASE_FILE = "COMITY_PASSPHRASE_FILE"  # noqa: S105 (a variable name)


def resolve_passphrase(
    env: Mapping[str, str],
    *,
    confirm: bool = False,
    isatty: Callable[[], bool] | None = None,
    prompt: Callable[[str], str] = getpass.getpass,
) -> bytes:
    """The passphrase from the first source that has one; ``confirm`` asks a terminal twice.

    ``isatty`` defaults to testing the current ``sys.stdin``.
    """
    if ENV_PASSPHRASE in env:
        return _non_empty(env[ENV_PASSPHRASE].encode("utf-8"), f"${ENV_PASSPHRASE}")
    if ENV_PASSPHRASE_FILE in env:
        path = Path(env[ENV_PASSPHRASE_FILE])
        try:
            data = path.read_bytes()
        except OSError as e:
            raise PassphraseUnavailableError(
                f"cannot read the passphrase file {path} named by ${ENV_PASSPHRASE_FILE}: {e.strerror}"
            ) from e
        return _non_empty(_strip_one_newline(data), f"the passphrase file {path}")
    if (isatty or sys.stdin.isatty)():
        first = _non_empty(prompt("Keystore passphrase: ").encode("utf-8"), "the passphrase typed")
        if confirm and prompt("Repeat the passphrase: ").encode("utf-8") != first:
            raise PassphraseMismatchError()
        return first
    raise PassphraseUnavailableError(
        f"no passphrase: set {ENV_PASSPHRASE} or {ENV_PASSPHRASE_FILE}, or run from a terminal"
    )


def _strip_one_newline(data: bytes) -> bytes:
    if data.endswith(b"\r\n"):
        return data[:-2]
    if data.endswith(b"\n"):
        return data[:-1]
    return data


def _non_empty(passphrase: bytes, source: str) -> bytes:
    if not passphrase:
        raise PassphraseUnavailableError(f"{source} is empty; an empty passphrase protects nothing")
    return passphrase
