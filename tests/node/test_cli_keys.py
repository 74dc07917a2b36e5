"""The ``comity`` CLI of issue 3: init, card, fingerprint, peer add/list/remove, keys rotate.

Most tests call ``node.cli.main.main`` in process (fast); the acceptance scenario and the
"never a traceback" checks run the real command in a subprocess.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from keys.keystore import Keystore
from keys.truststore import refresh_peer
from node.cli.main import main
from node.services.access import cli_actor
from node.storage.db import Database
from node.storage.models import AuditEntry
from node.storage.trust import DbTrustStore
from protocol.card import parse_card
from protocol.keychain import next_keyset, sign_keyset, verify_chain

PASSPHRASE = "cli test passphrase"
#: scrypt at the production cost takes about half a second per command; tests where the
#: passphrase is beside the point use unencrypted homes
FAST = "--insecure-no-passphrase"


def init_args(home: Path, authority: str = "FR-MJ", *extra: str) -> list[str]:
    return ["init", "--home", str(home), "--authority", authority, "--name", f"{authority} authority",
            "--endpoint", f"https://{authority.lower()}.example/", *extra]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("COMITY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("COMITY_PASSPHRASE", PASSPHRASE)


class Cli:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *args: str | Path) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = self.capsys.readouterr()
        return code, out, err

    def ok(self, *args: str | Path) -> str:
        code, out, err = self(*args)
        assert code == 0, err
        return out


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("comity: error: "), err
    assert "Traceback" not in err
    return lines[0]


# --- in process ------------------------------------------------------------------------------------


def test_init_creates_the_home(cli: Cli, tmp_path: Path) -> None:
    home = tmp_path / "fr"
    out = cli.ok(*init_args(home))
    fp = out.strip()
    assert cli.ok("fingerprint", "--home", home).strip() == fp
    docs = parse_card(cli.ok("card", "--home", home).encode().strip())
    [doc] = verify_chain(docs, fingerprint=fp, now=doc_time(docs))
    assert doc.keyset.authority == "FR-MJ" and doc.keyset.expires_at - doc.keyset.issued_at == 90 * 86400
    token = home / "admin.token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    lines = token.read_text().splitlines()
    assert len(lines) == 1 and len(lines[0]) == 43 and "=" not in lines[0]
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


def doc_time(docs: list[bytes]) -> int:
    from protocol.keychain import read_keyset

    return read_keyset(docs[-1]).keyset.issued_at


def test_init_refuses_an_existing_home(cli: Cli, tmp_path: Path) -> None:
    cli.ok(*init_args(tmp_path / "fr", "FR-MJ", FAST))
    code, _, err = cli(*init_args(tmp_path / "fr"))
    assert code == 3 and "already holds a keystore" in one_error_line(err)


def test_init_with_home_from_the_environment(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMITY_HOME", str(tmp_path / "env-home"))
    args = init_args(tmp_path / "x")
    del args[1:3]
    cli.ok(*args, FAST)
    assert (tmp_path / "env-home" / "keystore.json").exists()


def test_init_validity_days_and_insecure(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMITY_PASSPHRASE")
    home = tmp_path / "fr"
    cli.ok(*init_args(home, "FR-MJ", "--insecure-no-passphrase", "--validity-days", "30"))
    ks = Keystore.open(home, None)
    assert ks.keyset.expires_at - ks.keyset.issued_at == 30 * 86400
    assert cli.ok("keys", "rotate", "--home", home) == "2\n"  # no passphrase needed
    ks = Keystore.open(home, None)
    assert ks.keyset.expires_at - ks.keyset.issued_at == 30 * 86400  # the validity recorded at init


@pytest.mark.parametrize("args", [
    ["init", "--authority", "FR-MJ", "--name", "x", "--endpoint", "https://x/"],  # no home
    ["init", "--home", "H", "--authority", "fr", "--name", "x", "--endpoint", "https://x/"],
    ["init", "--home", "H", "--authority", "FR-MJ", "--name", "x", "--endpoint", "ftp://x/"],
    ["init", "--home", "H", "--name", "x", "--endpoint", "https://x/"],  # missing --authority
    ["init", "--home", "H", "--authority", "FR-MJ", "--name", "x", "--endpoint", "https://x/",
     "--validity-days", "0"],
    ["card"],
    ["keys", "rotate", "--home", "H", "--identity", "--signing-only"],
    ["peer", "add", "--home", "H", "--card", "c"],  # missing --fingerprint
    ["no-such-command"],
    [],
])
def test_usage_errors_exit_2(cli: Cli, tmp_path: Path, args: list[str]) -> None:
    code, _, err = cli(*[str(tmp_path / "h") if a == "H" else a for a in args])
    assert code == 2, err
    assert "Traceback" not in err
    assert not (tmp_path / "h").exists()


def test_init_from_a_prompt_needs_a_terminal(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMITY_PASSPHRASE")
    code, _, err = cli(*init_args(tmp_path / "fr"))
    assert code == 2 and "no passphrase" in one_error_line(err)
    assert not (tmp_path / "fr" / "keystore.json").exists()


def test_passphrase_file(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMITY_PASSPHRASE")
    (tmp_path / "pp").write_text(PASSPHRASE + "\n")
    monkeypatch.setenv("COMITY_PASSPHRASE_FILE", str(tmp_path / "pp"))
    cli.ok(*init_args(tmp_path / "fr"))
    Keystore.open(tmp_path / "fr", PASSPHRASE.encode())


@pytest.mark.parametrize("help_args", [
    [], ["init"], ["card"], ["fingerprint"], ["keys"], ["keys", "rotate"],
    ["peer"], ["peer", "add"], ["peer", "list"], ["peer", "remove"],
])
def test_every_command_has_help(cli: Cli, help_args: list[str]) -> None:
    code, out, _ = cli(*help_args, "--help")
    assert code == 0 and "Usage" in out


def test_rotate_prints_the_version_alone(cli: Cli, tmp_path: Path) -> None:
    home = tmp_path / "fr"
    fp = cli.ok(*init_args(home, "FR-MJ", FAST)).strip()
    ks = Keystore.open(home, None)
    sig, enc = ks.signer.kid, ks.keyset.encryption_keys[0].kid
    assert cli.ok("keys", "rotate", "--home", home, "--signing-only") == "2\n"
    ks = Keystore.open(home, None)
    assert ks.signer.kid != sig and ks.keyset.current_encryption_key(ks.keyset.issued_at).kid == enc
    assert cli.ok("keys", "rotate", "--home", home, "--encryption-only") == "3\n"
    ks = Keystore.open(home, None)
    assert ks.keyset.current_encryption_key(ks.keyset.issued_at).kid != enc
    assert cli.ok("keys", "rotate", "--home", home) == "4\n"
    assert cli.ok("fingerprint", "--home", home).strip() == fp
    assert cli.ok("keys", "rotate", "--home", home, "--identity") == "5\n"
    assert cli.ok("fingerprint", "--home", home).strip() != fp


def test_wrong_passphrase_exits_4(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli.ok(*init_args(tmp_path / "fr"))
    monkeypatch.setenv("COMITY_PASSPHRASE", "wrong")
    code, out, err = cli("keys", "rotate", "--home", tmp_path / "fr")
    assert code == 4 and out == ""
    assert "wrong passphrase" in one_error_line(err)


def test_home_without_keystore_exits_4(cli: Cli, tmp_path: Path) -> None:
    for args in (["card"], ["fingerprint"], ["peer", "list"], ["keys", "rotate"]):
        code, _, err = cli(*args, "--home", tmp_path)
        assert code == 4 and "no keystore" in one_error_line(err)


def test_debug_shows_the_traceback(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMITY_DEBUG", "1")
    code, _, err = cli("card", "--home", tmp_path)
    assert code == 4 and "Traceback" in err and err.strip().splitlines()[-1].startswith("comity: error:")


@pytest.fixture
def two_homes(cli: Cli, tmp_path: Path) -> tuple[Path, Path]:
    fr, de = tmp_path / "fr", tmp_path / "de"
    cli.ok(*init_args(fr, "FR-MJ", FAST))
    cli.ok(*init_args(de, "DE-BFJ", FAST))
    (tmp_path / "fr.card").write_text(cli.ok("card", "--home", fr))
    (tmp_path / "de.card").write_text(cli.ok("card", "--home", de))
    return fr, de


def test_peer_add_list_remove(cli: Cli, two_homes: tuple[Path, Path], tmp_path: Path) -> None:
    fr, de = two_homes
    fp = cli.ok("fingerprint", "--home", fr).strip()
    assert "pinned FR-MJ" in cli.ok("peer", "add", "--home", de, "--card", tmp_path / "fr.card", "--fingerprint", fp)
    [peer] = json.loads(cli.ok("peer", "list", "--home", de, "--json"))
    assert {k: peer[k] for k in ("authority", "name", "endpoint", "pending_endpoint", "keyset_version",
                                 "fingerprint")} == {
        "authority": "FR-MJ", "name": "FR-MJ authority", "endpoint": "https://fr-mj.example/",
        "pending_endpoint": None, "keyset_version": 1, "fingerprint": fp}
    assert isinstance(peer["expires_at"], int)
    assert "FR-MJ" in cli.ok("peer", "list", "--home", de)
    assert cli.ok("peer", "remove", "--home", de, "FR-MJ")
    assert json.loads(cli.ok("peer", "list", "--home", de, "--json")) == []
    code, _, err = cli("peer", "remove", "--home", de, "FR-MJ")
    assert code == 3 and "FR-MJ" in one_error_line(err)


def test_peer_and_key_commands_are_admin_actions_in_the_access_log(cli: Cli, two_homes: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    fr, de = two_homes
    fp = cli.ok("fingerprint", "--home", fr).strip()
    cli.ok("peer", "add", "--home", de, "--card", tmp_path / "fr.card", "--fingerprint", fp)
    cli.ok("keys", "rotate", "--home", de)
    cli.ok("peer", "remove", "--home", de, "FR-MJ")
    db = Database(f"sqlite:///{de / 'comity.db'}")
    try:
        with db.read() as s:
            leaves = [json.loads(leaf) for leaf in s.scalars(
                select(AuditEntry.leaf).where(AuditEntry.log == "access", AuditEntry.event == "admin_action")
                .order_by(AuditEntry.id))]
    finally:
        db.dispose()
    assert [(e["action"], e["actor"], e.get("peer")) for e in leaves] == [
        ("keyset_issued", cli_actor(), None),  # init
        ("peer_pinned", cli_actor(), "FR-MJ"),
        ("keys_rotated", cli_actor(), None),
        ("peer_removed", cli_actor(), "FR-MJ")]


@pytest.mark.parametrize(("card", "fingerprint", "rule"), [
    ("missing.card", "FR", "unreadable"),
    ("garbage.card", "FR", "malformed"),
    ("fr.card", "DE", "fingerprint_mismatch"),
    ("fr.card", "short", "fingerprint_mismatch"),
    ("de.card", "DE", "own_authority"),
])
def test_peer_add_refusals_exit_3(cli: Cli, two_homes: tuple[Path, Path], tmp_path: Path,
                                  card: str, fingerprint: str, rule: str) -> None:
    fr, de = two_homes
    (tmp_path / "garbage.card").write_text("{")
    fps = {"FR": cli.ok("fingerprint", "--home", fr).strip(), "DE": cli.ok("fingerprint", "--home", de).strip()}
    code, _, err = cli("peer", "add", "--home", de, "--card", tmp_path / card,
                       "--fingerprint", fps.get(fingerprint, fingerprint))
    assert code == 3 and f"({rule})" in one_error_line(err)
    assert json.loads(cli.ok("peer", "list", "--home", de, "--json")) == []


def test_pending_endpoint_in_peer_list(cli: Cli, two_homes: tuple[Path, Path], tmp_path: Path) -> None:
    fr, de = two_homes
    fp = cli.ok("fingerprint", "--home", fr).strip()
    cli.ok("peer", "add", "--home", de, "--card", tmp_path / "fr.card", "--fingerprint", fp)
    ks = Keystore.open(fr, None)
    moved = next_keyset(ks.keyset, now=ks.keyset.issued_at + 5, endpoint="https://moved.fr.example/",
                        signing_keys=ks.keyset.signing_keys, encryption_keys=ks.keyset.encryption_keys)
    doc = sign_keyset(moved, [ks.identity_signer])
    db = Database(f"sqlite:///{de / 'comity.db'}")
    try:
        with db.write() as session:
            refresh_peer(DbTrustStore(session), "FR-MJ", [*ks.keyset_docs(), doc], now=moved.issued_at)
    finally:
        db.dispose()
    [peer] = json.loads(cli.ok("peer", "list", "--home", de, "--json"))
    assert peer["endpoint"] == "https://fr-mj.example/"
    assert peer["pending_endpoint"] == "https://moved.fr.example/"
    assert "pending: https://moved.fr.example/" in cli.ok("peer", "list", "--home", de)


# --- real processes --------------------------------------------------------------------------------


def comity(*args: str | Path, passphrase: str | None = PASSPHRASE, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMITY_")}
    if passphrase is not None:
        env["COMITY_PASSPHRASE"] = passphrase
    return subprocess.run([sys.executable, "-m", "node.cli.main", *map(str, args)], env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False)


def test_real_process_errors_are_one_line(tmp_path: Path) -> None:
    home = tmp_path / "fr"
    assert comity(*init_args(home), cwd=tmp_path).returncode == 0
    wrong = comity("keys", "rotate", "--home", home, passphrase="wrong", cwd=tmp_path)
    assert wrong.returncode == 4 and "wrong passphrase" in one_error_line(wrong.stderr)
    none = comity("keys", "rotate", "--home", home, passphrase=None, cwd=tmp_path)
    assert none.returncode == 2 and "no passphrase" in one_error_line(none.stderr)
    again = comity(*init_args(home), cwd=tmp_path)
    assert again.returncode == 3 and "already holds a keystore" in one_error_line(again.stderr)


@pytest.mark.slow
def test_acceptance_scenario(tmp_path: Path) -> None:
    """Issue 3's acceptance, by real processes: two homes pin each other, one rotates and re-imports."""

    def run(*args: str | Path, expect: int = 0) -> str:
        p = comity(*args, cwd=tmp_path)
        assert p.returncode == expect, p.stderr
        if expect:
            one_error_line(p.stderr)
            return p.stderr
        return p.stdout

    a, b = tmp_path / "a", tmp_path / "b"
    run(*init_args(a, "FR-MJ"))
    run(*init_args(b, "DE-BFJ"))
    fp_a, fp_b = run("fingerprint", "--home", a).strip(), run("fingerprint", "--home", b).strip()
    (tmp_path / "a1.card").write_text(run("card", "--home", a))
    (tmp_path / "b.card").write_text(run("card", "--home", b))
    run("peer", "add", "--home", b, "--card", tmp_path / "a1.card", "--fingerprint", fp_a)
    run("peer", "add", "--home", a, "--card", tmp_path / "b.card", "--fingerprint", fp_b)

    assert run("keys", "rotate", "--home", a) == "2\n"
    assert run("keys", "rotate", "--home", a, "--identity") == "3\n"
    fp_a2 = run("fingerprint", "--home", a).strip()
    assert fp_a2 != fp_a
    (tmp_path / "a3.card").write_text(run("card", "--home", a))

    # the originally pinned fingerprint still works: the chain leads from it
    assert "v1 to v3" in run("peer", "add", "--home", b, "--card", tmp_path / "a3.card", "--fingerprint", fp_a)
    # and so does the new one
    run("peer", "add", "--home", b, "--card", tmp_path / "a3.card", "--fingerprint", fp_a2)
    [peer] = json.loads(run("peer", "list", "--home", b, "--json"))
    assert (peer["keyset_version"], peer["fingerprint"]) == (3, fp_a2)
    # the old card is a rollback; a wrong fingerprint is refused
    assert "(rollback)" in run("peer", "add", "--home", b, "--card", tmp_path / "a1.card",
                               "--fingerprint", fp_a, expect=3)
    assert "(fingerprint_mismatch)" in run("peer", "add", "--home", b, "--card", tmp_path / "a3.card",
                                           "--fingerprint", fp_b, expect=3)
    # a fresh node pins the rotated node under its original fingerprint, from v1
    c = tmp_path / "c"
    run(*init_args(c, "IT-MG"))
    run("peer", "add", "--home", c, "--card", tmp_path / "a3.card", "--fingerprint", fp_a)
