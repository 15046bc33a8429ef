"""Record a notebook's results inside the notebook itself, so tests read them back from the executed copy.

The last cell of each notebook calls `record(...)`; the values are displayed under a private MIME type
(and as a short text line), so papermill's output notebook carries them and `read_results` finds them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MIME = "application/vnd.magistral-kit.results+json"


def record(**values: Any) -> None:
    """Display `values` (JSON-serialisable) as this notebook's recorded results."""
    from IPython.display import display

    data = json.loads(json.dumps(values, default=str))
    display({MIME: data, "text/plain": "recorded: " + ", ".join(f"{k}={v!r}"[:80] for k, v in data.items())},
            raw=True)


def read_results(notebook: str | Path) -> dict:
    """Every value recorded in an executed notebook (later records win)."""
    nb = json.loads(Path(notebook).read_text())
    found: dict = {}
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if MIME in data:
                found.update(data[MIME])
    return found
