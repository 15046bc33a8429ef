"""Record a notebook's results inside the notebook itself, so tests read them back from the executed copy.

The last cell of each notebook calls `record(...)`; the values are displayed under a private MIME type
(and as a short text line), so papermill's output notebook carries them and `read_results` finds them.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

MIME = "application/vnd.magistral-kit.results+json"


def record(**values: Any) -> None:
    """Display `values` (JSON-serialisable) as this notebook's recorded results: the exact values under
    the private MIME type (what tests read), a key/value table for the reader (floats to 3 decimals)."""
    from IPython.display import display

    data = json.loads(json.dumps(values, default=str))
    display({MIME: data, "text/html": results_html(data),
             "text/plain": "recorded: " + ", ".join(f"{k}={_short(v)}" for k, v in data.items())}, raw=True)


def results_html(data: dict) -> str:
    """The recorded values as a two-column table, one value per row, numbers rounded for reading."""
    rows = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
                   f"<td style='text-align:left'>{html.escape(_short(v, limit=400))}</td></tr>"
                   for k, v in data.items())
    return f"<table class='mk-results'><caption style='text-align:left'><b>recorded results</b></caption>{rows}</table>"


def _short(value: Any, limit: int = 80) -> str:
    """A value for reading: floats to 3 decimals (also inside lists and dicts), long text cut at `limit`."""
    def rounded(v: Any) -> Any:
        if isinstance(v, float):
            return round(v, 3)
        if isinstance(v, list):
            return [rounded(x) for x in v]
        if isinstance(v, dict):
            return {k: rounded(x) for k, x in v.items()}
        return v

    text = repr(rounded(value))
    return text if len(text) <= limit else text[:limit - 1] + "…"


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
