"""The package layout shows the architecture: each layer imports only from the layers below it.

    top      chat/, notebook/, evaluation/, __main__
    middle   model/, memory/          (neither imports the other: the chat composes them)
    ground   config.py, diagnostics.py
"""
from __future__ import annotations

import ast
from pathlib import Path

import magistral_kit

PKG = Path(magistral_kit.__file__).parent
RANK = {"config": 0, "diagnostics": 0, "model": 1, "memory": 1, "chat": 2, "notebook": 2, "evaluation": 2,
        "__main__": 2}


def _part(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "magistral_kit" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                raise AssertionError(f"{path}:{node.lineno}: relative import; the kit uses absolute imports")
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def _layer_violations() -> list[str]:
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        if rel.name == "__init__.py" and len(rel.parts) == 1:
            continue  # the package root re-exports the public API (lazily) from every layer
        own = rel.parts[0].removesuffix(".py")
        assert own in RANK, f"{rel}: not in a known layer; add it to RANK in this test and to the README"
        for line, module in _imports(path):
            other = _part(module)
            if other is None or other == own:
                continue
            assert other in RANK, f"{rel}:{line} imports unknown part {module}"
            if RANK[other] > RANK[own] or (RANK[other] == RANK[own] == 1):
                bad.append(f"{rel}:{line} ({own}, layer {RANK[own]}) imports {module} ({other}, layer {RANK[other]})")
    return bad


def test_no_module_imports_from_a_layer_above_it():
    assert _layer_violations() == []


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    fake = tmp_path / "magistral_kit"
    (fake / "memory").mkdir(parents=True)
    (fake / "memory" / "x.py").write_text("from magistral_kit.chat.session import open_chat\n")
    (fake / "model").mkdir()
    (fake / "model" / "y.py").write_text("import magistral_kit.memory.cube\n")
    monkeypatch.setattr(__import__(__name__), "PKG", fake)
    assert len(_layer_violations()) == 2


def test_public_api_is_importable_from_the_package_root():
    import subprocess
    import sys

    code = ("import sys, magistral_kit\n"
            "assert 'torch' not in sys.modules and 'memos' not in sys.modules, 'the root import must stay light'\n"
            "from magistral_kit import *\n"
            "missing = [n for n in magistral_kit.__all__ if n not in globals()]\n"
            "assert not missing, missing\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
