"""Keep committed notebooks clean with nbstripout: no execution counts, no outputs except in cells tagged
``keep_output`` (nbstripout's own tag), whose outputs nbval checks.

Why nbstripout: it is the maintained tool for exactly this (also usable as a git filter:
``nbstripout --install``); this module only holds the project's settings for it, so the command line,
the git filter and the hygiene test strip the same way. Kept cells also start with
``# NBVAL_CHECK_OUTPUT`` so ``pytest --nbval-lax`` compares their outputs
(``tests/test_notebook_hygiene.py`` enforces both).

    python -m magistral_kit.notebook.nbclean notebooks/*.ipynb            # = nbstripout with our settings
    python -m magistral_kit.notebook.nbclean --execute notebooks/00_model.ipynb   # refresh kept outputs
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import nbformat

KEEP_TAG = "keep_output"  # nbstripout keeps the outputs of cells with this tag
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"  # nbval (lax mode) compares the outputs of cells starting with this
# papermill's run records, on top of nbstripout's default volatile keys
EXTRA_KEYS = ["metadata.papermill", "cell.metadata.papermill"]
NBSTRIPOUT_ARGS = ["--extra-keys", " ".join(EXTRA_KEYS)]


def is_kept(cell: dict) -> bool:
    """Whether nbstripout keeps this cell's outputs (the ``keep_output`` tag)."""
    return cell.get("cell_type") == "code" and KEEP_TAG in cell.get("metadata", {}).get("tags", [])


def is_checked(cell: dict) -> bool:
    """Whether nbval (lax mode) compares this cell's outputs (its first line is ``# NBVAL_CHECK_OUTPUT``)."""
    src = cell.get("source", "")
    src = "".join(src) if isinstance(src, list) else src
    return cell.get("cell_type") == "code" and src.lstrip().startswith(CHECK_MARK)


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """What the command line does to a notebook, in memory (nbstripout's `strip_output`, our settings)."""
    from nbstripout import strip_output

    default_keys = ["metadata.signature", "metadata.widgets", "cell.metadata.collapsed",
                    "cell.metadata.ExecuteTime", "cell.metadata.execution", "cell.metadata.heading_collapsed",
                    "cell.metadata.hidden", "cell.metadata.scrolled"]
    return strip_output(nb, keep_output=False, keep_count=False, keep_id=False,
                        extra_keys=default_keys + EXTRA_KEYS)


def execute_in_place(path: Path, timeout: int = 1800) -> None:
    """Run every cell of a notebook (its folder as working directory) so the kept cells get fresh outputs."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--execute", action="store_true", help="run the notebook first (refresh kept outputs)")
    args = parser.parse_args(argv)
    for nb in args.notebooks:
        if args.execute:
            execute_in_place(nb)
    cmd = [sys.executable, "-m", "nbstripout", *NBSTRIPOUT_ARGS, *map(str, args.notebooks)]
    return subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
