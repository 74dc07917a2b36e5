"""The CLI's progress bar for long attachment work: drawn only at a terminal, and only for large files."""

from __future__ import annotations

import io

import pytest

from node.cli.progress import PROGRESS_MIN_BYTES, byte_progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_with_bytes_rate_and_time_left_at_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    total = 8 * 1024 * 1024
    with byte_progress(total, "decrypting") as advance:
        assert advance is not None
        for _ in range(8):
            advance(1024 * 1024)
    drawn = screen.getvalue()
    assert "decrypting" in drawn
    assert "8.4/8.4 MB" in drawn  # bytes done of the total (rich counts in SI units)
    assert "/s" in drawn  # the rate
    assert "0:00:00" in drawn  # the time left, at the end


def test_no_bar_when_not_a_terminal_or_when_quick(monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    with byte_progress(64 * 1024 * 1024, "sealing") as advance:
        assert advance is None
    monkeypatch.setattr("sys.stderr", Terminal())
    with byte_progress(PROGRESS_MIN_BYTES - 1, "sealing") as advance:
        assert advance is None
    assert pipe.getvalue() == ""
