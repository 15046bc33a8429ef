"""The memory cube: a thin `Memory` over MemOS's `GeneralTextMemory`, composing the storage parts.

    record (SQLite: durable rows + FTS5 lexical index)  ──┐
    dense index (Qdrant Edge / qdrant-client / server)  ──┼─ vecdb.CubeVecDB ── MemOS GeneralTextMemory ── Memory
    embedder (kit backend, precomputed index vectors)   ──┘

Writes go through MemOS (``text_mem.add / update / delete``), which calls the kit's vector-DB backend: the
memory is committed to SQLite (durable when the call returns) and then indexed. Reads come from the record;
``search`` runs the kit's retrieval (dense + lexical fusion, kind and status filters inside the engine), or,
with ``RetrievalOptions(preset="memos")``, MemOS's own ``text_mem.search`` unchanged with its scores kept.

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
import socket
import tempfile
import threading
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from magistral_kit.memory import memos_fixes as fixes
from magistral_kit.memory import record as rec_mod
from magistral_kit.memory import vecdb
from magistral_kit.memory.embedding import EMBEDDED, Embedder, get_embedder, one_blas_thread
from magistral_kit.memory.errors import (
    CubeCorruptError, CubeError, CubeFormatError, CubeLockedError, DimensionMismatchError, ReadOnlyCubeError,
)
from magistral_kit.memory.items import (
    DEFAULT_EXCLUDED_KINDS, KINDS, fields_from_payload, memos_item, normalize_kind, now_iso,
)
from magistral_kit.memory.record import Record, Row

if TYPE_CHECKING:
    import pandas as pd

    from magistral_kit.memory.retrieval import RetrievalOptions

__all__ = ["Memory", "Hit", "KINDS", "open_memory", "is_cube", "reembed", "CubeError", "CubeLockedError", "CubeFormatError",
           "DimensionMismatchError", "CubeCorruptError", "ReadOnlyCubeError"]

COLLECTION = "memories"
LOCK_FILE = "cube.lock"
HOLDER_FILE = "cube.holder.json"
DENSE_DIR = "dense"
_OPEN: dict[Path, "Memory"] = {}
_OPEN_LOCK = threading.Lock()
_ALL: "weakref.WeakSet[Memory]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Close open cubes at interpreter exit (flushes the dense index and marks it in step)."""
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


def _hit_from_payload(id: str, payload: dict[str, Any], score: float) -> Hit:
    f = fields_from_payload(payload)
    return Hit(id, f["text"], score, f["source"], f["kind"], f["created"], f["meta"])


def _hit(row: Row, score: float) -> Hit:
    return _hit_from_payload(row.id, row.payload, score)


