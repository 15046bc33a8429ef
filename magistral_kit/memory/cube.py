"""The memory cube: MemOS `general_text` textual memory over embedded qdrant, made durable and inspectable.

MemOS's `GeneralTextMemory` owns the qdrant index (its `QdrantVecDB`, its memory items as payloads), with the
kit's embedder and LLM backends registered in its factories (see `memos_fixes`). What MemOS lacks is added
here: a durable copy of every memory (`durable`: fsync'd journal + atomic snapshots) from which the index is
rebuilt when damaged, scores and provenance on search hits, one lock around every operation, a process lock
that names its holder, and a read-only view beside a running chat.

    mem = open_memory("data/cubes/demo")
    mem.add("The user's sister is called Ana.", source=["s1-t3"], kind="extracted")
    mem.search("who is Ana?")            # [Hit(text=..., score=0.71, source=['s1-t3'], ...)]
"""
from __future__ import annotations

import atexit
import html
import json
import math
import os
import shutil
import threading
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from magistral_kit.memory import durable
from magistral_kit.memory.durable import (
    CubeCorruptError, CubeError, CubeFormatError, CubeLockedError, DimensionMismatchError, ReadOnlyCubeError,
)
from magistral_kit.memory.embedding import EMBEDDED, Embedder, get_embedder, one_blas_thread
from magistral_kit.memory import memos_fixes as fixes

if TYPE_CHECKING:
    import pandas as pd

    from magistral_kit.memory.retrieval import RetrievalOptions

__all__ = ["Memory", "Hit", "open_memory", "reembed", "restore_previous", "CubeError", "CubeLockedError",
           "CubeFormatError", "DimensionMismatchError", "CubeCorruptError", "ReadOnlyCubeError"]

# "episodic": a user message stored verbatim (it states something); "episodic-question": a user message with no
# fact (question, greeting, chit-chat), left out of default search; "extracted": derived from an episodic one.
KINDS = ("episodic", "episodic-question", "extracted", "manual", "ingested")
DEFAULT_SEARCH_KINDS = tuple(k for k in KINDS if k != "episodic-question")
_LEGACY_KINDS = {"raw": "episodic"}  # cubes written before the episodic kinds
COLLECTION = "memories"
_MEMOS_SOURCE = {"extracted": "conversation", "episodic": "conversation", "episodic-question": "conversation", "ingested": "file", "manual": None}
_OPEN: dict[Path, "Memory"] = {}
_OPEN_LOCK = threading.Lock()
_UPSERT_BATCH = 1000
_ALL: "weakref.WeakSet[Memory]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Close open cubes at interpreter exit (qdrant's client otherwise fails noisily in __del__)."""
    for mem in list(_ALL):
        try:
            mem.close()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass


@dataclass
class Hit:
    """One memory, as a search result (with its cosine or fused score) or as looked up by id (score NaN)."""

    id: str
    text: str
    score: float
    source: list[str]
    kind: str
    created: str
    meta: dict = field(default_factory=dict)

    def _repr_html_(self) -> str:
        score = "—" if math.isnan(self.score) else f"{self.score:.3f}"
        return (f"<div><b>{score}</b> {html.escape(self.text)} <span style='color:#666'>[{self.kind}; from "
                f"{html.escape(', '.join(self.source) or '—')}; {html.escape(self.created)}]</span></div>")


def _hit(rec: dict[str, Any], score: float) -> Hit:
    kind = _LEGACY_KINDS.get(rec["kind"], rec["kind"])
    return Hit(rec["id"], rec["text"], score, list(rec["source"]), kind, rec["created"], dict(rec["meta"]))


def _searchable(rec: dict[str, Any], kinds: tuple[str, ...], include_archived: bool) -> bool:
    if _LEGACY_KINDS.get(rec["kind"], rec["kind"]) not in kinds:
        return False
    return include_archived or rec["meta"].get("status") != "archived"


