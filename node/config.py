"""Node settings: command-line flags > ``COMITY_*`` environment > ``HOME/comity.toml`` > defaults.

The home comes first and alone (``--home``, else ``COMITY_HOME``), because the TOML file lives
in it.  Every other setting is a field of ``Settings``: its environment variable is
``COMITY_`` + the field name in capitals, its TOML key is the field name in ``comity.toml`` (top level,
or in a ``[node]`` table).  Callers build settings explicitly (``load_settings``); nothing is read at
import.  To add a setting, add a field with a default (and a type this module can parse).
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ENV_HOME = "COMITY_HOME"
ENV_PREFIX = "COMITY_"
TOML_NAME = "comity.toml"


class ConfigError(Exception):
    """A setting is missing or unusable (a usage error: the CLI exits 2)."""


@dataclass(frozen=True)
class Settings:
    """Resolved settings of one node home."""

    home: Path
    #: keyset validity in days; None keeps the one recorded at ``init``
    keyset_validity_days: int | None = None
    #: SQLAlchemy URL; empty means SQLite in the home (``HOME/comity.db``)
    database_url: str | None = None
    #: peer listener; default: the endpoint URL's host and port
    host: str | None = None
    port: int | None = None
    #: local listener (JSON API, later web UI and metrics)
    local_host: str = "127.0.0.1"
    local_port: int = 8700
    #: plain HTTP, both listeners on one port: local test federations only
    insecure_http: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    #: CA bundle to verify peers' certificates (default: the system's)
    tls_ca: str | None = None
    skew: int = 300
    max_lifetime: int = 7 * 86400
    #: exp - iat of the messages this node sends
    message_lifetime: int = 7 * 86400
    envelope_max_bytes: int = 1024 * 1024
    worker_poll: float = 0.5
    worker_concurrency: int = 128
    http_timeout: float = 30.0
    #: how long a worker's claim on a message lasts; a crashed worker's claims are taken over after it
    lease_seconds: int = 60
    #: how often a running node checks whether its keystore changed (SIGHUP: at once)
    key_reload_interval: float = 2.0
    #: seconds between polls of each peer's signed exchange-log head (witnessing; receipts are checked too)
    witness_poll: float = 300.0
    #: honours COMITY_CRASH_AT (fault-injection tests); ``comity init`` never writes it
    testing: bool = False
    #: auto (console on a terminal, JSON otherwise) | json | console
    log_format: str = "auto"
    #: attachments: folder of the chunk files (default HOME/blobs), and what one inbound message may carry
    attachments_dir: Path | None = None
    max_attachments: int = 100
    max_attachment_bytes: int = 8 * 1024**3
    #: free disk the node keeps: manifests that would eat into it are refused, and /readyz fails below it
    disk_reserve_bytes: int = 1024**3
    #: testing only (honoured with ``testing``): seconds each chunk PUT is held before its answer,
    #: so that tests can cut a transfer mid-way
    chunk_delay: float = 0.0

    def __post_init__(self) -> None:
        if self.lease_seconds < 1:
            raise ConfigError(f"lease_seconds must be at least 1, not {self.lease_seconds}")
        if self.keyset_validity_days is not None and self.keyset_validity_days < 1:
            raise ConfigError(f"keyset_validity_days must be at least 1, not {self.keyset_validity_days}")
        for name in ("max_attachments", "max_attachment_bytes", "disk_reserve_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative")

    @property
    def blobs_dir(self) -> Path:
        """Where attachment chunks are kept: ``attachments_dir``, else ``HOME/blobs``."""
        base = self.attachments_dir if self.attachments_dir is not None else self.home / "blobs"
        return base if base.is_absolute() else (self.home / base)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'comity.db').resolve()}"

    @property
    def keyset_validity(self) -> int | None:
        """The keyset validity in seconds, if set."""
        return None if self.keyset_validity_days is None else self.keyset_validity_days * 86400


def resolve_home(flag: Path | None, env: Mapping[str, str]) -> Path:
    """``--home``, else ``COMITY_HOME``, else ``ConfigError``."""
    if flag is not None:
        return flag.expanduser().absolute()
    if env.get(ENV_HOME):
        return Path(env[ENV_HOME]).expanduser().absolute()
    raise ConfigError(f"no node home: pass --home DIR or set {ENV_HOME}")


def read_toml(home: Path) -> dict[str, Any]:
    """The settings table of ``HOME/comity.toml`` (its ``[node]`` table if it has one, else the top
    level); empty when there is no such file."""
    path = home / TOML_NAME
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from e
    table = data.get("node", data)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [node] is not a table")
    return table


def load_settings(home_flag: Path | None, env: Mapping[str, str], flags: Mapping[str, object]) -> Settings:
    """Settings for one command; ``flags`` holds the command-line values given (None = not given)."""
    home = resolve_home(home_flag, env)
    toml = read_toml(home)
    hints = typing.get_type_hints(Settings)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        if f.name == "home":
            continue
        env_name = ENV_PREFIX + f.name.upper()
        if flags.get(f.name) is not None:
            values[f.name] = flags[f.name]
        elif env_name in env:
            values[f.name] = _parse(env[env_name], hints[f.name], f"${env_name}")
        elif f.name in toml:
            values[f.name] = _check_type(toml[f.name], hints[f.name], f"{TOML_NAME} {f.name}")
    return Settings(home=home, **values)


def _base_type(hint: Any) -> type:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint  # type: ignore[no-any-return]


def _parse(text: str, hint: Any, where: str) -> object:
    base = _base_type(hint)
    if base is bool:
        if text.lower() in {"1", "true", "yes", "on"}:
            return True
        if text.lower() in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{where}: {text!r:.40} is not a boolean")
    if base is int:
        try:
            return _check_type(int(text), hint, where)
        except ValueError as e:
            raise ConfigError(f"{where}: {text!r:.40} is not an integer") from e
    if base is float:
        try:
            return float(text)
        except ValueError as e:
            raise ConfigError(f"{where}: {text!r:.40} is not a number") from e
    if base is Path:
        return Path(text)
    return text


def _check_type(value: object, hint: Any, where: str) -> object:
    base = _base_type(hint)
    if base is Path and isinstance(value, str):
        return Path(value)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: {value!r:.40} is not of type {base.__name__}")
    return value


def peer_bind(settings: Settings, endpoint: str) -> tuple[str, int]:
    """Where the peer listener binds: the flags, else the endpoint URL's host and port."""
    parts = urlsplit(endpoint)
    host = settings.host or parts.hostname or "127.0.0.1"
    port = settings.port or parts.port or (443 if parts.scheme == "https" else 80)
    return host, port