class Memory:
    """An open cube. Use `open_memory`; close it (or use `with`) to release the folder for other processes."""

    def __init__(self, path: Path, embedder: Embedder, read_only: bool, retrieval: "RetrievalOptions | None",
                 index: str | None = None) -> None:
        self.path = path
        self.read_only = read_only
        self.embedder = embedder
        self.dimension = embedder.dimension
        self.notes: list[str] = []
        self.retrieval = retrieval
        self.index = index
        self._lock = threading.RLock()
        self._closed = False
        self._file_lock: Any = None
        self._record: Record | None = None
        self._dense: Any = None
        self._text_mem: Any = None
        self._key = f"{path}#{uuid.uuid4()}"
        self._seen = 0
        self._dense_error: str | None = None
        self._tmp: str | None = None
        self.info: dict[str, Any] = {}

    # --- opening ---------------------------------------------------------------------------------------
    def _open(self) -> None:
        if not self.read_only:
            self.path.mkdir(parents=True, exist_ok=True)
            self._take_lock()
        try:
            self._open_locked()
        except BaseException:
            self._release()
            raise

    def _take_lock(self) -> None:
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.path / LOCK_FILE), timeout=0)
        holder_path = self.path / HOLDER_FILE
        try:
            lock.acquire()
        except Timeout:
            holder = _read_json(holder_path)
            raise CubeLockedError(
                f"cube {self.path} is open for writing in process {holder.get('pid', '?')} "
                f"(host {holder.get('host', '?')}, since {holder.get('since', '?')}). Fix: close it there "
                f"(chat.close() / memory.close()) or stop that kernel; to look at it beside the running "
                f"chat, open_memory(path, read_only=True).") from None
        old = _read_json(holder_path)
        if old.get("pid") and old.get("pid") != os.getpid():
            state = "no longer running" if not _pid_alive(int(old["pid"])) else "no longer holding it"
            self.notes.append(f"stale lock of process {old['pid']} ({state}) taken over")
        tmp = holder_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso()}))
        os.replace(tmp, holder_path)
        self._file_lock = lock

    def _open_locked(self) -> None:
        from magistral_kit.memory import transfer

        if transfer.is_legacy(self.path):
            if self.read_only:
                raise CubeFormatError(
                    f"{self.path} is a cube of the earlier journal format, not migrated yet; a read-only view "
                    f"cannot migrate it. Fix: open it writable once (open_memory(path)); it is migrated to "
                    f"SQLite and the old files are kept in {transfer.LEGACY_DIR}/.")
            self.notes.append(transfer.migrate_legacy(self.path, self.embedder.name, self.dimension,
                                                      self._index_settings(), self._lexical_text))
        if not rec_mod.is_record(self.path):
            if self.read_only:
                raise CubeFormatError(
                    f"{self.path} is not a cube (no {rec_mod.DB_FILE}); read_only=True cannot create one. "
                    f"Fix: check the path, or open it writable once to create it.")
        self._record = Record(self.path, self.dimension, self.read_only)
        settings = self._record.settings()
        if not settings.get("format_version"):
            if self.read_only:
                raise CubeFormatError(f"{self.path} has no cube settings yet. Fix: open it writable once.")
            settings = {"format_version": rec_mod.FORMAT_VERSION, "embedder": self.embedder.name,
                        "dimension": self.dimension, "index_text": self._index_settings(), "created": now_iso(),
                        "cube_id": str(uuid.uuid4()), "kind": "magistral_kit memory cube"}
            self._record.put_settings(settings)
            self.notes.append(f"new cube created (embedder {self.embedder.name}, {self.dimension} dims)")
        rec_mod.check_format(settings, self._record.path)
        self.info = settings
        if int(settings["dimension"]) != self.dimension:
            raise DimensionMismatchError(
                f"cube {self.path} stores {settings['dimension']}-dim vectors (embedder {settings['embedder']!r}) "
                f"but embedder {self.embedder.name!r} produces {self.dimension}-dim vectors. Fix: open it with "
                f"embedder={settings['embedder']!r}, or build a copy for the new embedder with "
                f"reembed({str(self.path)!r}, <new folder>, embedder={self.embedder.name!r}).")
        if settings["embedder"] != self.embedder.name:
            self.notes.append(f"cube was built with embedder {settings['embedder']!r}, opened with "
                              f"{self.embedder.name!r} (same dimension): scores mix two spaces; reembed() fixes it")
        if settings.get("index_text", self._index_settings()) != self._index_settings():
            self.notes.append(f"cube was embedded with index text settings {settings.get('index_text')}, now "
                              f"{self._index_settings()}: new memories are embedded differently; reembed() "
                              f"re-embeds all")
        self._open_dense(settings)
        self._open_memos()

    def _index_settings(self) -> dict[str, Any] | None:
        o = self.retrieval
        if o is None:
            return None
        return {"speaker_in_text": o.speaker_in_text, "date_in_text": o.date_in_text,
                "context_turns": o.context_turns}

    # --- the dense index ---------------------------------------------------------------------------------
    def _make_dense(self) -> Any:
        from magistral_kit.memory import dense

        target = self.index or "edge"
        if target.startswith(("http://", "https://")):
            return dense.QdrantClientIndex(self.dimension, url=target, api_key=os.environ.get("QDRANT_API_KEY"),
                                           collection=f"kit_{self.info.get('cube_id', 'cube')}")
        if self.read_only or target == "memory":
            # Qdrant Edge locks its shard to one process: a view beside a writer builds its own private index
            if target == "memory":
                return dense.QdrantClientIndex(self.dimension, location=":memory:")
            from magistral_kit.config import tmp_dir

            tmp_dir().mkdir(parents=True, exist_ok=True)
            self._tmp = tempfile.mkdtemp(prefix="view_", dir=str(tmp_dir()))
            return dense.EdgeIndex(Path(self._tmp) / "shard", self.dimension)
        if target == "edge":
            return dense.EdgeIndex(self.path / DENSE_DIR, self.dimension)
        if target == "local":
            return dense.QdrantClientIndex(self.dimension, location=str(self.path / "qdrant"))
        raise ValueError(f"index {target!r} is not one of 'edge', 'local', 'memory' or an http(s) URL of a "
                         f"Qdrant server. Fix: KitConfig(qdrant_url='http://host:6333') or index='edge'.")

    def _open_dense(self, settings: dict[str, Any]) -> None:
        record = self._record
        reason = None
        try:
            self._dense = self._make_dense()
        except Exception as exc:  # noqa: BLE001 - a damaged local index is rebuilt from the record
            if self.index and self.index.startswith("http"):
                raise CubeError(f"cannot reach the Qdrant server at {self.index} ({type(exc).__name__}: "
                                f"{str(exc)[:200]}). Fix: start the server (README: 'Qdrant by URL') or "
                                f"open the cube without qdrant_url to use the local index.") from None
            reason = f"index unreadable: {type(exc).__name__}: {str(exc)[:120]}"
            shutil.rmtree(self.path / DENSE_DIR, ignore_errors=True)
            shutil.rmtree(self.path / "qdrant", ignore_errors=True)
            self._dense = self._make_dense()
        seq = record.seq()
        state = settings.get("dense") or {}
        if self.read_only or (self._tmp is not None):
            self._rebuild_dense(None)
            self._seen = seq
            self.notes.append(f"read-only: private index built from the record ({record.count()} memories); it "
                              f"follows memories added by the writer; writes are refused")
            return
        if reason is None and state.get("clean") and state.get("seq") == seq and \
                state.get("kind") == self._dense.kind and self._dense_count_ok():
            pass  # closed in step and the same size: trust it (no scan)
        else:
            if reason is None:
                try:
                    have = self._dense.state()
                except Exception as exc:  # noqa: BLE001
                    have, reason = {}, f"index unreadable: {type(exc).__name__}"
                want = {i: s for i, _, _, s in record.ids_kinds()}
                if reason is None and have != want:
                    missing = len(want.keys() - have.keys())
                    extra = len(have.keys() - want.keys())
                    stale = sum(1 for i in want.keys() & have.keys() if want[i] != have[i])
                    reason = f"index out of step ({missing} missing, {extra} extra, {stale} stale)"
            if reason is not None and (record.count() or "unreadable" in reason or "extra" in reason):
                self._rebuild_dense(reason)
        self._seen = seq
        record.put_settings({"dense": {"kind": self._dense.kind, "seq": seq, "clean": False}})

    def _dense_count_ok(self) -> bool:
        try:
            return self._dense.count() == self._record.count()
        except Exception:  # noqa: BLE001 - unreadable: the full check decides
            return False

    def _rebuild_dense(self, reason: str | None) -> None:
        """Drop the dense index and fill it from the record (stored vectors: no re-embedding)."""
        self._dense.reset()
        n = 0
        for ids, mat, payloads in self._record.iter_vectors():
            self._dense.upsert(ids, mat, payloads)
            n += len(ids)
        if reason is not None:
            self.notes.append(f"index rebuilt from the record ({reason}); {n} memories")

    def _on_dense_error(self, why: str) -> None:
        self._dense_error = why

    def _repair_dense(self) -> None:
        why, self._dense_error = self._dense_error, None
        if why is None:
            return
        try:
            self._dense.close()
        except Exception:  # noqa: BLE001
            pass
        if hasattr(self._dense, "path"):
            shutil.rmtree(self._dense.path, ignore_errors=True)
        self._dense = self._make_dense()
        vecdb.attach(self._key, self._record, self._dense, self._lexical_text, self._on_dense_error)
        self._text_mem.vector_db.dense = self._dense
        self._rebuild_dense(why)

    def _open_memos(self) -> None:
        fixes.register_backends()
        vecdb.register()
        from memos.configs.memory import MemoryConfigFactory
        from memos.memories.textual.general import GeneralTextMemory

        vecdb.attach(self._key, self._record, self._dense, self._lexical_text, self._on_dense_error)
        config = MemoryConfigFactory(backend="general_text", config={
            "extractor_llm": {"backend": fixes.LLM_BACKEND,
                              "config": {"model_name_or_path": "kit-extractor", "max_tokens": 256}},
            "vector_db": {"backend": vecdb.BACKEND, "config": {
                "collection_name": COLLECTION, "vector_dimension": self.dimension, "distance_metric": "cosine",
                "cube_key": self._key}},
            "embedder": {"backend": fixes.EMBEDDER_BACKEND, "config": {"model_name_or_path": self.embedder.name}},
        }).config
        self._text_mem = fixes.quiet_construct(lambda: GeneralTextMemory(config))

    def _lexical_text(self, text: str, meta: dict[str, Any]) -> str:
        """What the lexical index holds: retrieval's `lexical_text` (index text without neighbouring turns)."""
        if self.retrieval is None:
            return text
        from magistral_kit.memory.retrieval import lexical_text

        return lexical_text(text, meta, self.retrieval)

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

    def _catch_up(self) -> None:
        """A read-only view: bring the private dense index up to the writer's latest commit."""
        if not self.read_only:
            return
        rows, gone, seq = self._record.changes_since(self._seen)
        if seq == self._seen:
            return
        if gone:
            self._dense.delete(gone)
        if rows:
            self._dense.upsert([r.id for r in rows], np.stack([r.vector for r in rows]),
                               [{"kind": r.kind, "status": r.status, "seq": r.seq} for r in rows])
        self._seen = seq

    # --- reading ---------------------------------------------------------------------------------------
    def search(self, query: str, top_k: int = 5, *, kinds: Sequence[str] | None = None,
               include_archived: bool = False) -> list[Hit]:
        """The top_k memories nearest to `query`, best first, with cosine (or fused) scores and provenance.

        `kinds`: which kinds may be returned (default: all but "episodic-question"); memories whose
        meta["status"] is "archived" are left out unless `include_archived`."""
        with self._lock:
            self._check_open()
            kinds = tuple(k for k in KINDS if k not in DEFAULT_EXCLUDED_KINDS) if kinds is None else \
                tuple(normalize_kind(k) for k in kinds)
            bad = [k for k in kinds if k not in KINDS]
            if bad:
                raise ValueError(f"kinds {bad} are not among {KINDS}. Fix: pass some of those, or None.")
            exclude = () if include_archived else ("archived",)
            if top_k <= 0 or not kinds:
                return []
            self._catch_up()
            opts = self.retrieval
            if opts is not None and opts.preset == "memos":
                return self._search_memos(query, top_k, kinds, exclude)
            if opts is None:
                qtext, n = query, top_k
            else:
                from magistral_kit.memory.retrieval import candidate_count, query_text

                qtext, n = query_text(query, opts), candidate_count(top_k, opts)
            vec = self.embedder.encode([qtext])[0]
            pairs = self._dense_search(vec, n, kinds, exclude)
            if opts is not None and opts.lexical_weight:
                from magistral_kit.memory.retrieval import rerank

                lex = self._lexical_scores(query, [i for i, _ in pairs], opts.candidates, kinds, exclude)
                pairs = rerank(query, pairs, top_k, opts, lex)
            rows = self._record.get_many([i for i, _ in pairs[:top_k]])
            return [_hit(rows[i], s) for i, s in pairs[:top_k] if i in rows]

    def _dense_search(self, vec: np.ndarray, n: int, kinds: Sequence[str], exclude: Sequence[str]) -> list:
        all_kinds = set(kinds) == set(KINDS)
        try:
            with one_blas_thread():
                return self._dense.search(vec, n, kinds=None if all_kinds else kinds, exclude_status=exclude)
        except Exception as exc:  # noqa: BLE001 - the record is intact: rebuild the index and retry once
            self._dense_error = f"search failed ({type(exc).__name__}: {str(exc)[:150]})"
            self._repair_dense()
            return self._dense.search(vec, n, kinds=None if all_kinds else kinds, exclude_status=exclude)

    def _lexical_scores(self, query: str, dense_ids: list[str], limit: int, kinds: Sequence[str],
                        exclude: Sequence[str]) -> dict[str, float]:
        scores = self._record.lexical.scores(query, limit=limit * 2, ids=dense_ids)
        dense = set(dense_ids)
        extra = [i for i in scores if i not in dense]
        if extra:
            allowed = self._record.kinds_statuses(extra)
            for i in extra:
                kind, status = allowed.get(i, (None, None))
                if kind not in kinds or status in exclude:
                    scores.pop(i, None)
        return scores

    def _search_memos(self, query: str, top_k: int, kinds: Sequence[str], exclude: Sequence[str]) -> list[Hit]:
        """MemOS's own `text_mem.search` (plain query embedding, dense only), scores kept by the kit's fix;
        MemOS cannot filter, so kinds / archived are dropped from its top_k afterwards (fewer may remain)."""
        found = fixes.memos_search_with_scores(self._text_mem, query, top_k)
        hits = [_hit_from_payload(item.id, item.model_dump(), score) for item, score in found]
        return [h for h in hits if h.kind in kinds and h.meta.get("status") not in exclude]

    def get(self, id: str) -> Hit:
        """One memory by id (score NaN), read through MemOS's `text_mem.get`."""
        with self._lock:
            self._check_open()
            try:
                item = self._text_mem.get(id)
            except ValueError:
                raise KeyError(f"no memory with id {id!r} in {self.path}. Fix: take ids from search() or "
                               f"items().") from None
            return _hit_from_payload(id, item.model_dump(), float("nan"))

    def _need(self, id: str) -> Row:
        row = self._record.get(id)
        if row is None:
            raise KeyError(f"no memory with id {id!r} in {self.path}. Fix: take ids from search() or items().")
        return row

    def items(self) -> "pd.DataFrame":
        """All memories, oldest first: id, text, kind, status, source, created, updated, then meta keys."""
        import pandas as pd

        with self._lock:
            self._check_open()
            rows = []
            for r in self._record.rows():
                h = _hit(r, float("nan"))
                row = {"id": h.id, "text": h.text, "kind": h.kind, "status": r.status, "source": list(h.source),
                       "created": h.created, "updated": r.updated}
                for k, v in h.meta.items():
                    if k != "status":
                        row[k if k not in row else f"meta.{k}"] = v
                rows.append(row)
        base = ["id", "text", "kind", "status", "source", "created", "updated"]
        return pd.DataFrame(rows, columns=None if rows else base)

    def vectors(self) -> tuple[list[str], np.ndarray]:
        """Ids and their stored embedding rows (unit norm), for the embedding map."""
        with self._lock:
            self._check_open()
            return self._record.vectors()

    def embed(self, texts: list[str]) -> np.ndarray:
        """The cube's embedder (unit-norm float32 rows), e.g. to place a query on the embedding map."""
        return self.embedder.encode(list(texts))

    def __len__(self) -> int:
        """How many memories the cube holds (for a closed cube: how many it held when it was closed)."""
        if self._closed:
            return getattr(self, "_count_at_close", 0)
        return 0 if self._record is None else self._record.count()

    # --- writing ---------------------------------------------------------------------------------------
    def add(self, text: str, source: Iterable[str] = (), kind: str = "manual", meta: dict | None = None) -> str:
        """Store one memory; it is durable (committed) when this returns. Returns its id."""
        return self.add_many([{"text": text, "source": list(source), "kind": kind, "meta": meta or {}}])[0]

    def add_many(self, items: list[dict]) -> list[str]:
        """Store a batch through MemOS's `text_mem.add` as ONE transaction: all of it or none."""
        with self._lock:
            self._check_writable()
            if not items:
                return []
            now = now_iso()
            recs = [_new_record(item, now, n) for n, item in enumerate(items)]
            self._store(recs)
            return [r["id"] for r in recs]

    def _store(self, recs: list[dict[str, Any]], vectors: np.ndarray | None = None) -> None:
        """Embed (unless given) and write prepared records through MemOS; keeps their ids and times."""
        if vectors is None:
            vectors = self.embedder.encode([self._embed_text(r["text"], r["meta"]) for r in recs])
        _check_vectors(recs, vectors, self.dimension)
        items = [memos_item(r["id"], r["text"], r["kind"], r["source"], r["created"], r["updated"], r["meta"])
                 for r in recs]
        try:
            with fixes.precomputed_vectors(self._text_mem.embedder, [i.memory for i in items], vectors):
                self._text_mem.add(items)
        except (ValueError, OSError) as exc:
            if self._record.get_many([r["id"] for r in recs]):
                raise
            raise CubeError(f"add of {len(recs)} memories failed ({type(exc).__name__}: {exc}); nothing was "
                            f"stored and the cube is still usable.") from exc
        finally:
            self._repair_dense()

    def update(self, id: str, text: str | None = None, *, meta: dict | None = None) -> None:
        """Change a memory through MemOS's `text_mem.update`: new text (re-embedded) and/or `meta` merged into
        its metadata; provenance and creation time stay, `updated` is set."""
        with self._lock:
            self._check_writable()
            if text is None and meta is None:
                raise ValueError("update needs text= or meta=. Fix: pass the new text, or meta={...} to merge.")
            if text is not None:
                _check_text(text, 0)
            if meta is not None:
                _check_meta(meta, 0)
            row = self._need(id)
            f = fields_from_payload(row.payload)
            new_text = f["text"] if text is None else text
            new_meta = {**f["meta"], **(meta or {})}
            if new_text == f["text"] and self._embed_text(new_text, new_meta) == self._embed_text(f["text"], f["meta"]):
                vec = row.vector[None, :]
            else:
                vec = self.embedder.encode([self._embed_text(new_text, new_meta)])
            _check_vectors([{"text": new_text}], vec, self.dimension)
            item = memos_item(id, new_text, f["kind"], f["source"], f["created"], now_iso(), new_meta)
            try:
                with fixes.precomputed_vectors(self._text_mem.embedder, [new_text], vec):
                    self._text_mem.update(id, item)
            finally:
                self._repair_dense()

    def delete(self, id: str) -> None:
        """Remove a memory through MemOS's `text_mem.delete` (durable when this returns)."""
        with self._lock:
            self._check_writable()
            self._need(id)
            try:
                self._text_mem.delete([id])
            finally:
                self._repair_dense()

    def build_index(self) -> str:
        """Build the approximate (HNSW) graph of the dense index now, blocking; returns what was done.

        Needed only for large cubes (search stays exact, and fast, to about 100k memories: see
        bench/results/memory_scale.json); memories added later are searched exactly until the next build."""
        with self._lock:
            self._check_open()
            if not hasattr(self._dense, "optimize"):
                return f"{self._dense.kind}: the engine manages its own index"
            import time

            t = time.perf_counter()
            self._dense.optimize()
            note = f"HNSW graph built over {len(self)} memories in {time.perf_counter() - t:.1f} s"
            self.notes.append(note)
            return note

    # --- save / close ----------------------------------------------------------------------------------
    def save(self) -> Path:
        """Every write is already durable; this folds SQLite's write-ahead log into the main file and flushes
        the dense index (what a backup before copying the folder wants). Returns the record's path."""
        with self._lock:
            self._check_writable()
            self._record.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            if hasattr(self._dense, "shard"):
                self._dense.shard.flush()
            return self._record.path

    def close(self) -> None:
        """Release the index and the process lock (idempotent). Every memory is already durable."""
        with self._lock:
            if self._closed:
                return
            try:
                self._count_at_close = len(self)
            except Exception:  # noqa: BLE001 - a damaged record still closes
                self._count_at_close = 0
            self._closed = True
            self._release()
        with _OPEN_LOCK:
            if _OPEN.get(self.path) is self:
                del _OPEN[self.path]

    def _release(self) -> None:
        vecdb.detach(self._key)
        clean = False
        if self._dense is not None:
            try:
                self._dense.close()
                clean = True
            except Exception:  # noqa: BLE001
                pass
        if self._record is not None:
            try:
                if clean and not self.read_only:
                    self._record.put_settings({"dense": {"kind": self._dense.kind, "seq": self._record.seq(),
                                                         "clean": True}})
            finally:
                self._record.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        if self._file_lock is not None:
            try:
                (self.path / HOLDER_FILE).unlink(missing_ok=True)
            finally:
                self._file_lock.release()
                self._file_lock = None

    @property
    def text_memory(self) -> Any:
        """MemOS's `GeneralTextMemory` over this cube: its add / update / delete / get / get_all / search go
        through the kit's storage (durable record + indexes), so experiments with MemOS's API are safe."""
        return self._text_mem

    @property
    def dense_index(self) -> Any:
        """The dense index in use (its `kind` says which engine)."""
        return self._dense

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
        newest: list[Row] = []
        if not self._closed:
            rows = self._record.conn.execute(f"SELECT {Record._COLS} FROM memories ORDER BY created DESC, rowid "
                                             f"DESC LIMIT 5").fetchall()
            newest = [self._record._row(t) for t in rows]
        body = "".join(
            f"<tr><td style='text-align:left'>{html.escape(r.text)}</td><td>{r.kind}</td>"
            f"<td>{html.escape(', '.join(_hit(r, 0).source))}</td><td>{r.created}</td></tr>" for r in newest)
        engine = html.escape(getattr(self._dense, "kind", "?"))
        return (f"<div><b>Memory cube</b> <code>{html.escape(str(self.path))}</code> ({state}): "
                f"<b>{len(self)}</b> memories, embedder {html.escape(self.embedder.name)} "
                f"({self.dimension} dims), dense index {engine}<br>notes:<ul>{notes}</ul>"
                f"<table><tr><th>newest</th><th>kind</th><th>from</th><th>created</th></tr>{body}</table></div>")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_text(text: Any, n: int) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"item {n}: text must be a non-empty string, got {text!r}")


