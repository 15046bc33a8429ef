"""The documented API is the API: every Python block of README.md runs, in order, in one process, in a
temporary folder, on the embedded model. A block that cannot run here carries a visible mark right before it,
``<!-- not run in tests: REASON -->``; the mark is checked, never a silent skip."""
from __future__ import annotations

import ast
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from magistral_kit.config import REPO_ROOT, data_dir

README = REPO_ROOT / "README.md"
MARK = re.compile(r"<!-- not run in tests: (?P<reason>.+?) -->")
FENCE = re.compile(r"^```python\n(?P<code>.*?)^```", re.S | re.M)
GPU_ONLY = re.compile(r"Magistral-Small|device=\"cuda\"|\.cuda\(")


def blocks() -> list[tuple[int, str, str | None]]:
    """(line, code, reason it is not run or None) for every ```python block, in order."""
    text = README.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        before = [ln for ln in text[:m.start()].splitlines() if ln.strip()]
        mark = MARK.fullmatch(before[-1].strip()) if before else None
        out.append((text[:m.start()].count("\n") + 1, m.group("code"), mark.group("reason") if mark else None))
    return out


def test_the_readme_has_blocks_to_run():
    run = [b for b in blocks() if b[2] is None]
    assert len(run) >= 3 and "open_chat" in run[0][1]


def test_every_name_the_readme_imports_exists_where_it_says():
    for line, code, _ in blocks():
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.ImportFrom):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name):  # `from package import submodule`
                        importlib.import_module(f"{node.module}.{alias.name}")
                    assert hasattr(module, alias.name), f"README.md:{line}: {node.module} has no {alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)


def test_public_api_names_resolve_from_the_package_root():
    import magistral_kit

    for name in magistral_kit.__all__:
        assert getattr(magistral_kit, name) is not None, name


def test_blocks_that_cannot_run_here_are_marked_with_a_reason():
    for line, code, reason in blocks():
        if GPU_ONLY.search(code):
            assert reason and "GPU" in reason, f"README.md:{line} needs a GPU: mark it <!-- not run in tests: ... -->"
        if reason is not None:
            assert len(reason.split()) >= 3, f"README.md:{line}: say why the block is not run"


RUNNER = """
import json, sys, traceback
ns = {"__name__": "__readme__"}
for line, code in json.load(open(sys.argv[1])):
    try:
        exec(compile(code, f"README.md:{line}", "exec"), ns)
    except BaseException:
        traceback.print_exc()
        print(f"README block at line {line} failed", file=sys.stderr)
        sys.exit(1)
    print(f"ran README block at line {line}", flush=True)
"""


@pytest.mark.slow
def test_readme_blocks_run_in_order_in_one_process(tmp_path):
    runnable = [(line, code) for line, code, reason in blocks() if reason is None]
    (tmp_path / "blocks.json").write_text(json.dumps(runnable))
    (tmp_path / "runner.py").write_text(RUNNER)
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(data_dir() / "models")  # the converted embedded model, not converted again
    env = {**os.environ, "MAGISTRAL_KIT_DATA": str(data), "MAGISTRAL_KIT_TMP": str(tmp_path / "tmp"),
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "runner.py", "blocks.json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("ran README block") == len(runnable)
    assert (data / "cubes" / "demo").is_dir()  # the quick start's cube, in the temp folder
    assert (tmp_path / "tmp" / "maps" / "memory_map.html").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["blocks.json", "runner.py", "data", "tmp"])
