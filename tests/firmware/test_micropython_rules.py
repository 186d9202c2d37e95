"""Rules mpy-cross cannot check: imports that compile but fail on the ESP32 at run time."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"
SOURCES = sorted(FIRMWARE.rglob("*.py"))
# Not on a stock ESP32 MicroPython image; `typing` only under try/except ImportError.
FORBIDDEN = {"__future__", "dataclasses", "orjson", "collections.abc", "abc", "enum", "pathlib"}
GUARDED_ONLY = {"typing"}


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in node.handlers
        ):
            return True
    return False


def test_there_are_firmware_sources() -> None:
    """The glob finds the core and the glue (an empty list would pass everything below)."""
    names = {path.name for path in SOURCES}
    assert {"main.py", "boot.py", "node.py", "portal.py"} <= names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(FIRMWARE)))
def test_firmware_file_imports_only_what_micropython_has(path: Path) -> None:
    """No __future__, dataclasses, orjson, ...; typing only under try/except ImportError."""
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
        else:
            continue
        for module in modules:
            assert module not in FORBIDDEN, f"{path.name}:{node.lineno} imports {module}"
            if module in GUARDED_ONLY:
                assert _guarded(node, parents), (
                    f"{path.name}:{node.lineno}: import {module} only under try/except ImportError"
                )