def _check_meta(meta: Any, n: int) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise ValueError(f"item {n}: meta must be a dict, got {type(meta).__name__}")
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"item {n}: meta must be JSON-serialisable ({exc})") from None
    return dict(meta)


def _new_record(item: dict, now: str, n: int) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise TypeError(f"item {n}: expected a dict with text/source/kind/meta, got {type(item).__name__}")
    unknown = set(item) - {"text", "source", "kind", "meta"}
    if unknown:
        raise ValueError(f"item {n}: unknown keys {sorted(unknown)}; allowed: text, source, kind, meta")
    _check_text(item.get("text"), n)
    kind = normalize_kind(item.get("kind", "manual"))
    if kind not in KINDS:
        raise ValueError(f"item {n}: kind {item.get('kind')!r} is not one of {KINDS}")
    source = item.get("source", ())
    source = [source] if isinstance(source, str) else list(source or ())
    if not all(isinstance(s, str) for s in source):
        raise ValueError(f"item {n}: source must be turn ids (strings) such as 's1-t3' or 'D1:3'")
    meta = _check_meta(item.get("meta") or {}, n)
    return {"id": str(uuid.uuid4()), "text": item["text"], "kind": kind, "source": source, "created": now,
            "updated": now, "meta": meta}


def _check_vectors(recs: list[dict[str, Any]], vectors: np.ndarray, dimension: int) -> None:
    for rec, vec in zip(recs, vectors, strict=True):
        if vec.shape != (dimension,) or not np.isfinite(vec).all():
            raise ValueError(f"the embedder returned an invalid vector for {rec['text'][:60]!r} (shape "
                             f"{vec.shape}, finite={bool(np.isfinite(vec).all())}); nothing was stored")


