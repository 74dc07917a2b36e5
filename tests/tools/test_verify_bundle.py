"""tools/verify_bundle.py and `comity audit verify --bundle` agree on every bundle and evidence file.

Files come from two in-process nodes (real services and keystores); each case tampers with one
thing, and both verifiers must give the same verdict, the same category and the same fingerprint.
The tool must import nothing but the standard library and ``cryptography``.
"""

from __future__ import annotations

import ast
import base64
import copy
import importlib.util
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from node.cli.main import main as comity
from node.services import log_proofs
from node.services.access import record_content_read
from node.services.bundles import export_bundle
from node.services.evidence import export_evidence
from node.storage.models import InboxMessage, OutboxMessage, PeerLogFailure
from protocol.strictjson import canonical
from tests.node.audit_world import Side, exchange, make_side, pin_both

TOOL = Path(__file__).resolve().parents[2] / "tools" / "verify_bundle.py"
_spec = importlib.util.spec_from_file_location("verify_bundle_tool", TOOL)
assert _spec is not None and _spec.loader is not None
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("bundles")
    a, b = (make_side(tmp, auth, f"sqlite:///{tmp / auth}.db") for auth in ("GB-UKCA", "FR-DACG"))
    pin_both(a, b)
    ids = exchange(a, b, 3) + exchange(a, b, 4)
    for mid in ids:
        with b.db.write() as s:
            record_content_read(s, actor="token:0badc0de", ids=[mid], at=int(time.time()), route="test")
        b.integrate()
    with a.db.write() as s:  # a recorded peer-log failure: two of B's receipts as the two commitments
        r1, r2 = (s.query(OutboxMessage.receipt_jws).filter_by(message_id=m).scalar() for m in (ids[0], ids[-1]))
        s.add(PeerLogFailure(peer=b.authority, at=int(time.time()), held_tree_size=1, held_root="00" * 32,
                             held_evidence=r1, received_tree_size=2, received_root="11" * 32, received_evidence=r2,
                             proof="[]", detail="test"))
    out: dict[str, Any] = {"a": a, "b": b, "ids": ids}

    def bundle(side: Side, log: str, first: int | None = None) -> Doc:
        import io

        buf = io.BytesIO()
        with side.db.read() as s:
            export_bundle(s, buf, log=log, authority=side.authority, card=side.card, first=first, last=None,
                          now=int(time.time()))
        return dict(json.loads(buf.getvalue()))

    with pytest.MonkeyPatch.context() as mp:
        # tiles of 4 leaves: these small logs' proofs and frontiers then come from tile roots and tiles
        # as a large log's do (log_proofs), and both independent verifiers check them
        mp.setattr(log_proofs, "TILE_LEVEL", 2)
        out["exchange"] = bundle(a, "exchange")
        out["partial"] = bundle(b, "exchange", first=5)
        out["access"] = bundle(b, "access")
        with a.db.read() as s:
            out["sent"] = export_evidence(s, ids[1], authority=a.authority, card=a.card, now=int(time.time()))
        with b.db.read() as s:
            out["received"] = export_evidence(s, ids[1], authority=b.authority, card=b.card, now=int(time.time()))
            out["other_receipt"] = bytes(s.query(InboxMessage.receipt_jws).filter_by(message_id=ids[2]).scalar()
                                         ).decode()
    out["dir"] = tmp
    yield out
    a.db.dispose()
    b.db.dispose()


def _leaf(doc: Doc, i: int, edit: Callable[[bytes], bytes]) -> None:
    raw = base64.urlsafe_b64decode(doc["leaves"][i] + "==")
    doc["leaves"][i] = base64.urlsafe_b64encode(edit(raw)).rstrip(b"=").decode()


def _flip(token: str, part: int) -> str:
    parts = token.split(".")
    seg = parts[part]
    parts[part] = seg[:-2] + ("A" if seg[-2] != "A" else "B") + seg[-1]
    return ".".join(parts)


def _hexflip(h: str) -> str:
    return ("0" if h[0] != "0" else "1") + h[1:]


