"""Statements run on the driver's cursor behave as SQLAlchemy's own: same rows, counts and errors."""

from __future__ import annotations

import pytest
from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError

from node.storage.db import Database, DriverStatement
from node.storage.models import peers_table

_p = peers_table.c
_ADD = DriverStatement(peers_table.insert().values(
    authority=bindparam("a"), endpoint="https://127.0.0.1:1", failures=0, next_attempt_at=0, name=bindparam("a"),
    fingerprint="f", chain=b"", keyset_version=1, pinned_at=0, updated_at=0, refreshed_at=0, expires_at=0,
).returning(_p.authority))
_FAIL = DriverStatement(peers_table.update().where(_p.authority == bindparam("a"), _p.failures == 0)
                        .values(failures=bindparam("n"), last_error_category=None))


def test_rows_counts_defaults_and_errors(migrated_url: str) -> None:
    db = Database(migrated_url)
    try:
        with db.write() as session:
            conn = session.connection()
            count, row = _ADD.execute(conn, {"a": "FR-DACG"})
            assert count == 1 and row is not None and row[0] == "FR-DACG"
            _ADD.execute_many(conn, [{"a": "DE-BMJ"}, {"a": "IT-MG"}])
            assert _FAIL.execute(conn, {"a": "FR-DACG", "n": 3}) == (1, None)  # the literal 0 travels along
            assert _FAIL.execute(conn, {"a": "FR-DACG", "n": 4}) == (0, None)  # failures is 3 now: no match
            _FAIL.execute_many(conn, [])
        with db.read() as session:
            rows = dict(session.execute(select(_p.authority, _p.failures)).all())
        assert rows == {"FR-DACG": 3, "DE-BMJ": 0, "IT-MG": 0}
        # a driver error comes out as SQLAlchemy's, in the same transaction rules (rolled back)
        with pytest.raises(IntegrityError) as info, db.write() as session:
            _ADD.execute(session.connection(), {"a": "PL-MS"})
            _ADD.execute(session.connection(), {"a": "FR-DACG"})
        assert "[parameters:" not in str(info.value)  # parameters never printed, as on every engine
        with db.read() as session:
            assert session.execute(select(_p.authority).where(_p.authority == "PL-MS")).first() is None
        with pytest.raises(KeyError), db.write() as session:  # a parameter left out is an error, never a NULL
            _FAIL.execute(session.connection(), {"a": "FR-DACG"})
    finally:
        db.dispose()