def is_cube(path: str | Path) -> bool:
    """Whether `path` holds a kit cube (the SQLite record, or a journal-format cube not yet migrated)."""
    from magistral_kit.memory import transfer

    path = Path(path).expanduser()
    return rec_mod.is_record(path) or transfer.is_legacy(path)


def open_memory(path: str | Path, embedder: str = EMBEDDED, read_only: bool = False,
                retrieval: "RetrievalOptions | None" = None, *, index: str | None = None) -> Memory:
    """Open or create the cube at `path`.

    `index`: the dense engine — None/'edge' (Qdrant Edge in the cube folder, HNSW), 'local' (qdrant-client
    local mode folder), 'memory' (qdrant-client in RAM, rebuilt from the record), or a Qdrant server URL
    (``KitConfig.qdrant_url``). Re-opening a path this process already holds writable returns that same
    instance (a re-run notebook cell must not fail on the lock). `read_only=True` never takes the lock: it
    reads the SQLite record beside a writer in another process and follows its new memories.
    """
    path = Path(path).expanduser().resolve()
    emb = get_embedder(embedder)
    if not read_only:
        with _OPEN_LOCK:
            old = _OPEN.get(path)
        if old is not None and not old.closed:
            if old.embedder is emb and old.retrieval == retrieval and old.index == index:
                old.notes.append("open_memory: reused the instance already open in this process")
                return old
            old.close()
    mem = Memory(path, emb, read_only, retrieval, index)
    mem._open()
    _ALL.add(mem)
    if not read_only:
        with _OPEN_LOCK:
            _OPEN[path] = mem
    return mem


