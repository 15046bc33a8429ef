"""Pictures of a memory cube: a 2-D map of every memory's embedding and a similarity heatmap (plotly).

Why a map at all: a list of memories does not show what the embedder considers close. The map projects
every stored vector to 2-D (UMAP where umap-learn is installed and there are enough points to give it
neighbours, else PCA — both deterministic for a given seed), colours points by session or by source/kind,
shows a memory's text on hover, and can place a query with lines to its top-k hits so one sees why a
memory was or was not retrieved. The projection is only a picture: the scores on the lines are the real
cosine scores (from `Memory.search` when a memory is given), not distances on the map.

Every function takes a `Memory` (anything with ``items()`` and ``vectors()``) or plain ids/vectors/texts,
so the notebooks call one function per picture and hold no logic::

    m = memory_map(memory, query="Where does Ana live?", top_k=5)
    m                      # the interactive figure
    m.write_html()         # tmp/maps/memory_map.html, standalone (plotly.js inlined)
    similarity_heatmap(memory, newest=20)
"""
from __future__ import annotations

import html
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import pandas as pd

from magistral_kit.config import tmp_dir

Method = Literal["auto", "umap", "pca"]
UMAP_MIN_POINTS = 20  # below this UMAP has too few neighbours to say anything PCA does not
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf"]


# --- gathering what to draw ---------------------------------------------------------------------------
@dataclass
class MemoryPoints:
    """The memories to draw: one row per memory (id, text, source, kind, created, session) + their vectors."""

    table: pd.DataFrame
    vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.table)


def session_of(source: Any) -> str:
    """The session a memory came from, read from its provenance (turn ids look like ``<session>-t<n>``)."""
    items = list(source) if isinstance(source, (list, tuple, np.ndarray)) else ([source] if source else [])
    if not items:
        return "(added by hand)"
    first = str(items[0])
    head, sep, tail = first.rpartition("-t")
    return head if sep and tail.isdigit() else first


def embed_texts(embed: Callable[[list[str]], np.ndarray], texts: Sequence[str], batch_size: int = 64,
                progress: bool = True, desc: str = "embedding memories") -> np.ndarray:
    """Embed many texts in batches behind a progress bar (a notebook bar in Jupyter, plain text headless)."""
    from tqdm.auto import tqdm

    texts = list(texts)
    parts: list[np.ndarray] = []
    with tqdm(total=len(texts), desc=desc, unit="memory", disable=not progress or not texts) as bar:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            parts.append(np.asarray(embed(chunk), dtype=np.float32))
            bar.update(len(chunk))
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.vstack(parts)


def gather(memory: Any = None, *, ids: Sequence[str] | None = None, vectors: np.ndarray | None = None,
           items: pd.DataFrame | None = None, texts: Sequence[str] | None = None,
           embed: Callable[[list[str]], np.ndarray] | None = None, reembed: bool = False,
           progress: bool = True) -> MemoryPoints:
    """Line up texts, provenance and vectors for drawing, from a `Memory` or from plain arrays.

    With a memory, its stored vectors are used (``memory.vectors()``); ``reembed=True`` embeds the texts
    again with ``memory.embed`` behind a progress bar (to see a new embedder's picture of the same cube).
    Without one, pass `items` (a DataFrame with at least ``id`` and ``text``) or `ids` + `texts`, and
    `vectors` or an `embed` function.
    """
    if memory is not None:
        items = memory.items() if items is None else items
        embed = embed or getattr(memory, "embed", None)
        if vectors is None and not reembed:
            vec_ids, vectors = memory.vectors()
            ids = list(vec_ids)
    table = _normalise_items(items, ids, texts)
    if ids is not None and vectors is not None and len(table):
        order = {str(i): n for n, i in enumerate(ids)}
        missing = [i for i in table["id"] if i not in order]
        if missing:
            raise ValueError(f"{len(missing)} memories have no vector (e.g. {missing[0]!r}). Fix: pass "
                             "reembed=True to embed their texts, or rebuild the cube's index")
        vectors = np.asarray(vectors, dtype=np.float32)[[order[i] for i in table["id"]]]
    if vectors is None:
        if embed is None:
            raise ValueError("no vectors to draw: pass a Memory, vectors=..., or embed=<texts → array>")
        vectors = embed_texts(embed, table["text"].tolist(), progress=progress)
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(vectors) != len(table):
        raise ValueError(f"{len(table)} memories but {len(vectors)} vectors: they must line up one to one")
    return MemoryPoints(table.reset_index(drop=True), vectors)


