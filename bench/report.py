"""Tables in README.md and bench/GPU.md, generated from the results the bench scripts wrote.

Why: a figure typed into a document drifts from the measurement behind it. Every table of figures lives
between two markers in a document,

    <!-- table:NAME -->
    ...generated markdown...
    <!-- /table:NAME -->

and is produced from a JSON file in ``bench/results/`` by the bench script that wrote that file.

    python bench/report.py            # regenerate every table block in README.md and bench/GPU.md
    python bench/report.py --check    # exit 1, naming each block that differs (tests/test_report.py runs this)

**Protocol for a bench script that owns a table** (add your own the same way):

1. The script writes its results as JSON to ``bench/results/<file>.json`` (machine and versions included).
2. It exposes a pure function ``markdown_table(result: dict) -> str`` (another name is fine for a second
   table) that renders that dict as markdown: the table, and a line saying what was measured, where, and
   from which results file. No I/O, no clock, no randomness: the same JSON always gives the same text.
   Importing the script must not run anything (keep work under ``if __name__ == "__main__":``).
3. Register the table in `TABLES` below: ``"NAME": ("bench/<script>.py", "<function>", "<file>.json")``.
4. Put the two markers in README.md or bench/GPU.md (any file in `DOCUMENTS`) and run
   ``python bench/report.py``. A number about a measurement that is not in such a block does not belong in
   the documents (nor in docstrings).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DOCUMENTS = (REPO / "README.md", REPO / "bench" / "GPU.md")

# NAME -> (bench script, function rendering the table, results file under bench/results/)
TABLES: dict[str, tuple[str, str, str]] = {
    "memory_cost": ("bench/memory_cost.py", "markdown_table", "memory_cost.json"),
    "soak": ("bench/soak.py", "markdown_table", "soak_200.json"),
    "soak_new": ("bench/soak.py", "markdown_table", "soak_faithful_200.json"),
    "answer_use": ("bench/answer_use.py", "markdown_table", "answer_use.json"),
    "extraction_cost": ("bench/extraction_cost.py", "markdown_table", "extraction_cost.json"),
    "locomo": ("bench/locomo_recall.py", "markdown_table", "locomo_raw.json"),
    "locomo_ablation": ("bench/locomo_recall.py", "ablation_table", "locomo_ablation.json"),
    "memory_scale": ("bench/memory_scale.py", "markdown_table", "memory_scale.json"),
    "gpu_h200": ("bench/gpu_chat.py", "h200_table", "gpu_chat_h200.json"),
    "gpu_h200_probe": ("bench/gpu_chat.py", "probe_table", "gpu_chat_h200.json"),
    "nf4_sass": ("bench/nf4_sass.py", "markdown_table", "nf4_sass.json"),
    "nf4_ncu": ("bench/nf4_ncu.py", "markdown_table", "nf4_ncu_h200.json"),
    "gpu_summary": ("bench/gpu_chat.py", "markdown_table", "gpu_chat_h100.json"),
    # GPU.md's H100 sections: gpu_<part> is gpu_chat.py's <part>_table over the same run
    **{f"gpu_{part}": ("bench/gpu_chat.py", f"{part}_table", "gpu_chat_h100.json")
       for part in ("decode", "correctness", "prefill", "load", "turn")},
}
_BLOCK = re.compile(r"(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)\n?(<!-- /table:(?P=name) -->)", re.S)
_MODULES: dict[str, ModuleType] = {}


def _module(script: str) -> ModuleType:
    if script not in _MODULES:
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        path = REPO / script
        spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise FileNotFoundError(f"{script}: no such bench script (TABLES in bench/report.py names it)")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _MODULES[script] = module
    return _MODULES[script]


def render(name: str) -> str:
    """The markdown of table `name`, from its results file, by its bench script's function."""
    if name not in TABLES:
        raise KeyError(f"table {name!r} is not registered in bench/report.py TABLES (known: {sorted(TABLES)})")
    script, function, results = TABLES[name]
    fn: Callable[[dict], str] = getattr(_module(script), function)
    path = RESULTS / results
    if not path.exists():
        raise FileNotFoundError(f"table {name!r} needs {path.relative_to(REPO)}, which does not exist. Fix: run "
                                f"{script} (its docstring says how) or remove the table's block")
    result = json.loads(path.read_text())
    return fn(result).strip()


def regenerate(text: str) -> tuple[str, list[str]]:
    """(the document with every table block regenerated, the names of the blocks that changed)."""
    changed: list[str] = []

    def sub(m: re.Match) -> str:
        body = render(m.group("name"))
        if body != m.group("body").strip():
            changed.append(m.group("name"))
        return f"{m.group(1)}{body}\n{m.group(4)}"

    return _BLOCK.sub(sub, text), changed


def blocks(text: str) -> list[str]:
    return [m.group("name") for m in _BLOCK.finditer(text)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block differs")
    args = ap.parse_args(argv)
    stale: list[str] = []
    for doc in DOCUMENTS:
        if not doc.exists():
            continue
        text = doc.read_text(encoding="utf-8")
        new, changed = regenerate(text)
        rel = doc.relative_to(REPO)
        if args.check:
            stale += [f"{rel}: table:{n}" for n in changed]
        elif new != text:
            doc.write_text(new, encoding="utf-8")
            print(f"{rel}: regenerated {', '.join(changed)}")
    if stale:
        print("tables differ from bench/results (run `python bench/report.py`):\n  " + "\n  ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