def reembed(src: str | Path, dst: str | Path, embedder: str,
            retrieval: "RetrievalOptions | None" = None) -> Memory:
    """Copy a cube's memories (ids, provenance, times, meta) into a new cube embedded with `embedder`.

    The source's record is read read-only, so this works while a chat holds it. Returns the new cube, open.
    """
    dst_path = Path(dst).expanduser().resolve()
    src_path = Path(src).expanduser().resolve()
    if dst_path.exists() and any(dst_path.iterdir()):
        raise CubeError(f"{dst_path} is not empty. Fix: pass a new folder for the re-embedded cube.")
    if not rec_mod.is_record(src_path):
        raise CubeFormatError(f"{src} is not a cube (no {rec_mod.DB_FILE}). Fix: open it once with "
                              f"open_memory(path) (that migrates an older cube).")
    probe = Record(src_path, 0, read_only=True)
    try:
        old = probe.settings()
        probe.dimension = int(old["dimension"])
        rows = list(probe.rows())
    finally:
        probe.close()
    target = open_memory(dst_path, embedder=embedder, retrieval=retrieval)
    recs = []
    for r in rows:
        f = fields_from_payload(r.payload)
        recs.append({"id": r.id, "text": f["text"], "kind": f["kind"], "source": f["source"],
                     "created": f["created"], "updated": f["updated"], "meta": f["meta"]})
    with target._lock:
        for start in range(0, len(recs), 2000):
            target._store(recs[start:start + 2000])
    target.notes.append(f"re-embedded {len(recs)} memories from {src} ({old['embedder']}, "
                        f"{old['dimension']} dims)")
    return target
