"""structlog set-up: JSON in production, readable in the console.

Events bind message id, peer and attempt; never key bytes, passphrases or content.
"""

from __future__ import annotations

import logging
import sys

import structlog
from structlog.typing import EventDict, WrappedLogger

#: Event fields that must never reach a log, whatever a caller passes: content and secrets.
FORBIDDEN_FIELDS = frozenset({
    "body", "subject", "content", "plaintext", "passphrase", "password", "token", "admin_token",
    "authorization", "private_key", "key", "jwk", "storage_key", "envelope", "inner_jws",
})
REDACTED = "[redacted]"


def scrub_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Replace any forbidden field's value (defence in depth: callers log metadata only)."""
    for name in FORBIDDEN_FIELDS.intersection(event_dict):
        event_dict[name] = REDACTED
    return event_dict


def configure_logging(fmt: str = "auto", *, level: int = logging.INFO) -> None:
    """``json``, ``console``, or ``auto`` (console when stderr is a terminal, JSON otherwise)."""
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            scrub_secrets,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
