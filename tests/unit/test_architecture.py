"""The layout shows the architecture: storages sit below the object layer.

No module under ``amphora/storage/`` imports the URI registry, search, the connection, the
database or anything above them: a storage takes and returns records, and the layers above
hand it what it needs (a URI is opened by :mod:`amphora.uri`, which sits above the
storages; queries reach a mirror already written in SQL)."""
from __future__ import annotations

import ast
from pathlib import Path

import amphora

STORAGE = Path(amphora.__file__).parent / "storage"
ABOVE = ("amphora.uri", "amphora.search", "amphora.connection", "amphora.db",
         "amphora.conflict", "amphora.cli", "amphora.testing")


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_storage_module_imports_the_layers_above():
    offenders = {}
    for path in sorted(STORAGE.rglob("*.py")):
        upward = sorted(name for name in imported_modules(path)
                        if any(name == above or name.startswith(above + ".")
                               for above in ABOVE))
        if upward:
            offenders[str(path.relative_to(STORAGE))] = upward
    assert offenders == {}


def test_each_sql_backend_is_a_package():
    for backend in ("sqlite", "postgresql"):
        modules = {path.stem for path in (STORAGE / backend).glob("*.py")}
        assert {"__init__", "storage", "schema", "mirror", "pack"} <= modules, backend
    assert (STORAGE / "sql" / "__init__.py").exists()