def _normalise_items(items: pd.DataFrame | None, ids: Sequence[str] | None,
                     texts: Sequence[str] | None) -> pd.DataFrame:
    if items is None:
        if texts is None:
            raise ValueError("nothing to draw: pass a Memory, items=DataFrame, or texts=[...]")
        ids = list(ids) if ids is not None else [f"m{n}" for n in range(len(texts))]
        items = pd.DataFrame({"id": ids, "text": list(texts)})
    table = items.copy()
    if "id" not in table.columns:
        table = table.reset_index().rename(columns={table.index.name or "index": "id"})
    table["id"] = table["id"].astype(str)
    for col, default in (("text", ""), ("kind", ""), ("created", "")):
        if col not in table.columns:
            table[col] = default
    if "source" not in table.columns:
        table["source"] = [[] for _ in range(len(table))]
    table["source"] = [list(s) if isinstance(s, (list, tuple, np.ndarray)) else ([s] if s else [])
                       for s in table["source"]]
    # Memory.items() spreads meta keys into columns (the chat stores meta["session"]); plain frames may
    # carry a "meta" dict column instead; otherwise the session is read from the provenance.
    given = table["session"] if "session" in table.columns else [None] * len(table)
    metas = table["meta"] if "meta" in table.columns else [None] * len(table)
    sessions = []
    for src, sess, meta in zip(table["source"], given, metas):
        if not (isinstance(sess, str) and sess) and isinstance(meta, dict):
            sess = meta.get("session")
        sessions.append(str(sess) if isinstance(sess, str) and sess else session_of(src))
    table["session"] = sessions
    return table


# --- projection ---------------------------------------------------------------------------------------
def project(vectors: np.ndarray, method: Method = "auto", seed: int = 0,
            extra: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, str]:
    """2-D coordinates of `vectors` (and of `extra` rows, e.g. a query, placed in the same picture).

    'auto' picks UMAP when umap-learn is importable and there are at least `UMAP_MIN_POINTS` points, else
    PCA. Both are deterministic for a seed (UMAP then runs single-threaded). Returns (coords, extra_coords,
    method used).
    """
    x = np.asarray(vectors, dtype=np.float32)
    n = len(x)
    if n == 0:  # an empty cube: nothing to project, a query (if any) sits at the origin
        return np.zeros((0, 2)), (np.zeros((len(extra), 2)) if extra is not None else None), "none"
    if method == "auto":
        method = "umap" if n >= UMAP_MIN_POINTS and _has_umap() else "pca"
    if method == "umap":
        import umap  # slow import (numba): only when asked for

        both = x if extra is None else np.vstack([x, np.asarray(extra, dtype=np.float32)])
        reducer = umap.UMAP(n_components=2, n_neighbors=max(2, min(15, len(both) - 1)), metric="cosine",
                            min_dist=0.1, random_state=seed, n_jobs=1)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            coords = reducer.fit_transform(both)
        return coords[:n], (coords[n:] if extra is not None else None), "umap"
    if method != "pca":
        raise ValueError(f"method={method!r}: use 'auto', 'umap' or 'pca'")
    mean = x.mean(axis=0)
    centred = x - mean
    if n == 1:
        basis = np.zeros((2, x.shape[1]), dtype=np.float32)
    else:
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        basis = vt[:2]
        # fix each component's sign (largest-magnitude loading positive) so reruns draw the same picture
        signs = np.sign(basis[np.arange(len(basis)), np.abs(basis).argmax(axis=1)])
        basis = basis * np.where(signs == 0, 1, signs)[:, None]
        if len(basis) < 2:
            basis = np.vstack([basis, np.zeros_like(basis)])
    coords = centred @ basis.T
    extra_coords = (np.asarray(extra, dtype=np.float32) - mean) @ basis.T if extra is not None else None
    return coords, extra_coords, "pca"


def _has_umap() -> bool:
    import importlib.util

    return importlib.util.find_spec("umap") is not None


# --- the map ------------------------------------------------------------------------------------------
@dataclass
class QueryHit:
    """One retrieved memory of the plotted query (the score is the real search score)."""

    id: str
    score: float
    text: str