class Memory:
    """An open cube. Use `open_memory`; close it (or use `with`) to release the folder for other processes."""

    def __init__(self, path: Path, embedder: Embedder, read_only: bool,
                 retrieval: "RetrievalOptions | None") -> None:
        self.path = path
        self.read_only = read_only
        self.embedder = embedder
        self.dimension = embedder.dimension
        self.notes: list[str] = []
        self.retrieval = retrieval
        self._lock = threading.RLock()
        self._closed = False
        self._records: dict[str, dict[str, Any]] = {}
        self._seq = 0
        self._journal: durable.Journal | None = None
        self._proc_lock: durable.ProcessLock | None = None
        self._text_mem: Any = None  # memos GeneralTextMemory
        self._lexical: Any = None
        self.info: dict[str, Any] = {}

    # --- opening ---------------------------------------------------------------------------------------
    def _open(self) -> None:
        if not self.read_only:
            self.path.mkdir(parents=True, exist_ok=True)
            self._proc_lock = durable.ProcessLock(self.path)
            note = self._proc_lock.acquire()
            if note:
                self.notes.append(note)
        try:
            self._open_locked()
        except BaseException:
            self._release()
            raise

    def _open_locked(self) -> None:
        info = durable.read_cube_file(self.path)
        if info is None:
            if self.read_only:
                raise CubeFormatError(
                    f"{self.path} is not a cube (no {durable.CUBE_FILE}); read_only=True cannot create one. "
                    f"Fix: check the path, or open it writable once to create it.")
            info = durable.write_cube_file(self.path, self.embedder.name, self.dimension,
                                           index_text=self._index_settings())
            self.notes.append(f"new cube created (embedder {self.embedder.name}, {self.dimension} dims)")
        self.info = info
        if int(info["dimension"]) != self.dimension:
            raise DimensionMismatchError(
                f"cube {self.path} stores {info['dimension']}-dim vectors (embedder {info['embedder']!r}) but "
                f"embedder {self.embedder.name!r} produces {self.dimension}-dim vectors. Fix: open it with "
                f"embedder={info['embedder']!r}, or build a copy for the new embedder with "
                f"reembed({str(self.path)!r}, <new folder>, embedder={self.embedder.name!r}).")
        if info["embedder"] != self.embedder.name:
            self.notes.append(f"cube was built with embedder {info['embedder']!r}, opened with "
                              f"{self.embedder.name!r} (same dimension): scores mix two spaces; reembed() fixes it")
        if info.get("index_text", self._index_settings()) != self._index_settings():
            self.notes.append(f"cube was embedded with index text settings {info.get('index_text')}, now "
                              f"{self._index_settings()}: new memories are embedded differently; reembed() "
                              f"re-embeds all")
        loaded = self._load_durable()
        self._records, self._seq = loaded.records, loaded.seq
        self.notes.extend(loaded.notes)
        if not self.read_only:
            self._journal = durable.Journal(self.path, truncate_at=loaded.journal_good_bytes)
            for tmp in sorted(self.path.glob("*.json.tmp")):
                tmp.unlink()
                self.notes.append(f"removed {tmp.name}: an unfinished save of a killed process (the "
                                  f"snapshot before it and the journal hold everything)")
        self._open_index()
        if self.retrieval is not None:
            self._build_lexical()

    def _open_durable_only(self) -> None:
        """Only the durable copy, no index and no lock (what reembed reads)."""
        self.info = durable.read_cube_file(self.path) or {}
        loaded = self._load_durable()
        self._records, self._seq = loaded.records, loaded.seq
        self.notes.extend(loaded.notes)

    def _load_durable(self) -> durable.LoadResult:
        """Read-only beside a writer: retry when a save replaced the snapshot while we read."""
        for _ in range(5):
            before = _stat(self.path / durable.SNAPSHOT)
            loaded = durable.load(self.path, self.dimension)
            if self.read_only and _stat(self.path / durable.SNAPSHOT) != before:
                continue
            return loaded
        return loaded

    def _index_settings(self) -> dict[str, Any] | None:
        o = self.retrieval
        if o is None:
            return None
        return {"speaker_in_text": o.speaker_in_text, "date_in_text": o.date_in_text,
                "context_turns": o.context_turns}

    def _memos_config(self, qdrant_path: str) -> Any:
        fixes.register_backends()
        from memos.configs.memory import MemoryConfigFactory

        return MemoryConfigFactory(backend="general_text", config={
            "extractor_llm": {"backend": fixes.LLM_BACKEND,
                              "config": {"model_name_or_path": "kit-extractor", "max_tokens": 256}},
            "vector_db": {"backend": "qdrant", "config": {
                # unit-norm vectors: dot == cosine, and qdrant local mode then skips re-normalising
                # every stored vector on every search (16 ms → 3 ms at 10k memories)
                "collection_name": COLLECTION, "vector_dimension": self.dimension,
                "distance_metric": "dot", "path": qdrant_path}},
            "embedder": {"backend": fixes.EMBEDDER_BACKEND,
                         "config": {"model_name_or_path": self.embedder.name}},
        }).config

    def _open_index(self) -> None:
        fixes.register_backends()
        from memos.memories.textual.general import GeneralTextMemory

        if self.read_only:
            self._text_mem = fixes.quiet_construct(lambda: GeneralTextMemory(self._memos_config(":memory:")))
            self._rebuild_index(None)
            self.notes.append(f"read-only: index built in memory from the durable copy "
                              f"({len(self._records)} memories); writes are refused")
            return
        qdir = self.path / durable.INDEX_DIR
        reason = None if qdir.exists() else "index folder missing"
        try:
            self._text_mem = fixes.quiet_construct(lambda: GeneralTextMemory(self._memos_config(str(qdir))))
        except Exception as exc:  # noqa: BLE001 - any failure to open the index means: rebuild it
            reason = f"index unreadable: {type(exc).__name__}: {str(exc)[:120]}"
            shutil.rmtree(qdir, ignore_errors=True)
            self._text_mem = fixes.quiet_construct(lambda: GeneralTextMemory(self._memos_config(str(qdir))))
        vecdb = self._text_mem.vector_db
        fixes.relax_index_fsync(vecdb)
        note = fixes.check_collection_dimension(vecdb, self.dimension)
        if note:
            reason = reason or note
        if reason is None:
            stored = self._index_state()
            want = {i: r["seq"] for i, r in self._records.items()}
            if stored != want:
                missing = len(want.keys() - stored.keys())
                extra = len(stored.keys() - want.keys())
                stale = sum(1 for i in want.keys() & stored.keys() if want[i] != stored[i])
                reason = f"index out of step ({missing} missing, {extra} extra, {stale} stale)"
        if reason is not None and (self._records or reason != "index folder missing"):
            self._rebuild_index(reason)

    def _index_state(self) -> dict[str, int]:
        vecdb = self._text_mem.vector_db
        out: dict[str, int] = {}
        offset = None
        while True:
            points, offset = vecdb.client.scroll(COLLECTION, limit=5000, offset=offset,
                                                 with_payload=["kit_seq"], with_vectors=False)
            for p in points:
                out[str(p.id)] = int((p.payload or {}).get("kit_seq", -1))
            if offset is None:
                return out

    def _rebuild_index(self, reason: str | None) -> None:
        """Drop the collection and fill it from the durable copy (stored vectors: no re-embedding)."""
        vecdb = self._text_mem.vector_db
        if vecdb.collection_exists(COLLECTION):
            vecdb.client.delete_collection(COLLECTION)
        vecdb.create_collection()
        fixes.relax_index_fsync(vecdb)
        recs = list(self._records.values())
        for start in range(0, len(recs), _UPSERT_BATCH):
            vecdb.add(self._points(recs[start:start + _UPSERT_BATCH]))
        if reason is not None:
            self.notes.append(f"index rebuilt from journal ({reason}); {len(recs)} memories")

    def _build_lexical(self) -> None:
        from magistral_kit.memory.retrieval import LexicalIndex

        self._lexical = LexicalIndex()
        for rec in self._records.values():
            self._lexical.add(rec["id"], self._lexical_text(rec))

    def _lexical_text(self, rec: dict[str, Any]) -> str:
        """What BM25 indexes: retrieval's `lexical_text` (index_text without the neighbouring context)."""
        from magistral_kit.memory.retrieval import lexical_text

        return lexical_text(rec["text"], rec["meta"], self.retrieval)

    # --- payloads --------------------------------------------------------------------------------------
    def _points(self, recs: Iterable[dict[str, Any]]) -> list[Any]:
        from memos.memories.textual.item import TextualMemoryItem, TextualMemoryMetadata
        from memos.vec_dbs.item import VecDBItem

        points = []
        for rec in recs:
            meta = rec["meta"]
            key = meta.get("key") if isinstance(meta.get("key"), str) else None
            tags = meta.get("tags")
            tags = [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else None
            item = TextualMemoryItem(id=rec["id"], memory=rec["text"], metadata=TextualMemoryMetadata(
                source=_MEMOS_SOURCE.get(rec["kind"]), key=key, tags=tags,
                updated_at=rec["updated"], provenance=list(rec["source"]), kind=rec["kind"],
                created_at=rec["created"]))
            payload = item.model_dump(exclude_none=True)
            payload["kit_seq"] = rec["seq"]
            points.append(VecDBItem(id=rec["id"], vector=rec["vector"].tolist(), payload=payload))
        return points

    def _embed_text(self, text: str, meta: dict[str, Any]) -> str:
        if self.retrieval is None:
            return text
        from magistral_kit.memory.retrieval import index_text

        return index_text(text, meta, self.retrieval)

    # --- guards ----------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise CubeError(f"cube {self.path} is closed. Fix: open it again with open_memory(path).")

    def _check_writable(self) -> None:
        self._check_open()
        if self.read_only:
            raise ReadOnlyCubeError(
                f"cube {self.path} was opened read_only=True (beside a running chat); writes are refused. "
                f"Fix: write through the chat that holds it, or close that and open_memory(path).")

    # --- reading ---------------------------------------------------------------------------------------
    def search(self, query: str, top_k: int = 5, *, kinds: Iterable[str] | None = None,
               include_archived: bool = False) -> list[Hit]:
        """The top_k memories nearest to `query`, best first, with cosine (or fused) scores and provenance.

        `kinds=None` searches every kind but "episodic-question"; archived memories (meta status "archived",
        superseded by a newer one) are left out unless `include_archived=True`.
        """
        kinds = DEFAULT_SEARCH_KINDS if kinds is None else tuple(kinds)
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"search(kinds=...): {sorted(unknown)} not among {KINDS}")
        with self._lock:
            self._check_open()
            if top_k <= 0 or not self._records:
                return []
            excluded = sum(not _searchable(r, kinds, include_archived) for r in self._records.values())
            opts = self.retrieval
            if opts is None:
                qtext, n = query, top_k + excluded
            else:
                from magistral_kit.memory.retrieval import candidate_count, query_text

                qtext, n = query_text(query, opts), candidate_count(top_k, opts) + excluded
            vec = self.embedder.encode([qtext])[0]
            vecdb = self._text_mem.vector_db
            with one_blas_thread():
                pairs = fixes.call_with_reopen(vecdb, lambda: fixes.search_with_scores(vecdb, vec, n),
                                               self.notes, "search")
            if opts is not None:
                from magistral_kit.memory.retrieval import rerank

                pairs = rerank(query, pairs, top_k + excluded, opts, self._lexical)
            hits = [_hit(self._records[i], s) for i, s in pairs if i in self._records
                    and _searchable(self._records[i], kinds, include_archived)]
            return hits[:top_k]

    def get(self, id: str) -> Hit:
        """One memory by id (score NaN)."""
        with self._lock:
            self._check_open()
            return _hit(self._need(id), float("nan"))

    def _need(self, id: str) -> dict[str, Any]:
        rec = self._records.get(id)
        if rec is None:
            raise KeyError(f"no memory with id {id!r} in {self.path}. Fix: take ids from search() or items().")
        return rec

    def items(self) -> "pd.DataFrame":
        """All memories, oldest first: id, text, kind, source, created, updated, then meta keys."""
        import pandas as pd

        with self._lock:
            self._check_open()
            rows = []
            for rec in sorted(self._records.values(), key=lambda r: (r["created"], r["seq"])):
                row = {"id": rec["id"], "text": rec["text"], "kind": _LEGACY_KINDS.get(rec["kind"], rec["kind"]),
                       "source": list(rec["source"]), "created": rec["created"], "updated": rec["updated"],
                       "status": rec["meta"].get("status", "activated")}
                for k, v in rec["meta"].items():
                    row[k if k not in row else f"meta.{k}"] = v
                rows.append(row)
        base = ["id", "text", "kind", "source", "created", "updated", "status"]
        return pd.DataFrame(rows, columns=None if rows else base)

    def vectors(self) -> tuple[list[str], np.ndarray]:
        """Ids and their stored embedding rows (unit norm), for the embedding map."""
        with self._lock:
            self._check_open()
            ids = list(self._records)
            mat = (np.stack([self._records[i]["vector"] for i in ids]) if ids
                   else np.zeros((0, self.dimension), dtype=np.float32))
            return ids, mat

    def embed(self, texts: list[str]) -> np.ndarray:
        """The cube's embedder (unit-norm float32 rows), e.g. to place a query on the embedding map."""
        return self.embedder.encode(list(texts))

    def __len__(self) -> int:
        return len(self._records)

    # --- writing ---------------------------------------------------------------------------------------
    def add(self, text: str, source: Iterable[str] = (), kind: str = "manual", meta: dict | None = None) -> str:
        """Store one memory; it is durable (fsync'd) when this returns. Returns its id."""
        return self.add_many([{"text": text, "source": list(source), "kind": kind, "meta": meta or {}}])[0]

    def add_many(self, items: list[dict]) -> list[str]:
        """Store a batch as ONE journal operation: after a crash either all of it is there or none."""
        with self._lock:
            self._check_writable()
            if not items:
                return []
            now = durable.now_iso()
            seq = self._seq + 1
            recs = [_new_record(item, now, seq, n) for n, item in enumerate(items)]
            self._embed_records(recs)
            self._commit("add", recs)
            return [r["id"] for r in recs]

    def _add_records(self, recs: list[dict[str, Any]]) -> None:
        """Store prepared records keeping id/created (reembed); embeds their text."""
        with self._lock:
            self._check_writable()
            seq = self._seq + 1
            recs = [{**r, "seq": seq} for r in recs]
            self._embed_records(recs)
            self._commit("add", recs)

    def update(self, id: str, text: str | None = None, *, meta: dict | None = None) -> None:
        """Replace a memory's text (re-embedded) and/or merge `meta` into its metadata (e.g. status
        "archived"); provenance and creation time stay, `updated` is set."""
        with self._lock:
            self._check_writable()
            old = self._need(id)
            if text is not None:
                _check_text(text, 0)
            merged = {**old["meta"], **(meta or {})}
            try:
                json.dumps(merged)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"update(meta=...) must be JSON-serialisable ({exc})") from None
            rec = {**old, "text": old["text"] if text is None else text, "meta": merged,
                   "updated": durable.now_iso(), "seq": self._seq + 1}
            if text is None:
                rec["vector"] = old["vector"]
            else:
                self._embed_records([rec])
            self._commit("update", [rec])

    def delete(self, id: str) -> None:
        """Remove a memory (durable when this returns)."""
        with self._lock:
            self._check_writable()
            self._need(id)
            vecdb = self._text_mem.vector_db
            fixes.call_with_reopen(vecdb, lambda: vecdb.delete([id]), self.notes, "delete")
            op = {"seq": self._seq + 1, "op": "delete", "ids": [id]}
            try:
                self._journal.append(op)
            except BaseException:
                self._repair_index(f"journal write failed after deleting {id} from the index")
                raise
            self._records.pop(id)
            self._seq += 1
            if self._lexical is not None:
                self._lexical.remove(id)

    def _embed_records(self, recs: list[dict[str, Any]]) -> None:
        vecs = self.embedder.encode([self._embed_text(r["text"], r["meta"]) for r in recs])
        for rec, vec in zip(recs, vecs, strict=True):
            rec["vector"] = vec
        _check_vectors(recs, self.dimension)

    def _commit(self, op_name: str, recs: list[dict[str, Any]]) -> None:
        """Index first (a vector qdrant rejects never reaches the journal), then the fsync'd journal line."""
        vecdb = self._text_mem.vector_db
        ids = [r["id"] for r in recs]
        previous = {i: self._records[i] for i in ids if i in self._records}

        def upsert() -> None:
            for start in range(0, len(recs), _UPSERT_BATCH):
                vecdb.add(self._points(recs[start:start + _UPSERT_BATCH]))

        try:
            fixes.call_with_reopen(vecdb, upsert, self.notes, op_name)
        except BaseException as exc:
            self._undo_index(ids, previous, f"failed {op_name}")
            raise CubeError(f"{op_name} of {len(recs)} memories failed in the index ({type(exc).__name__}: "
                            f"{exc}); nothing was stored and the cube is still usable.") from exc
        op = {"seq": recs[0]["seq"], "op": op_name, "items": [durable.record_json(r) for r in recs]}
        try:
            self._journal.append(op)
        except BaseException:
            self._undo_index(ids, previous, f"journal write failed during {op_name}")
            raise
        for rec in recs:
            self._records[rec["id"]] = rec
        self._seq = recs[0]["seq"]
        if self._lexical is not None:
            for rec in recs:
                self._lexical.add(rec["id"], self._lexical_text(rec))

    def _undo_index(self, ids: list[str], previous: dict[str, dict[str, Any]], why: str) -> None:
        """Put the index back in step with the durable copy after a failed write."""
        vecdb = self._text_mem.vector_db
        try:
            new = [i for i in ids if i not in previous]
            if new:
                vecdb.delete(new)
            if previous:
                vecdb.add(self._points(previous.values()))
        except Exception:  # noqa: BLE001 - fall back to the slow, sure path
            self._repair_index(why)

    def _repair_index(self, why: str) -> None:
        try:
            fixes.reopen_client(self._text_mem.vector_db)
        except Exception:  # noqa: BLE001
            pass
        self._rebuild_index(why)

    # --- save / close ----------------------------------------------------------------------------------
    def save(self) -> Path:
        """Compact the journal into an atomic snapshot (the previous one kept as memories.prev.json)."""
        with self._lock:
            self._check_writable()
            snap = durable.write_snapshot(self.path, self._records, self._seq, self.info)
            self._journal.rotate()
            return snap

    def close(self) -> None:
        """Release qdrant and the process lock (idempotent). Unsaved memories are safe in the journal."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._release()
        with _OPEN_LOCK:
            if _OPEN.get(self.path) is self:
                del _OPEN[self.path]

    def _release(self) -> None:
        if self._text_mem is not None:
            fixes.close_vecdb(self._text_mem.vector_db)
        if self._journal is not None:
            self._journal.close()
        if self._proc_lock is not None:
            self._proc_lock.release()

    @property
    def text_memory(self) -> Any:
        """MemOS's `GeneralTextMemory` under this cube (its QdrantVecDB holds the index). For reading and
        experiments only: writes through it bypass the durable copy and are undone by the next rebuild."""
        return self._text_mem

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Memory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("read-only" if self.read_only else "open")
        return f"<Memory {self.path} {state}: {len(self)} memories, {self.embedder.name} {self.dimension}d>"

    def _repr_html_(self) -> str:
        state = "closed" if self._closed else ("read-only" if self.read_only else "writable")
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes) or "<li><i>none</i></li>"
        newest = sorted(self._records.values(), key=lambda r: (r["created"], r["seq"]))[-5:][::-1]
        rows = "".join(
            f"<tr><td style='text-align:left'>{html.escape(r['text'])}</td><td>{r['kind']}</td>"
            f"<td>{html.escape(', '.join(r['source']))}</td><td>{r['created']}</td></tr>" for r in newest)
        return (f"<div><b>Memory cube</b> <code>{html.escape(str(self.path))}</code> ({state}): "
                f"<b>{len(self)}</b> memories, embedder {html.escape(self.embedder.name)} "
                f"({self.dimension} dims)<br>notes:<ul>{notes}</ul>"
                f"<table><tr><th>newest</th><th>kind</th><th>from</th><th>created</th></tr>{rows}</table></div>")


def _stat(path: Path) -> tuple | None:
    try:
        st = path.stat()
        return (st.st_ino, st.st_mtime_ns, st.st_size)
    except FileNotFoundError:
        return None


def _check_text(text: Any, n: int) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"item {n}: text must be a non-empty string, got {text!r}")


def _new_record(item: dict, now: str, seq: int, n: int) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise TypeError(f"item {n}: expected a dict with text/source/kind/meta, got {type(item).__name__}")
    unknown = set(item) - {"text", "source", "kind", "meta"}
    if unknown:
        raise ValueError(f"item {n}: unknown keys {sorted(unknown)}; allowed: text, source, kind, meta")
    _check_text(item.get("text"), n)
    kind = item.get("kind", "manual")
    kind = _LEGACY_KINDS.get(kind, kind)
    if kind not in KINDS:
        raise ValueError(f"item {n}: kind {kind!r} is not one of {KINDS}")
    source = item.get("source", ())
    source = [source] if isinstance(source, str) else list(source or ())
    if not all(isinstance(s, str) for s in source):
        raise ValueError(f"item {n}: source must be turn ids (strings) such as 's1-t3' or 'D1:3'")
    meta = dict(item.get("meta") or {})
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"item {n}: meta must be JSON-serialisable ({exc})") from None
    return {"id": str(uuid.uuid4()), "text": item["text"], "kind": kind, "source": source, "created": now,
            "updated": now, "meta": meta, "seq": seq}


def _check_vectors(recs: list[dict[str, Any]], dimension: int) -> None:
    for rec in recs:
        vec = rec["vector"]
        if vec.shape != (dimension,) or not np.isfinite(vec).all():
            raise ValueError(f"the embedder returned an invalid vector for {rec['text'][:60]!r} (shape "
                             f"{vec.shape}, finite={bool(np.isfinite(vec).all())}); nothing was stored")


def open_memory(path: str | Path, embedder: str = EMBEDDED, read_only: bool = False,
                retrieval: "RetrievalOptions | None" = None) -> Memory:
    """Open or create the cube at `path`.

    Re-opening a path this process already holds writable returns that same instance (a re-run notebook
    cell must not fail on qdrant's folder lock); with another embedder the old instance is closed first.
    `read_only=True` never takes the lock: it builds an in-memory index from the durable copy, so it works
    beside a chat in another process.
    """
    path = Path(path).expanduser().resolve()
    emb = get_embedder(embedder)
    if not read_only:
        with _OPEN_LOCK:
            old = _OPEN.get(path)
        if old is not None and not old.closed:
            if old.embedder is emb and old.retrieval == retrieval:
                old.notes.append("open_memory: reused the instance already open in this process")
                return old
            old.close()
    mem = Memory(path, emb, read_only, retrieval)
    mem._open()
    _ALL.add(mem)
    if not read_only:
        with _OPEN_LOCK:
            _OPEN[path] = mem
    return mem


def reembed(src: str | Path, dst: str | Path, embedder: str,
            retrieval: "RetrievalOptions | None" = None) -> Memory:
    """Copy a cube's memories (ids, provenance, times, meta) into a new cube embedded with `embedder`.

    The source is opened read-only, so this works while a chat holds it. Returns the new cube, open.
    """
    dst_path = Path(dst).expanduser().resolve()
    if dst_path.exists() and any(dst_path.iterdir()):
        raise CubeError(f"{dst_path} is not empty. Fix: pass a new folder for the re-embedded cube.")
    old_info = durable.read_cube_file(Path(src).expanduser().resolve())
    if old_info is None:
        raise CubeFormatError(f"{src} is not a cube (no {durable.CUBE_FILE}).")
    source = Memory(Path(src).expanduser().resolve(), _EmbedderStub(old_info), True, None)  # type: ignore[arg-type]
    source._open_durable_only()
    target = open_memory(dst_path, embedder=embedder, retrieval=retrieval)
    recs = [{k: v for k, v in r.items() if k not in ("vector", "seq")} for r in source._records.values()]
    for start in range(0, len(recs), 2000):
        target._add_records(recs[start:start + 2000])
    target.notes.append(f"re-embedded {len(recs)} memories from {src} ({old_info['embedder']}, "
                        f"{old_info['dimension']} dims)")
    target.save()
    return target


class _EmbedderStub:
    """Stands in for the old embedder when only a cube's durable copy is read (reembed)."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.name = info["embedder"]
        self.dimension = int(info["dimension"])


def restore_previous(path: str | Path) -> str:
    """Put memories.prev.json back as the snapshot after memories.json was damaged.

    The damaged file is kept as memories.corrupt-<time>.json. Nothing saved since is lost: the journals
    (journal.prev.jsonl, journal.jsonl) are replayed on top when the cube is opened.
    """
    folder = Path(path).expanduser().resolve()
    lock = durable.ProcessLock(folder)
    lock.acquire()  # CubeLockedError while a chat holds the cube: never swap files under a writer
    try:
        return _restore_previous(folder)
    finally:
        lock.release()


def _restore_previous(folder: Path) -> str:
    prev = folder / durable.PREV_SNAPSHOT
    if not prev.exists():
        raise CubeCorruptError(f"{prev} does not exist: there is no previous snapshot to restore.")
    json.loads(prev.read_text(encoding="utf-8"))  # refuse to restore a damaged one
    snap = folder / durable.SNAPSHOT
    note = f"restored {prev.name} as {snap.name}"
    if snap.exists():
        aside = folder / f"memories.corrupt-{durable.now_iso().replace(':', '')}.json"
        os.replace(snap, aside)
        note += f"; the damaged snapshot is kept as {aside.name}"
    durable.atomic_write(snap, prev.read_bytes())
    return note
