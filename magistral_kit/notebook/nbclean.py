"""Keep committed notebooks clean: no execution counts, no outputs except in cells marked for nbval.

Why: outputs in git are noise (timings, addresses, private chat text) and make every run a diff; the few
deterministic outputs worth keeping (the config table, the model's size) are checked by
``pytest --nbval-lax``, so they are marked in the cell (``# NBVAL_CHECK_OUTPUT`` as its first line, plus the
tag ``nbval-check-output``) and kept. ``tests/test_notebook_hygiene.py`` enforces the result.

    python -m magistral_kit.notebook.nbclean notebooks/*.ipynb                 # strip in place
    python -m magistral_kit.notebook.nbclean --keep-from tmp/executed/00_model.ipynb notebooks/00_model.ipynb
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
CHECK_TAG = "nbval-check-output"
_VOLATILE_CELL_META = ("execution", "papermill", "collapsed", "scrolled", "jupyter")
_VOLATILE_NB_META = ("papermill", "widgets")


def is_checked(cell: dict) -> bool:
    """Whether nbval (lax mode) compares this cell's outputs."""
    src = cell.get("source", "")
    src = "".join(src) if isinstance(src, list) else src
    return cell.get("cell_type") == "code" and (src.lstrip().startswith(CHECK_MARK)
                                                 or CHECK_TAG in cell.get("metadata", {}).get("tags", []))


def clean(nb: dict, keep_from: dict | None = None) -> dict:
    """A cleaned copy of a notebook (as JSON dict). With `keep_from` (an executed copy of the same notebook),
    the checked cells take their outputs from it, matched by cell order."""
    nb = copy.deepcopy(nb)
    donor = [c for c in (keep_from or {}).get("cells", []) if c.get("cell_type") == "code"]
    code_n = -1
    for cell in nb["cells"]:
        for key in _VOLATILE_CELL_META:
            cell.get("metadata", {}).pop(key, None)
        if cell["cell_type"] != "code":
            continue
        code_n += 1
        cell["execution_count"] = None
        if not is_checked(cell):
            cell["outputs"] = []
            continue
        outputs = donor[code_n]["outputs"] if keep_from is not None and code_n < len(donor) else cell["outputs"]
        cell["outputs"] = [_clean_output(o) for o in outputs if o.get("output_type") != "error"
                           and not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
    for key in _VOLATILE_NB_META:
        nb.get("metadata", {}).pop(key, None)
    return nb


def _clean_output(out: dict) -> dict:
    out = copy.deepcopy(out)
    if "execution_count" in out:
        out["execution_count"] = None
    if isinstance(out.get("metadata"), dict):
        out["metadata"] = {}
    return out


def clean_file(path: str | Path, keep_from: str | Path | None = None) -> bool:
    """Clean a notebook file in place; returns whether it changed."""
    path = Path(path)
    before = path.read_text(encoding="utf-8")
    donor = json.loads(Path(keep_from).read_text(encoding="utf-8")) if keep_from else None
    after = json.dumps(clean(json.loads(before), donor), indent=1, ensure_ascii=False) + "\n"
    if after != before:
        path.write_text(after, encoding="utf-8")
    return after != before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--keep-from", type=Path, help="executed copy whose checked-cell outputs to keep")
    args = parser.parse_args(argv)
    if args.keep_from and len(args.notebooks) != 1:
        parser.error("--keep-from takes one notebook")
    for nb in args.notebooks:
        changed = clean_file(nb, args.keep_from)
        print(f"{'cleaned' if changed else 'clean  '} {nb}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