@dataclass
class MemoryMap:
    """The 2-D map of a cube: the plotly figure plus the numbers behind it."""

    figure: Any
    points: pd.DataFrame  # id, text, session, kind, source, x, y
    method: str
    seconds: float
    query: str | None = None
    hits: list[QueryHit] = field(default_factory=list)
    query_xy: tuple[float, float] | None = None

    def write_html(self, path: str | Path | None = None) -> Path:
        """Write the map as one standalone HTML file (plotly.js inlined: opens offline).

        No path: ``tmp/maps/memory_map.html``; a bare file name goes under ``tmp/maps/`` too.
        """
        path = Path(path) if path else Path("memory_map.html")
        if len(path.parts) == 1:
            path = tmp_dir() / "maps" / path
        path.parent.mkdir(parents=True, exist_ok=True)
        # fill the browser window (and follow its resizing) rather than a fixed plot on a blank page
        figure = type(self.figure)(self.figure)
        figure.update_layout(width=None, height=None, autosize=True)
        figure.write_html(str(path), include_plotlyjs=True, full_html=True, config={"responsive": True},
                          default_width="100%", default_height="96vh")
        return path

    def summary(self) -> dict[str, Any]:
        return {"memories": len(self.points), "method": self.method, "seconds": round(self.seconds, 2),
                "sessions": int(self.points["session"].nunique()) if len(self.points) else 0,
                "query": self.query, "hits": [h.id for h in self.hits]}

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict:
        bundle = self.figure._repr_mimebundle_(include, exclude) if hasattr(self.figure, "_repr_mimebundle_") \
            else {}
        bundle = dict(bundle or {})
        bundle["text/plain"] = repr(self)
        return bundle

    def __repr__(self) -> str:
        q = f", query={self.query!r} → {len(self.hits)} hits" if self.query else ""
        return f"MemoryMap({len(self.points)} memories, {self.method}{q})"


def memory_map(memory: Any = None, *, query: str | None = None, top_k: int = 5,
               color_by: Literal["session", "kind", "source"] = "session", method: Method = "auto",
               seed: int = 0, points: MemoryPoints | None = None, progress: bool = True,
               title: str | None = None, **gather_kw: Any) -> MemoryMap:
    """An interactive 2-D map of every memory, optionally with `query` and lines to its top-k hits.

    The hits come from ``memory.search(query, top_k)`` when a memory is given (exactly what the chat would
    retrieve); otherwise from cosine similarity over the given vectors with ``embed`` for the query.
    """
    import plotly.graph_objects as go

    start = time.perf_counter()
    pts = points or gather(memory, progress=progress, **gather_kw)
    table = pts.table
    hits: list[QueryHit] = []
    qvec = None
    if query:
        hits, qvec = _query_hits(memory, pts, query, top_k, gather_kw.get("embed"))
    coords, qxy, used = project(pts.vectors, method, seed, extra=qvec[None, :] if qvec is not None else None)
    table = table.assign(x=coords[:, 0] if len(coords) else [], y=coords[:, 1] if len(coords) else [])
    group_col = {"session": "session", "kind": "kind", "source": "source_label"}[color_by]
    if color_by == "source":
        table["source_label"] = [", ".join(s) if s else "(added by hand)" for s in table["source"]]
    fig = go.Figure()
    for n, (name, grp) in enumerate(table.groupby(group_col, sort=True)):
        fig.add_trace(go.Scatter(
            x=grp["x"], y=grp["y"], mode="markers", name=str(name) or "(none)",
            marker=dict(size=9, color=_PALETTE[n % len(_PALETTE)], line=dict(width=0.5, color="#333")),
            hovertext=[_hover(r) for r in grp.itertuples()], hoverinfo="text"))
    point_xy = dict(zip(table["id"], zip(table["x"], table["y"])))
    query_xy = None
    if query and qxy is not None:
        qx, qy = float(qxy[0, 0]), float(qxy[0, 1])
        query_xy = (qx, qy)
        for h in hits:
            if h.id not in point_xy:
                continue
            hx, hy = point_xy[h.id]
            fig.add_trace(go.Scatter(
                x=[qx, hx], y=[qy, hy], mode="lines", line=dict(color="rgba(200,0,0,0.5)", width=1 + 3 * max(h.score, 0)),
                hoverinfo="text", hovertext=f"score {h.score:.3f}: {h.text[:80]}", showlegend=False))
        fig.add_trace(go.Scatter(
            x=[qx], y=[qy], mode="markers+text", name="query", text=["query"], textposition="top center",
            marker=dict(symbol="star", size=18, color="#d00", line=dict(width=1, color="#600")),
            hovertext=_wrap("query: " + query) + "<br>top hits: " + ", ".join(f"{h.score:.2f}" for h in hits),
            hoverinfo="text"))
    fig.update_layout(
        title=title or f"{len(table)} memories — {used.upper()} of their embeddings, coloured by {color_by}"
        + (f"; ★ = query, lines to its top-{len(hits)}" if query else ""),
        template="plotly_white", height=620, legend_title_text=color_by, margin=dict(l=20, r=20, t=60, b=20),
        # dark text on a light box: the hover is readable whatever the point's colour
        hoverlabel=dict(bgcolor="white", bordercolor="#888", font=dict(color="#222", size=13), align="left"),
        xaxis=dict(showticklabels=False, title=""), yaxis=dict(showticklabels=False, title=""))
    out_cols = [c for c in ("id", "text", "session", "kind", "source", "created", "x", "y") if c in table]
    return MemoryMap(fig, table[out_cols], used, time.perf_counter() - start, query, hits, query_xy)


