"""`comity audit verify` catches and names every edit of either log, on SQLite and PostgreSQL.

Each case edits B's database behind the node's back, then runs the real command (in-process): it
must exit 1 and name the entry (index) and the column, or the heads range.  A truncated tail and a
log rewritten with every hash and head recomputed (even re-signed) are caught against the signed
head held outside the database, ``HOME/heads/<log>.jws``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from node.cli.main import main
from node.services.access import record_content_read
from node.services.audit import derive_columns
from node.storage.models import AuditEntry, AuditHead, AuditTree, InboxMessage
from protocol.heads import TreeHead, sign_head
from protocol.merkle import CompactRange
from protocol.strictjson import canonical
from tests.node.audit_world import Side, exchange, two_sides

TARGET = 3


@pytest.fixture(params=["one_process", "workers"])
def path(request: pytest.FixtureRequest, backend: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Verify in one process, or through the worker processes of ``verify_parallel`` — which large
    SQLite logs take — forced here on a small log, in chunks of 2 entries (on PostgreSQL the workers
    must stay unused).  Yields the number of times the workers returned subtree roots."""
    import node.services.verify_parallel as vp

    used = [0]
    if request.param == "workers":
        original = vp.chunk_roots

        def counting(*args: Any, **kw: Any) -> Any:
            roots = original(*args, **kw)
            used[0] += roots is not None
            return roots

        monkeypatch.setattr(vp, "MIN_ENTRIES", 1)
        monkeypatch.setattr(vp, "chunk_size", lambda n, workers: 2)
        monkeypatch.setattr("node.services.verify.usable_cores", lambda: 2)
        monkeypatch.setattr(vp, "chunk_roots", counting)
    yield used


@pytest.fixture
def world(tmp_path: Path, backend: str, path: list[int]) -> Iterator[tuple[Side, Side]]:
    with two_sides(tmp_path, backend) as (a, b):
        a.integrate()
        b.integrate()
        ids = exchange(a, b, 4)
        ids += exchange(a, b, 3)
        for mid in ids:  # access-log entries, one batch (and one head) each
            with b.db.write() as session:
                record_content_read(session, actor="token:0badc0de", ids=[mid], at=int(time.time()), route="test")
            b.integrate()
        yield a, b


def verify(side: Side, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, list[dict[str, Any]]]:
    capsys.readouterr()
    code = main(["audit", "verify", "--home", str(side.home), "--database-url", side.db.url, "--json", *extra])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else []


def report(reports: list[dict[str, Any]], log: str) -> dict[str, Any]:
    return next(r for r in reports if r["log"] == log)


def _edit_leaf(side: Side, log: str) -> None:
    with side.db.write() as s:
        row = s.scalars(select(AuditEntry).where(AuditEntry.log == log, AuditEntry.leaf_index == TARGET)).one()
        row.leaf = bytes(row.leaf).replace(b'"at":', b'"at":1', 1)


def _edit_column(side: Side, log: str) -> None:
    with side.db.write() as s:
        s.execute(update(AuditEntry).where(AuditEntry.log == log, AuditEntry.leaf_index == TARGET)
                  .values(event="tampered"))


def _delete_entries(s: Any, *where: Any) -> None:
    """Delete entries, and the received messages that point at them (the editor hides those too)."""
    ids = select(AuditEntry.id).where(*where).scalar_subquery()
    s.execute(delete(InboxMessage).where(InboxMessage.entry_id.in_(ids)))
    s.execute(delete(AuditEntry).where(*where))


def _delete_row(side: Side, log: str) -> None:
    with side.db.write() as s:
        _delete_entries(s, AuditEntry.log == log, AuditEntry.leaf_index == TARGET)


def _reorder(side: Side, log: str) -> None:
    with side.db.write() as s:
        where = (AuditEntry.log == log)
        s.execute(update(AuditEntry).where(where, AuditEntry.leaf_index == TARGET).values(leaf_index=-1))
        s.execute(update(AuditEntry).where(where, AuditEntry.leaf_index == TARGET + 1).values(leaf_index=TARGET))
        s.execute(update(AuditEntry).where(where, AuditEntry.leaf_index == -1).values(leaf_index=TARGET + 1))


def _truncate(side: Side, log: str) -> None:
    """A careful truncation: entries, heads and the frontier all cut back to TARGET entries."""
    with side.db.write() as s:
        _delete_entries(s, AuditEntry.log == log, AuditEntry.leaf_index >= TARGET)
        s.execute(delete(AuditHead).where(AuditHead.log == log, AuditHead.tree_size > TARGET))
        _refresh_tree(s, log)


def _refresh_tree(s: Any, log: str) -> CompactRange:
    cr = CompactRange()
    for h in s.scalars(select(AuditEntry.leaf_hash).where(AuditEntry.log == log, AuditEntry.leaf_index.is_not(None))
                       .order_by(AuditEntry.leaf_index)):
        cr.append(bytes.fromhex(h))
    tree = s.get(AuditTree, log)
    tree.tree_size, tree.frontier, tree.root = cr.size, json.dumps(cr.to_json()), cr.root().hex()
    return cr


