"""Tables for looking into a cube: every memory with its provenance, search hits with scores, and an edit
shown as before/after.

Why: `Memory.items()` is the complete record (every meta key as a column); a researcher browsing a cube
wants the few columns that answer "what is stored, where did it come from, when, was it extracted or kept
raw" — and wants to see an edit's effect on search, not take it on trust.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import pandas as pd

from magistral_kit.notebook.tables import Table, readable_time, readable_html

TABLE_COLUMNS = ["text", "kind", "status", "source", "session", "created", "updated", "id"]


def memory_table(memory: Any, newest: int | None = None) -> Table:
    """The cube as a table, newest first: text, kind (raw / extracted / manual / ingested), provenance
    (turn ids), session, created, updated, id. `newest` keeps only that many rows. Displays readably
    (`Table`: whole text left-aligned, short ids, one-line times); the data keep every full value."""
    if memory is None:
        return Table(columns=TABLE_COLUMNS)
    items = memory.items()
    if items.empty:
        return Table(columns=TABLE_COLUMNS)
    table = items.copy()
    if "session" not in table.columns:
        from magistral_kit.notebook.maps import session_of

        table["session"] = [session_of(s) for s in table["source"]]
    table["source"] = [", ".join(s) if isinstance(s, (list, tuple)) else str(s) for s in table["source"]]
    table = table[[c for c in TABLE_COLUMNS if c in table.columns]].iloc[::-1].reset_index(drop=True)
    return Table(table.head(newest) if newest else table)


def kind_counts(memory: Any) -> Table:
    """How many memories of each kind (a small table: kind, memories): how often extraction fell back to
    raw."""
    items = memory.items()
    counts = items["kind"].value_counts() if len(items) else pd.Series(dtype=int)
    return Table({"kind": [str(k) for k in counts.index], "memories": [int(v) for v in counts.values]},
                 columns=["kind", "memories"])


def history_table(memory: Any, id: str) -> Table:
    """A memory and every older version it superseded, newest first (status, why, when): the update chain."""
    from magistral_kit.memory.superseding import chain

    rows = []
    for hit in chain(memory, id):
        why = next((h.get("update_type") for h in memory.get(id).meta.get("history", [])
                    if h.get("archived_memory_id") == hit.id), None)
        rows.append({"text": hit.text, "kind": hit.kind, "status": hit.meta.get("status", "activated"),
                     "replaced_because": why or "", "created": hit.created, "id": hit.id})
    return Table(rows, columns=["text", "kind", "status", "replaced_because", "created", "id"])


def search_table(memory: Any, query: str, top_k: int = 5) -> Table:
    """`Memory.search` as a table: rank, score, text, kind, provenance, id."""
    hits = memory.search(query, top_k=top_k)
    return Table([{"rank": n + 1, "score": round(h.score, 4), "text": h.text, "kind": h.kind,
                   "source": ", ".join(h.source), "id": h.id} for n, h in enumerate(hits)],
                 columns=["rank", "score", "text", "kind", "source", "id"])


@dataclass
class Edit:
    """One update or delete: the memory before and after, and the query's hits before and after."""

    action: str
    id: str
    before: dict | None
    after: dict | None
    query: str
    hits_before: pd.DataFrame
    hits_after: pd.DataFrame

    @property
    def rank_before(self) -> int | None:
        return _rank(self.hits_before, self.id)

    @property
    def rank_after(self) -> int | None:
        return _rank(self.hits_after, self.id)

    def to_html(self) -> str:
        left = "style='text-align:left;vertical-align:top'"
        muted = "color:var(--jp-ui-font-color2, #666)"

        def when(stamp: Any) -> str:
            return f"<span style='white-space:nowrap'>{html.escape(readable_time(stamp))}</span>"

        def show(rec: dict | None) -> str:
            if rec is None:
                return "<i>(gone)</i>"
            return (f"{html.escape(rec['text'])}<br><span style='{muted}'>{html.escape(str(rec['kind']))}; from "
                    f"{html.escape(', '.join(rec['source']))}; created {when(rec['created'])}; updated "
                    f"{when(rec.get('updated', ''))}</span>")

        rank = lambda r: "not in top-k" if r is None else f"rank {r}"  # noqa: E731
        return (f"<div><b>{self.action}</b> <code>{html.escape(self.id)}</code><table>"
                f"<tr><th></th><th {left}>before</th><th {left}>after</th></tr>"
                f"<tr><th {left}>memory</th><td {left}>{show(self.before)}</td><td {left}>{show(self.after)}</td></tr>"
                f"<tr><th {left}>rank when searching<br><span style='font-weight:normal;{muted}'>"
                f"“{html.escape(self.query)}”</span></th><td {left}>{rank(self.rank_before)}</td>"
                f"<td {left}>{rank(self.rank_after)}</td></tr></table>"
                f"<details><summary>hits before / after</summary>{readable_html(self.hits_before)}"
                f"{readable_html(self.hits_after)}</details></div>")

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        return f"Edit({self.action} {self.id}: rank {self.rank_before} → {self.rank_after} for {self.query!r})"


def _rank(hits: pd.DataFrame, id: str) -> int | None:
    found = hits.index[hits["id"] == id].tolist() if len(hits) else []
    return int(hits.loc[found[0], "rank"]) if found else None


def _record(memory: Any, id: str) -> dict | None:
    try:
        hit = memory.get(id)
    except KeyError:
        return None
    return {"text": hit.text, "kind": hit.kind, "source": list(hit.source), "created": hit.created,
            "updated": _updated(memory, id)}


def _updated(memory: Any, id: str) -> str:
    items = memory.items()
    row = items[items["id"] == id]
    return str(row["updated"].iat[0]) if len(row) and "updated" in row else ""


def update_and_show(memory: Any, id: str, text: str, query: str | None = None, top_k: int = 5) -> Edit:
    """Replace a memory's text and show it before/after, with `query`'s hits before and after the edit."""
    query = query or text
    before = _record(memory, id)
    hits_before = search_table(memory, query, top_k)
    memory.update(id, text)
    return Edit("update", id, before, _record(memory, id), query, hits_before, search_table(memory, query, top_k))


def delete_and_show(memory: Any, id: str, query: str | None = None, top_k: int = 5) -> Edit:
    """Delete a memory and show that it is gone, from the table and from `query`'s hits."""
    before = _record(memory, id)
    query = query or (before["text"] if before else "")
    hits_before = search_table(memory, query, top_k)
    memory.delete(id)
    return Edit("delete", id, before, _record(memory, id), query, hits_before, search_table(memory, query, top_k))


def find_id(memory: Any, contains: str) -> str:
    """The id of the first (oldest) memory whose text contains `contains` (case-insensitive)."""
    items = memory.items()
    match = items[items["text"].str.casefold().str.contains(contains.casefold(), regex=False)]
    if match.empty:
        raise KeyError(f"no memory contains {contains!r}. Fix: pick a phrase from memory_table(memory)")
    return str(match["id"].iat[0])