def _query_hits(memory: Any, pts: MemoryPoints, query: str, top_k: int,
                embed: Callable | None) -> tuple[list[QueryHit], np.ndarray]:
    embed = embed or getattr(memory, "embed", None)
    if embed is None:
        raise ValueError("a query needs an embedder: pass a Memory or embed=<texts → array>")
    qvec = np.asarray(embed([query]), dtype=np.float32)[0]
    if memory is not None and hasattr(memory, "search"):
        found = memory.search(query, top_k=top_k)
        return [QueryHit(str(h.id), float(h.score), h.text) for h in found], qvec
    sims = cosine_matrix(pts.vectors, qvec[None, :])[:, 0]
    order = np.argsort(-sims, kind="stable")[:top_k]
    return [QueryHit(pts.table["id"].iat[i], float(sims[i]), pts.table["text"].iat[i]) for i in order], qvec


def _wrap(text: str, width: int = 60, max_lines: int = 8) -> str:
    lines = textwrap.wrap(text, width) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines] + ["…"]
    return "<br>".join(html.escape(line) for line in lines)


def _hover(row: Any) -> str:
    src = ", ".join(row.source) if row.source else "added by hand"
    from magistral_kit.notebook.tables import readable_time

    created = readable_time(getattr(row, "created", ""))
    return (f"{_wrap(str(row.text))}<br><span style='color:#555'>{html.escape(str(row.id))} · "
            f"{html.escape(str(row.kind))} · from {html.escape(src)} · {html.escape(created)}</span>")


# --- similarity heatmap -------------------------------------------------------------------------------
def cosine_matrix(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarity of every row of `a` with every row of `b` (default: `a`)."""
    a = np.asarray(a, dtype=np.float32)
    b = a if b is None else np.asarray(b, dtype=np.float32)
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    return (a / np.where(na == 0, 1, na)) @ (b / np.where(nb == 0, 1, nb)).T


def newest_points(pts: MemoryPoints, n: int) -> MemoryPoints:
    """The `n` most recently created memories (by ``created``; stored order where it is missing)."""
    table = pts.table.assign(_order=np.arange(len(pts.table)))
    key = table["created"].astype(str)
    picked = table.assign(_key=key).sort_values(["_key", "_order"], kind="stable").tail(n)
    rows = picked["_order"].to_numpy()
    return MemoryPoints(pts.table.iloc[rows].reset_index(drop=True), pts.vectors[rows])


def similarity_matrix(memory: Any = None, newest_n: int = 20, *, points: MemoryPoints | None = None,
                      progress: bool = True, **gather_kw: Any) -> pd.DataFrame:
    """Cosine similarities of the newest `newest_n` memories, as a DataFrame indexed by memory id."""
    pts = newest_points(points or gather(memory, progress=progress, **gather_kw), newest_n)
    sims = cosine_matrix(pts.vectors)
    ids = pts.table["id"].tolist()
    return pd.DataFrame(sims, index=ids, columns=ids)


def similarity_heatmap(memory: Any = None, newest: int = 20, *, points: MemoryPoints | None = None,
                       progress: bool = True, label_chars: int = 32, **gather_kw: Any) -> Any:
    """A plotly heatmap of the cosine similarity between the newest `newest` memories (hover: both texts).

    Near-duplicates show as bright off-diagonal cells: the memories extraction stores twice.
    """
    import plotly.graph_objects as go

    pts = newest_points(points or gather(memory, progress=progress, **gather_kw), newest)
    sims = cosine_matrix(pts.vectors)
    texts = pts.table["text"].astype(str).tolist()
    labels = [f"{i + 1}. {t[:label_chars]}{'…' if len(t) > label_chars else ''}" for i, t in enumerate(texts)]
    hover = [[f"{html.escape(texts[r][:90])}<br>× {html.escape(texts[c][:90])}<br>cosine {sims[r, c]:.3f}"
              for c in range(len(texts))] for r in range(len(texts))]
    # rows carry the text, columns only the row's number: rotated text under the columns takes more room
    # than the map and reads badly; the hover names both memories
    numbers = [str(i + 1) for i in range(len(texts))]
    fig = go.Figure(go.Heatmap(z=sims, x=numbers, y=labels, zmin=-0.2, zmax=1.0, colorscale="Viridis",
                               hovertext=hover, hoverinfo="text", colorbar=dict(title="cosine")))
    size = max(360, 26 * len(texts) + 140)
    fig.update_layout(title=f"cosine similarity of the newest {len(texts)} memories", template="plotly_white",
                      width=size + 260, height=size, yaxis=dict(autorange="reversed"),
                      xaxis=dict(side="top", tickangle=0), margin=dict(t=90))
    return fig
