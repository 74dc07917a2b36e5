"""The node's error tree.  Only ``node/`` maps errors to HTTP statuses and exit codes.

    NodeError                 every refusal by the node; ``exit_code`` for the CLI, ``status`` for the API
    ├── InputError            the caller's input is refused (exit 3, HTTP 400/404/409)
    │   ├── UnknownPeerError
    │   └── NotFoundError
    ├── AuthError             missing or wrong bearer token (HTTP 401)
    └── EnvironmentError_     database, disk, lock or passphrase trouble (exit 4, HTTP 503)
        ├── SchemaOutdated
        └── BusyError         another process holds a lock
"""

from __future__ import annotations


class NodeError(Exception):
    exit_code = 4
    status = 500
    category = "node_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InputError(NodeError):
    exit_code = 3
    status = 400
    category = "invalid_input"


class UnknownPeerError(InputError):
    status = 404
    category = "unknown_peer"

    def __init__(self, authority: str) -> None:
        super().__init__(f"{authority} is not a pinned peer (pin it with `comity peer add`)")
        self.authority = authority


class NotFoundError(InputError):
    status = 404
    category = "not_found"


class AuthError(NodeError):
    exit_code = 2
    status = 401
    category = "unauthorized"


class EnvironmentError_(NodeError):
    exit_code = 4
    status = 503
    category = "unavailable"


class SchemaOutdated(EnvironmentError_):
    category = "schema_outdated"


class BusyError(EnvironmentError_):
    category = "busy"