def _set(name: str, value: Any) -> Callable[[Doc, dict[str, Any]], None]:
    def apply(doc: Doc, _: dict[str, Any]) -> None:
        doc[name] = value
    return apply


# (file, tamper, expected category or "ok")
CASES: dict[str, tuple[str, Callable[[Doc, dict[str, Any]], None] | None, str]] = {
    "bundle_valid": ("exchange", None, "ok"),
    "partial_bundle_valid": ("partial", None, "ok"),
    "access_bundle_valid": ("access", None, "ok"),
    "sent_evidence_valid": ("sent", None, "ok"),
    "received_evidence_valid": ("received", None, "ok"),
    "leaf_edited": ("exchange", lambda d, _: _leaf(d, 3, lambda r: r.replace(b'"at":1', b'"at":2', 1)), "bad_proof"),
    "leaf_not_canonical": ("exchange", lambda d, _: _leaf(d, 3, lambda r: r.replace(b",", b", ", 1)), "malformed"),
    "leaf_dropped": ("exchange", lambda d, _: d["leaves"].pop(), "bad_proof"),
    "leaves_reordered": ("exchange", lambda d, _: d["leaves"].insert(2, d["leaves"].pop(3)), "bad_proof"),
    "access_leaf_edited": ("access", lambda d, _: _leaf(d, 1, lambda r: r.replace(b"0badc0de", b"0badc0df")),
                           "bad_proof"),
    "head_signature": ("exchange", lambda d, _: d["heads"].__setitem__(1, _flip(d["heads"][1], 2)), "bad_signature"),
    "head_of_other_log": ("partial", lambda d, f: d["heads"].__setitem__(0, f["access"]["heads"][0]), "bad_proof"),
    "head_of_other_node": ("exchange", lambda d, f: d["heads"].__setitem__(0, f["partial"]["heads"][0]),
                           "unknown_signing_key"),
    "heads_out_of_order": ("exchange", lambda d, _: d["heads"].reverse(), "bad_proof"),
    "consistency_element": ("exchange", lambda d, _: d["consistency"][-1]["proof"].__setitem__(
        0, _hexflip(d["consistency"][-1]["proof"][0])), "bad_proof"),
    "consistency_missing": ("exchange", lambda d, _: d["consistency"].pop(), "bad_proof"),
    "frontier_edited": ("partial", lambda d, _: d["frontier"].__setitem__(0, _hexflip(d["frontier"][0])), "bad_proof"),
    "card_signature": ("exchange", lambda d, _: d["card"]["keysets"][0]["signatures"][0].__setitem__(
        "signature", _flip("x.y." + d["card"]["keysets"][0]["signatures"][0]["signature"], 2)[4:]), "bad_signature"),
    "card_of_other_node": ("exchange", lambda d, f: d.__setitem__("card", f["access"]["card"]), "broken_chain"),
    "extra_member": ("exchange", _set("note", "x"), "malformed"),
    "failure_evidence": ("exchange", lambda d, _: d["peer_log_failures"][0].__setitem__(
        "held", _flip(d["peer_log_failures"][0]["held"], 2)), "bad_signature"),
    "envelope_changed": ("sent", lambda d, _: d.__setitem__("envelope", _flip(d["envelope"], 3)), "bad_proof"),
    "sent_receipt_swapped": ("sent", lambda d, f: d.__setitem__("receipt", f["other_receipt"]), "bad_proof"),
    "received_receipt_swapped": ("received", lambda d, f: d.__setitem__("receipt", f["other_receipt"]),
                                 "receipt_mismatch"),
    "receipt_signature": ("received", lambda d, _: d.__setitem__("receipt", _flip(d["receipt"], 2)), "bad_signature"),
    "inner_signature": ("received", lambda d, _: d.__setitem__("inner_jws", _flip(d["inner_jws"], 2)),
                        "bad_signature"),
    "inner_missing": ("received", _set("inner_jws", None), "malformed"),
    "inclusion_element": ("sent", lambda d, _: d["proof"].__setitem__(0, _hexflip(d["proof"][0])), "bad_proof"),
    "leaf_index_moved": ("received", lambda d, _: d.__setitem__("leaf_index", d["leaf_index"] + 1), "bad_proof"),
    "older_head": ("sent", lambda d, f: d.__setitem__("head", f["exchange"]["heads"][0]), "bad_proof"),
}


