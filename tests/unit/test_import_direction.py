"""The direction of imports between the project's packages, read from the source with `ast`.

    aidcore      standard library and itself only (the pure core)
    schemas      + aidcore and third-party libraries; no shell package
    streams, projections, connectors
                 not each other, not infra, not aidledger
    infra        not aidledger
    aidledger    the entry point: nothing else imports it

Every import counts, wherever it is written (inside functions and `if TYPE_CHECKING:` too).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("aidcore", "schemas", "streams", "projections", "connectors", "infra", "aidledger")
SHELLS = frozenset({"streams", "projections", "connectors"})
STDLIB = frozenset(sys.stdlib_module_names)


class Import(NamedTuple):
    file: str  # relative to the repository root
    line: int
    module: str  # absolute dotted name as written or resolved ("" for a bare relative import)

    @property
    def top(self) -> str:
        return self.module.split(".")[0]

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: imports {self.module}"


def _package_parts(path: Path) -> list[str]:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return parts


def imports_of(source: str, path: Path) -> Iterator[Import]:
    """Every import in `source`, relative ones resolved against the file's package."""
    rel = str(path.relative_to(ROOT))
    module_parts = _package_parts(path)
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(source, filename=rel)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(rel, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield Import(rel, node.lineno, node.module or "")
            else:
                base = module_parts if is_package else module_parts[:-1]
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                resolved = ".".join([*base, node.module] if node.module else base)
                yield Import(rel, node.lineno, resolved)


def source_files(package: str) -> list[Path]:
    folder = ROOT / package
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def violation(package: str, imp: Import) -> str | None:
    """Why `imp`, written in `package`, breaks the direction, or None."""
    top = imp.top
    if top == package:
        return None
    if top == "aidledger":
        return "nothing but aidledger may import aidledger"
    if package == "aidcore":
        if top not in STDLIB:
            return "aidcore may import only the standard library and aidcore"
    elif package == "schemas":
        if top in SHELLS or top == "infra":
            return "schemas may import only the standard library, aidcore, schemas and third-party libraries"
    elif package in SHELLS:
        if top in SHELLS or top == "infra":
            return f"{package} must not import {top} (streams, projections and connectors are independent shells; infra is wired in by aidledger)"
    return None


def violations(package: str) -> list[str]:
    found = []
    for path in source_files(package):
        try:
            source = path.read_text(encoding="utf-8")
            imports = list(imports_of(source, path))
        except SyntaxError as err:
            found.append(f"{path.relative_to(ROOT)}: cannot be parsed ({err.msg}, line {err.lineno})")
            continue
        for imp in imports:
            why = violation(package, imp)
            if why:
                found.append(f"{imp}  ({why})")
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_follow_the_direction(package):
    found = violations(package)
    assert not found, f"{len(found)} import(s) against the direction:\n" + "\n".join(found)


def test_the_core_and_the_codec_exist():
    # Guards the test itself: a wrong ROOT would make every package look empty and pass.
    assert source_files("aidcore") and source_files("schemas")
    assert (ROOT / "pyproject.toml").is_file()


def test_the_reader_sees_real_imports():
    ledger = ROOT / "aidcore" / "ledger.py"
    modules = {imp.module for imp in imports_of(ledger.read_text(encoding="utf-8"), ledger)}
    assert "aidcore.intake" in modules
    assert "__future__" in modules


# --- the checker itself, on made-up sources ------------------------------------------------------


def _check(package: str, source: str, filename: str = "mod.py") -> list[str]:
    path = ROOT / package / filename
    return [str(imp) for imp in imports_of(source, path) if violation(package, imp)]


@pytest.mark.parametrize(
    ("package", "source"),
    [
        ("aidcore", "import fastavro"),
        ("aidcore", "from schemas import codec"),
        ("aidcore", "def f():\n    import psycopg\n"),
        ("aidcore", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import streams.app\n"),
        ("schemas", "from streams import metrics"),
        ("schemas", "import infra.kafka"),
        ("schemas", "from projections.writer import write_batch"),
        ("streams", "from projections import queries"),
        ("projections", "from connectors.intake import ingest_rows"),
        ("connectors", "import streams.app"),
        ("connectors", "from infra.stack import Stack"),
        ("infra", "from aidledger.cli import main"),
        ("schemas", "import aidledger"),
        ("aidcore", "from aidledger import cli"),
    ],
)
def test_the_checker_flags_a_wrong_import(package, source):
    assert _check(package, source)


@pytest.mark.parametrize(
    ("package", "source"),
    [
        ("aidcore", "import hashlib, json\nfrom aidcore import nik\nfrom . import outcomes\nfrom .intake import Disbursement\n"),
        ("schemas", "import fastavro\nfrom aidcore.intake import Disbursement\nfrom schemas import codec\n"),
        ("streams", "import faust\nfrom aidcore.ledger import decide_batch\nfrom schemas import codec\nfrom .state import x\n"),
        ("infra", "import psycopg\nfrom projections.migrate import migrate\nfrom schemas.topics import declared_topics\n"),
        ("aidledger", "from streams.worker import run_worker\nfrom infra.stack import Stack\nfrom aidledger.cli import main\n"),
    ],
)
def test_the_checker_allows_a_right_import(package, source):
    assert _check(package, source) == []


def test_relative_imports_resolve_to_the_package():
    path = ROOT / "streams" / "app.py"
    assert [i.module for i in imports_of("from . import metrics\nfrom .state import x\n", path)] == ["streams", "streams.state"]
    deep = ROOT / "connectors" / "sub" / "mod.py"
    assert [i.module for i in imports_of("from ..files import read_rows\n", deep)] == ["connectors.files"]
    init = ROOT / "connectors" / "__init__.py"
    assert [i.module for i in imports_of("from .files import read_rows\n", init)] == ["connectors.files"]
