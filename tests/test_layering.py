"""Layering: imports run node -> keys -> protocol only, and protocol/ stays pure.

Two checks: importing every ``protocol`` module in a fresh interpreter loads none of the
forbidden packages (what actually happens), and an AST scan of every source file (what the
code says, including branches that do not run at import time).  The scanner is itself
tested on bad sources, so that a check that could never fail would be noticed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = frozenset({"fastapi", "starlette", "sqlalchemy", "alembic", "httpx", "structlog", "uvicorn"})
FORBIDDEN_FOR = {
    "protocol": FRAMEWORKS | {"keys", "node"},
    "keys": frozenset({"node"}),
}
#: protocol/ is sans-I/O: no clock, no environment, no files, no randomness.
IMPURE_MODULES = frozenset({"secrets", "random", "socket", "subprocess", "shutil", "tempfile", "pathlib"})
IMPURE_NAMES = frozenset({
    "time.time", "time.time_ns", "time.monotonic", "time.monotonic_ns", "time.perf_counter", "time.localtime",
    "time.gmtime", "time.sleep", "datetime.now", "datetime.utcnow", "datetime.today", "date.today",
    "datetime.datetime.now", "datetime.datetime.utcnow", "datetime.datetime.today", "datetime.date.today",
    "os.environ", "os.getenv", "os.putenv", "os.urandom", "os.getrandom", "os.open", "os.listdir",
    "os.system", "io.open", "uuid.uuid1", "uuid.uuid4",
})
IMPURE_BUILTINS = frozenset({"open", "input", "print", "__import__", "exec", "eval", "breakpoint"})


def modules_of(package: str) -> list[str]:
    base = ROOT / package
    names = []
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def loaded_after_import(modules: list[str]) -> set[str]:
    code = f"import {', '.join(modules)}; import sys; print(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return {name.split(".")[0] for name in result.stdout.split()}


@pytest.mark.parametrize("package", sorted(FORBIDDEN_FOR))
def test_importing_package_loads_nothing_forbidden(package: str) -> None:
    modules = modules_of(package)
    assert modules, f"no modules found under {package}/"
    loaded = loaded_after_import(modules)
    assert package in loaded
    assert loaded & FORBIDDEN_FOR[package] == set()


# --- static scan -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    where: str
    what: str


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) of every import, relative imports resolved."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                parts = module.split(".")
                base = parts if is_package else parts[:-1]
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*base, target] if target else base)
            yield node.lineno, target, [a.name for a in node.names]


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


def scan_source(source: str, *, module: str, is_package: bool = False, pure: bool) -> list[Finding]:
    """Layering (and, when ``pure``, purity) violations in one module's source."""
    tree = ast.parse(source)
    package = module.split(".")[0]
    forbidden = FORBIDDEN_FOR.get(package, frozenset())
    out = []
    for line, target, names in _imports(tree, module, is_package):
        where = f"{module}:{line}"
        candidates = [target] + [f"{target}.{n}" for n in names]
        if target.split(".")[0] in forbidden:
            out.append(Finding(where, f"imports {target}"))
        if pure:
            if target.split(".")[0] in IMPURE_MODULES:
                out.append(Finding(where, f"imports {target}"))
            out += [Finding(where, f"imports {c}") for c in candidates if c in IMPURE_NAMES]
    if pure:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                name = _dotted(node)
                if name is not None and (name in IMPURE_NAMES or any(name.endswith("." + n) for n in IMPURE_NAMES)):
                    out.append(Finding(f"{module}:{node.lineno}", f"uses {name}"))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in IMPURE_BUILTINS:
                out.append(Finding(f"{module}:{node.lineno}", f"calls {node.func.id}()"))
    return out


def scan_package(package: str) -> list[Finding]:
    findings = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        is_package = rel.name == "__init__"
        module = ".".join(rel.parts[:-1] if is_package else rel.parts)
        findings += scan_source(path.read_text(), module=module, is_package=is_package, pure=package == "protocol")
    return findings


@pytest.mark.parametrize("package", sorted(FORBIDDEN_FOR))
def test_static_scan_is_clean(package: str) -> None:
    assert (ROOT / package / "__init__.py").exists()
    assert scan_package(package) == []


BAD_SOURCES = [
    ("protocol.x", "import fastapi"),
    ("protocol.x", "from sqlalchemy.orm import Session"),
    ("protocol.x", "import keys.keystore"),
    ("protocol.x", "from node import api"),
    ("protocol.x", "from ..node import api"),
    ("protocol.sub.x", "from ...keys import signer"),
    ("keys.x", "from node.storage import db"),
    ("keys.x", "from ..node import storage"),
    ("protocol.x", "import time\ndef f():\n    return time.time()"),
    ("protocol.x", "from time import time"),
    ("protocol.x", "import datetime\nnow = datetime.datetime.now()"),
    ("protocol.x", "from datetime import datetime\nnow = datetime.now()"),
    ("protocol.x", "import os\nhome = os.environ['HOME']"),
    ("protocol.x", "from os import environ"),
    ("protocol.x", "import os\nb = os.urandom(16)"),
    ("protocol.x", "import secrets"),
    ("protocol.x", "from random import randbytes"),
    ("protocol.x", "data = open('f').read()"),
]


@pytest.mark.parametrize("module,source", BAD_SOURCES, ids=[s.splitlines()[-1] for _, s in BAD_SOURCES])
def test_scanner_catches_violations(module: str, source: str) -> None:
    assert scan_source(source, module=module, pure=module.startswith("protocol")) != []


@pytest.mark.parametrize(
    "module,source",
    [
        ("protocol.x", "from .errors import Category\nfrom . import jose\nimport hashlib, json, base64"),
        ("keys.x", "import protocol.envelope\nfrom protocol import jose\nimport os, time\nt = time.time()"),
        ("protocol.x", "def f(now: int) -> int:\n    return now + 1"),
    ],
)
def test_scanner_passes_clean_sources(module: str, source: str) -> None:
    assert scan_source(source, module=module, pure=module.startswith("protocol")) == []
