"""Signed tree heads (SPEC §9): an authority's signed word on the size and root of one of its logs.

A head is a compact JWS, ``typ`` ``comity-head+jws``, header exactly ``{alg, typ, kid}``, over
``{v: 1, iss, log, tree_size, root, at}``.  Verification goes through ``verify_artifact`` (typ,
header, key by kid, signature, strict payload, then the key's time rules at ``at``), so it works
under the acceptance rules (``LiveKeys``) and the archival rules (``ArchivalKeys``) alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from .artifacts import KeyRules, require_fields, require_int, verify_artifact
from .errors import ArtifactError, Category
from .ids import is_authority_id, is_sha256_hex
from .jose import Signer, sign_compact
from .merkle import EMPTY_ROOT
from .strictjson import MAX_SAFE_INTEGER

HEAD_TYP = "comity-head+jws"
HEAD_NAMES = frozenset({"v", "iss", "log", "tree_size", "root", "at"})

LogName = Literal["exchange", "access"]
LOG_NAMES: frozenset[str] = frozenset(get_args(LogName))


@dataclass(frozen=True)
class TreeHead:
    iss: str  # the authority whose log this is
    log: LogName
    tree_size: int
    root: str  # 64 lowercase hex
    at: int  # NumericDate of signing

    @property
    def root_bytes(self) -> bytes:
        return bytes.fromhex(self.root)

    def to_payload(self) -> dict[str, Any]:
        return {
            "v": 1, "iss": self.iss, "log": self.log, "tree_size": self.tree_size, "root": self.root,
            "at": self.at,
        }


def _check(h: TreeHead) -> None:
    if not is_authority_id(h.iss):
        raise ArtifactError(Category.MALFORMED, "head iss is not an authority id")
    if h.log not in LOG_NAMES:
        raise ArtifactError(Category.MALFORMED, f"head log is not one of {sorted(LOG_NAMES)}")
    for name in ("tree_size", "at"):
        value = getattr(h, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SAFE_INTEGER:
            raise ArtifactError(Category.MALFORMED, f"head {name} is not an integer in 0..2**53-1")
    if not is_sha256_hex(h.root):
        raise ArtifactError(Category.MALFORMED, "head root is not 64 lowercase hex characters")
    if h.tree_size == 0 and h.root != EMPTY_ROOT.hex():
        raise ArtifactError(Category.MALFORMED, "a head of size 0 must carry the empty tree's root")


def sign_head(head: TreeHead, *, signer: Signer) -> bytes:
    """The compact JWS of ``head``; a malformed head raises ``ArtifactError(MALFORMED)``."""
    _check(head)
    return sign_compact(typ=HEAD_TYP, payload=head.to_payload(), signer=signer)


def parse_head(payload: dict[str, Any]) -> TreeHead:
    """Check a verified payload's exact member set and types; raise ``ArtifactError(MALFORMED)``."""
    require_fields(payload, HEAD_NAMES, "head")
    for name in ("iss", "log", "root"):
        if not isinstance(payload[name], str):
            raise ArtifactError(Category.MALFORMED, f"head {name} is not a string")
    log = payload["log"]
    if log not in LOG_NAMES:
        raise ArtifactError(Category.MALFORMED, f"head log {log!r:.40} is not one of {sorted(LOG_NAMES)}")
    head = TreeHead(
        iss=payload["iss"], log=log, tree_size=require_int(payload, "tree_size", "head"),
        root=payload["root"], at=require_int(payload, "at", "head"),
    )
    _check(head)
    return head


def verify_head(token: bytes, *, keys: KeyRules, authority: str, log: str | None = None) -> TreeHead:
    """Verify a head of ``authority``'s log ``log`` (either log when ``None``) under ``keys``.

    Raises ``ArtifactError``: the category of the failed JOSE or key rule, ``MALFORMED`` for the
    payload, ``BAD_PROOF`` for a head of another authority or another log.
    """
    verified = verify_artifact(token, typ=HEAD_TYP, keys=keys, time_field="at")
    head = parse_head(verified.payload)
    if head.iss != authority:
        raise ArtifactError(Category.BAD_PROOF, f"head of {head.iss}, not of {authority}")
    if log is not None and head.log != log:
        raise ArtifactError(Category.BAD_PROOF, f"head of the {head.log} log, not of the {log} log")
    return head