def rewrite(side: Side, log: str, index: int = TARGET) -> None:
    """The operator rewrites entry ``index`` and recomputes every hash, column and head — re-signed with the
    node's key."""
    with side.db.write() as s:
        row = s.scalars(select(AuditEntry).where(AuditEntry.log == log, AuditEntry.leaf_index == index)).one()
        obj = json.loads(row.leaf)
        obj["at"] = obj["at"] - 3600
        row.leaf = canonical(obj)
        for name, value in derive_columns(row.leaf).items():
            setattr(row, name, value)
        s.flush()
        hashes = [bytes.fromhex(h) for h in s.scalars(
            select(AuditEntry.leaf_hash).where(AuditEntry.log == log).order_by(AuditEntry.leaf_index))]
        for head in s.scalars(select(AuditHead).where(AuditHead.log == log)):
            cr = CompactRange()
            cr.extend(hashes[:head.tree_size])
            head.root = cr.root().hex()
            head.head_jws = sign_head(TreeHead(iss=side.authority, log=log, tree_size=head.tree_size,  # type: ignore[arg-type]
                                               root=head.root, at=head.at), signer=side.keystore.signer)
        _refresh_tree(s, log)


CASES: dict[str, tuple[Callable[[Side, str], None], str]] = {
    "edited_leaf": (_edit_leaf, "at"),
    "edited_column": (_edit_column, "event"),
    "deleted_row": (_delete_row, "leaf_index"),
    "reordered_rows": (_reorder, "head"),
    "truncated_tail": (_truncate, "leaf_index"),
    "rewritten_log": (rewrite, "head"),
}


def test_an_untouched_node_verifies(world: tuple[Side, Side], capsys: pytest.CaptureFixture[str],
                                    path: list[int], request: pytest.FixtureRequest) -> None:
    _, b = world
    code, reports = verify(b, capsys)
    assert code == 0, reports
    if "workers" in request.node.callspec.id:
        if "sqlite" in request.node.callspec.id:
            assert path[0] >= 2, "both logs were checked by the worker processes"
        else:
            assert path[0] == 0, "a PostgreSQL log is checked in one process"
    assert {r["log"] for r in reports} == {"exchange", "access"}
    assert all(r["ok"] and r["held_checked"] == 1 for r in reports)
    code, only = verify(b, capsys, "--log", "access")
    assert code == 0 and [r["log"] for r in only] == ["access"]


@pytest.mark.parametrize("log", ["exchange", "access"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_edit_is_caught_and_named(world: tuple[Side, Side], capsys: pytest.CaptureFixture[str], log: str,
                                        case: str) -> None:
    _, b = world
    tamper, column = CASES[case]
    tamper(b, log)
    code, reports = verify(b, capsys)
    assert code == 1
    bad = report(reports, log)
    other = report(reports, "access" if log == "exchange" else "exchange")
    assert other["ok"], other
    assert not bad["ok"] and bad["first_bad"]["column"] == column, bad
    if column == "head":
        if case == "reordered_rows":
            lo, hi = bad["bad_range"]
            assert lo <= TARGET < hi
        else:
            assert "rewritten" in bad["first_bad"]["reason"] and str(b.home / "heads") in bad["first_bad"]["reason"]
    else:
        assert bad["first_bad"]["index"] == TARGET, bad
    if case == "truncated_tail":
        assert "truncated" in bad["first_bad"]["reason"]


@pytest.mark.parametrize("log", ["exchange", "access"])
def test_a_careful_rewrite_passes_alone_but_not_against_heads_held_elsewhere(
        world: tuple[Side, Side], capsys: pytest.CaptureFixture[str], tmp_path: Path, log: str) -> None:
    _, b = world
    saved = tmp_path / f"{log}-head.jws"
    saved.write_bytes((b.home / "heads" / f"{log}.jws").read_bytes())
    rewrite(b, log)
    (b.home / "heads" / f"{log}.jws").unlink()  # the operator also removed the heads file
    code, reports = verify(b, capsys)
    assert code == 0, reports  # everything inside the database agrees with itself...
    code, reports = verify(b, capsys, "--against", str(saved))  # ...but not with a head kept elsewhere
    assert code == 1 and "rewritten" in report(reports, log)["first_bad"]["reason"]


def test_a_heads_file_that_does_not_verify_is_a_failure(world: tuple[Side, Side],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    a, b = world
    (b.home / "heads" / "exchange.jws").write_bytes((a.home / "heads" / "exchange.jws").read_bytes())
    code, reports = verify(b, capsys)
    assert code == 1 and "does not verify" in report(reports, "exchange")["first_bad"]["reason"]


def test_serve_refuses_a_database_older_than_its_heads(world: tuple[Side, Side], capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _, b = world
    monkeypatch.setattr("node.logs.configure_logging", lambda *a, **k: None)  # keep structlog off capsys's stream
    _truncate(b, "exchange")
    capsys.readouterr()
    code = main(["serve", "--home", str(b.home), "--database-url", b.db.url, "--insecure-http", "--port", "1"])
    err = capsys.readouterr().err
    assert code == 4 and "comity db restored" in err