def _run_both(path: Path, fingerprint: str | None, capsys: pytest.CaptureFixture[str]) -> tuple[Doc, Doc, int, int]:
    extra = ["--fingerprint", fingerprint] if fingerprint else []
    capsys.readouterr()
    cli_code = comity(["audit", "verify", "--bundle", str(path), "--json", *extra])
    cli = json.loads(capsys.readouterr().out)
    tool_code = tool.main([str(path), "--json", *extra])
    standalone = json.loads(capsys.readouterr().out)
    return cli, standalone, cli_code, tool_code


def _agree(cli: Doc, standalone: Doc, cli_code: int, tool_code: int, expect: str) -> None:
    assert cli_code == tool_code == (0 if expect == "ok" else 1), (cli, standalone)
    assert cli["ok"] is standalone["ok"] is (expect == "ok")
    if expect == "ok":
        assert cli == standalone
    else:
        assert cli["category"] == standalone["category"] == expect, (cli, standalone)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_tool_agrees_with_the_cli(files: dict[str, Any], case: str, capsys: pytest.CaptureFixture[str]) -> None:
    name, tamper, expect = CASES[case]
    doc = copy.deepcopy(files[name])
    if tamper is not None:
        tamper(doc, files)
    path = files["dir"] / f"{case}.json"
    path.write_bytes(canonical(doc))
    cli, standalone, cli_code, tool_code = _run_both(path, None, capsys)
    _agree(cli, standalone, cli_code, tool_code, expect)


@pytest.mark.parametrize("name", ["exchange", "sent", "received"])
def test_fingerprints_pin_the_chain(files: dict[str, Any], name: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = files["dir"] / f"pin-{name}.json"
    path.write_text(json.dumps(files[name], indent=1))  # any formatting of the file itself is accepted
    owner = files["a"] if files[name]["authority"] == files["a"].authority else files["b"]
    cli, standalone, c1, c2 = _run_both(path, owner.keystore.fingerprint, capsys)
    _agree(cli, standalone, c1, c2, "ok")
    assert cli["fingerprint"] == owner.keystore.fingerprint
    other = files["b"] if owner is files["a"] else files["a"]
    cli, standalone, c1, c2 = _run_both(path, other.keystore.fingerprint, capsys)
    _agree(cli, standalone, c1, c2, "fingerprint_mismatch")


def test_a_fingerprint_beginning_with_a_dash_is_a_value_not_an_option(files: dict[str, Any],
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """One base64url fingerprint in 64 begins with '-': argparse refused ``--fingerprint -Ab…`` (a CI
    run failed on such a key), where comity's own CLI took it."""
    path = files["dir"] / "dash.json"
    path.write_text(json.dumps(files["exchange"]))
    _agree(*_run_both(path, "-" + files["a"].keystore.fingerprint[1:], capsys), "fingerprint_mismatch")


@pytest.mark.parametrize(("text", "expect"), [
    (b'{"comity_bundle":1,"comity_bundle":1}', "malformed"),
    (b'{"comity_bundle":NaN}', "malformed"),
    (b"[1]", "malformed"),
])
def test_strict_json_refusals_agree(files: dict[str, Any], text: bytes, expect: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = files["dir"] / "strict.json"
    path.write_bytes(text)
    _agree(*_run_both(path, None, capsys), expect)


def test_the_tool_imports_only_the_standard_library_and_cryptography() -> None:
    import sys

    tree = ast.parse(TOOL.read_text())
    roots = {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    roots |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert roots - {"__future__"} - set(sys.stdlib_module_names) == {"cryptography"}
