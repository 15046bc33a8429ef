"""The committed notebooks stay lab-notebook shaped and clean (fast: reads JSON, runs nothing).

Each notebook: an H1 title first; ONE imports cell (the first code cell); ONE cell tagged `parameters` right
after it, holding only ``UPPER_CASE = <literal>`` lines; no execution counts; no error outputs; outputs only
in cells tagged ``keep_output`` (nbstripout's tag), which also start with ``# NBVAL_CHECK_OUTPUT`` so nbval
checks them; no empty cells; the last code cell records results. Fix a dirty notebook with
``python -m magistral_kit.notebook.nbclean notebooks/NAME.ipynb`` (nbstripout with the project's settings).
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import nbformat
import pytest

from magistral_kit.config import REPO_ROOT
from magistral_kit.notebook.nbclean import is_checked, is_kept, strip

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
UPPER = re.compile(r"^[A-Z][A-Z0-9_]*$")
FIX = "Fix: python -m magistral_kit.notebook.nbclean {path}"


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def code_cells(path: Path) -> list[dict]:
    return [c for c in cells(path) if c["cell_type"] == "code"]


def has_import(cell: dict) -> bool:
    try:
        tree = ast.parse(source(cell))
    except SyntaxError:
        return False
    return any(isinstance(node, (ast.Import, ast.ImportFrom)) for node in ast.walk(tree))


def parameters_problems(cell: dict) -> list[str]:
    """What in a parameters cell is not a plain ``UPPER_CASE = literal`` assignment."""
    problems = []
    for node in ast.parse(source(cell)).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            problems.append(f"line {node.lineno}: not a single-name assignment")
            continue
        name = node.targets[0].id
        if not UPPER.match(name):
            problems.append(f"line {node.lineno}: {name} is not UPPER_CASE")
        try:
            ast.literal_eval(node.value)
        except ValueError:
            problems.append(f"line {node.lineno}: {name} is not a plain value (papermill injects literals)")
    return problems


def test_there_are_notebooks():
    assert {p.stem for p in NOTEBOOKS} >= {"00_model", "01_memory_chat", "02_memory_inspector"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_execution_counts_no_errors_outputs_only_where_nbval_checks(path):
    for n, cell in enumerate(code_cells(path)):
        assert cell.get("execution_count") is None, f"{path.name} code cell {n} has an execution count. " \
            + FIX.format(path=path)
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", f"{path.name} code cell {n} has an error output"
            assert not (out.get("output_type") == "stream" and out.get("name") == "stderr"), \
                f"{path.name} code cell {n} keeps a stderr output"
            assert out.get("execution_count") is None, f"{path.name} code cell {n}: output execution count"
        if cell.get("outputs"):
            assert is_kept(cell), (f"{path.name} code cell {n} keeps outputs but is not tagged keep_output. "
                                   + FIX.format(path=path))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_kept_cells_are_the_nbval_checked_ones_and_have_outputs(path):
    for n, cell in enumerate(code_cells(path)):
        assert is_kept(cell) == is_checked(cell), (
            f"{path.name} code cell {n}: a cell tagged keep_output must start with # NBVAL_CHECK_OUTPUT "
            "(and the other way round), so every kept output is checked by nbval")
        if is_kept(cell):
            assert cell.get("outputs"), f"{path.name} code cell {n} is marked for nbval but has no kept output"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_lab_notebook_shape(path):
    all_cells = cells(path)
    first = all_cells[0]
    assert first["cell_type"] == "markdown" and source(first).startswith("# "), \
        f"{path.name} must open with an H1 title and what it is for"
    assert all(source(c).strip() for c in all_cells), f"{path.name} has an empty cell"
    code = code_cells(path)
    imports = [n for n, c in enumerate(code) if has_import(c)]
    assert imports == [0], f"{path.name}: imports belong in ONE cell, the first code cell (found in {imports})"
    params = [n for n, c in enumerate(code) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert params == [1], f"{path.name}: exactly one cell tagged 'parameters', right after imports ({params})"
    assert parameters_problems(code[1]) == []
    assert "record(" in source(code[-1]), f"{path.name}: the last code cell must record(...) the results"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_are_nbstripout_fixed_points(path):
    """nbstripout (the project's settings) would change nothing in a committed notebook."""
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    assert strip(nbformat.read(path, as_version=nbformat.NO_CONVERT)) == nb, \
        f"{path.name} is not clean. " + FIX.format(path=path)


def test_checks_catch_a_dirty_notebook():
    """The checks above can fail: counts, an error and stray outputs are caught and stripped; a kept,
    nbval-checked cell keeps its output (without its count)."""
    dirty = {"cell_type": "code", "execution_count": 3, "id": "a", "metadata": {"scrolled": True},
             "source": "1/0",
             "outputs": [{"output_type": "error", "ename": "ZeroDivisionError", "evalue": "", "traceback": []}]}
    kept = {"cell_type": "code", "execution_count": 4, "id": "b", "metadata": {"tags": ["keep_output"]},
            "source": "# NBVAL_CHECK_OUTPUT\n1",
            "outputs": [{"output_type": "execute_result", "execution_count": 4, "metadata": {},
                         "data": {"text/plain": "1"}}]}
    nb = nbformat.from_dict({"cells": [dirty, kept], "metadata": {"papermill": {"duration": 1.0}},
                             "nbformat": 4, "nbformat_minor": 5})
    assert not is_kept(dirty) and is_kept(kept) and is_checked(kept)
    cleaned = strip(nb)
    assert cleaned.cells[0].outputs == [] and cleaned.cells[0].execution_count is None
    assert "scrolled" not in cleaned.cells[0].metadata
    assert cleaned.cells[1].outputs[0]["data"] == {"text/plain": "1"}
    assert cleaned.cells[1].outputs[0]["execution_count"] is None and cleaned.cells[1].execution_count is None
    assert "papermill" not in cleaned.metadata
    bad = {"source": "MODEL = 'x'\nlr = 0.1\nPATH = make_path()\nprint(1)"}
    assert len(parameters_problems(bad)) == 3
