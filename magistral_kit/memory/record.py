"""The durable record of a cube: one SQLite file (WAL mode), every write one atomic transaction.

Why SQLite: it already is what the kit used to hand-write (an fsync'd journal, atomic snapshots, torn-tail
recovery, a reader that sees a consistent state beside a writer), maintained and tested by others. With
``journal_mode=WAL`` and ``synchronous=FULL`` a commit is durable when `write` returns, a killed process
leaves the last committed state, and readers in other processes see each new commit without reopening.

Tables (``memories.sqlite`` in the cube folder):

    settings(key, value)      format_version, embedder, dimension, index_text, created, seq (JSON values)
    memories(rowid, id, text, kind, status, created, updated, seq, payload, vector)
                              payload = MemOS's TextualMemoryItem as JSON (what plain MemOS stores), vector =
                              float32 bytes of the embedded index text
    deleted(id, seq)          tombstones, so a reader can catch up on deletes (`changes_since`)
    lexical, lexical_docs     the FTS5 lexical index (`lexical.LexicalIndex`), written in the same transaction

``seq`` counts committed transactions; each row keeps the ``seq`` that last wrote it, which is how a reader
(`changes_since`) and the dense index (`state`) are checked against the record.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from magistral_kit.memory.errors import CubeCorruptError, CubeFormatError
from magistral_kit.memory.lexical import LexicalIndex

FORMAT_VERSION = 2
DB_FILE = "memories.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS memories (
    rowid INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, text TEXT NOT NULL, kind TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'activated', created TEXT NOT NULL, updated TEXT NOT NULL,
    seq INTEGER NOT NULL, payload TEXT NOT NULL, vector BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS memories_seq ON memories(seq);
CREATE TABLE IF NOT EXISTS deleted (id TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS deleted_seq ON deleted(seq);
"""


@dataclass
class Row:
    """One memory as stored: the kit's columns, MemOS's item (payload) and the vector."""

    id: str
    text: str
    kind: str
    status: str
    created: str
    updated: str
    payload: dict[str, Any]
    vector: np.ndarray
    seq: int = 0
    lexical: str = ""  # what the lexical index holds for it (written, not read back)
    meta: dict[str, Any] = field(default_factory=dict)


class Record:
    """The cube's SQLite file. Thread-safe through one lock; every public method is one transaction."""

    def __init__(self, folder: Path, dimension: int, read_only: bool = False) -> None:
        self.path = Path(folder) / DB_FILE
        self.dimension = dimension
        self.read_only = read_only
        self._lock = threading.RLock()
        try:
            if read_only:
                self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                                            check_same_thread=False)
            else:
                self.conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA busy_timeout=10000")
            if not read_only:
                self.conn.executescript(_SCHEMA)
            self.lexical = LexicalIndex(self.conn)
            if not read_only:
                self.lexical.create()
            self.conn.execute("SELECT count(*) FROM memories").fetchone()
        except sqlite3.DatabaseError as exc:
            raise CubeCorruptError(
                f"{self.path} cannot be read as SQLite ({exc}). Fix: restore the cube folder from a backup; "
                f"if the cube was migrated from the journal format, its old files are in "
                f"{Path(folder) / 'pre-sqlite'} and open again once {DB_FILE} is moved away.") from None

    # --- settings ---------------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        with self._lock:
            return {k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM settings")}

    def put_settings(self, values: dict[str, Any]) -> None:
        with self._lock, self._tx():
            self.conn.executemany("INSERT OR REPLACE INTO settings(key, value) VALUES (?, ?)",
                                  [(k, json.dumps(v)) for k, v in values.items()])

    def seq(self) -> int:
        with self._lock:
            row = self.conn.execute("SELECT value FROM settings WHERE key='seq'").fetchone()
            return int(json.loads(row[0])) if row else 0

    # --- writes -----------------------------------------------------------------------------------------
    def _tx(self) -> "_Tx":
        return _Tx(self.conn)

    def write(self, rows: Sequence[Row]) -> int:
        """Insert or replace `rows` (and their lexical entries) in ONE transaction; returns its seq."""
        with self._lock, self._tx():
            seq = self._next_seq()
            for r in rows:
                vec = np.asarray(r.vector, dtype="<f4")
                if vec.shape != (self.dimension,) or not np.isfinite(vec).all():
                    raise ValueError(f"vector for {r.id} has shape {vec.shape} (expected ({self.dimension},)) "
                                     f"or is not finite; nothing was stored")
                r.seq = seq
            self.conn.executemany(
                "INSERT INTO memories(id, text, kind, status, created, updated, seq, payload, vector) "
                "VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET text=excluded.text, kind=excluded.kind, "
                "status=excluded.status, created=excluded.created, updated=excluded.updated, seq=excluded.seq, "
                "payload=excluded.payload, vector=excluded.vector",
                [(r.id, r.text, r.kind, r.status, r.created, r.updated, seq,
                  json.dumps(r.payload, ensure_ascii=False, separators=(",", ":")),
                  np.asarray(r.vector, dtype="<f4").tobytes()) for r in rows])
            self.conn.executemany("DELETE FROM deleted WHERE id=?", [(r.id,) for r in rows])
            self.lexical.add_many((r.id, r.lexical or r.text) for r in rows)
            return seq

    def delete(self, ids: Sequence[str]) -> int:
        """Remove `ids` (unknown ones are ignored) with tombstones, in one transaction; returns its seq."""
        with self._lock, self._tx():
            seq = self._next_seq()
            self.conn.executemany("DELETE FROM memories WHERE id=?", [(i,) for i in ids])
            self.conn.executemany("INSERT OR REPLACE INTO deleted(id, seq) VALUES (?, ?)", [(i, seq) for i in ids])
            self.lexical.remove_many(ids)
            return seq

    def _next_seq(self) -> int:
        row = self.conn.execute("SELECT value FROM settings WHERE key='seq'").fetchone()
        seq = (int(json.loads(row[0])) if row else 0) + 1
        self.conn.execute("INSERT OR REPLACE INTO settings(key, value) VALUES ('seq', ?)", (json.dumps(seq),))
        return seq

    # --- reads ------------------------------------------------------------------------------------------
    _COLS = "id, text, kind, status, created, updated, seq, payload, vector"

    def _row(self, t: tuple) -> Row:
        vec = np.frombuffer(t[8], dtype="<f4")
        if vec.shape != (self.dimension,):
            raise CubeCorruptError(f"{self.path}: memory {t[0]} has a {vec.size}-value vector, expected "
                                   f"{self.dimension}. Fix: delete that memory or rebuild the cube with reembed().")
        payload = json.loads(t[7])
        info = (payload.get("metadata") or {}).get("info")
        return Row(t[0], t[1], t[2], t[3], t[4], t[5], payload, vec, t[6],
                   meta=dict(info) if isinstance(info, dict) else {})

    def get(self, id: str) -> Row | None:
        with self._lock:
            t = self.conn.execute(f"SELECT {self._COLS} FROM memories WHERE id=?", (id,)).fetchone()
            return self._row(t) if t else None

    def get_many(self, ids: Sequence[str]) -> dict[str, Row]:
        return {t[0]: self._row(t) for t in self._select_ids(self._COLS, ids)}

    def _select_ids(self, cols: str, ids: Sequence[str]) -> list[tuple]:
        """`cols` of the memories with these ids (any order; unknown ids are absent), 500 ids per query."""
        with self._lock:
            return [t for part in iter_chunks(ids, 500) for t in self.conn.execute(
                f"SELECT {cols} FROM memories WHERE id IN ({','.join('?' * len(part))})", part)]

    def rows(self) -> Iterator[Row]:
        """Every memory, oldest first (by created, then insertion)."""
        with self._lock:
            data = self.conn.execute(f"SELECT {self._COLS} FROM memories ORDER BY created, rowid").fetchall()
        for t in data:
            yield self._row(t)

    def count(self) -> int:
        with self._lock:
            return int(self.conn.execute("SELECT count(*) FROM memories").fetchone()[0])

    def kinds_statuses(self, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """{id: (kind, status)} of these ids (no texts, payloads or vectors: the search's filter)."""
        return {i: (k, st) for i, k, st in self._select_ids("id, kind, status", ids)}

    def ids_kinds(self) -> list[tuple[str, str, str, int]]:
        """(id, kind, status, seq) of every memory, without texts or vectors (cheap)."""
        with self._lock:
            return self.conn.execute("SELECT id, kind, status, seq FROM memories").fetchall()

    def vectors(self) -> tuple[list[str], np.ndarray]:
        """Ids and the stored vectors as one float32 matrix."""
        with self._lock:
            data = self.conn.execute("SELECT id, vector FROM memories ORDER BY created, rowid").fetchall()
        ids = [d[0] for d in data]
        mat = (np.frombuffer(b"".join(d[1] for d in data), dtype="<f4").reshape(len(ids), self.dimension).copy()
               if data else np.zeros((0, self.dimension), np.float32))
        return ids, mat

    def iter_vectors(self, batch: int = 20_000) -> Iterator[tuple[list[str], np.ndarray, list[dict[str, Any]]]]:
        """(ids, vectors, dense payloads) in batches, for (re)building the dense index."""
        with self._lock:
            cur = self.conn.execute("SELECT id, kind, status, seq, vector FROM memories ORDER BY rowid")
            while True:
                part = cur.fetchmany(batch)
                if not part:
                    return
                ids = [p[0] for p in part]
                mat = np.frombuffer(b"".join(p[4] for p in part), dtype="<f4").reshape(len(part), self.dimension)
                yield ids, mat, [{"kind": p[1], "status": p[2], "seq": p[3]} for p in part]

    def changes_since(self, seq: int) -> tuple[list[Row], list[str], int]:
        """Rows written and ids deleted after transaction `seq`, and the newest seq: how a reader catches up."""
        with self._lock, self._read():
            now = self.seq()
            if now == seq:
                return [], [], now
            rows = [self._row(t) for t in self.conn.execute(
                f"SELECT {self._COLS} FROM memories WHERE seq > ?", (seq,))]
            gone = [t[0] for t in self.conn.execute("SELECT id FROM deleted WHERE seq > ?", (seq,))]
            return rows, gone, now

    def _read(self) -> "_Tx":
        return _Tx(self.conn, "BEGIN")  # one snapshot for several selects

    def check(self) -> str:
        """SQLite's own integrity check ('ok' or what is wrong)."""
        with self._lock:
            return str(self.conn.execute("PRAGMA quick_check").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            try:
                if not self.read_only:
                    self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:
                pass
            self.conn.close()


class _Tx:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any exception (nothing of a failed batch is kept)."""

    def __init__(self, conn: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> None:
        self.conn, self.begin = conn, begin

    def __enter__(self) -> None:
        self.conn.execute(self.begin)

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass


def is_record(folder: Path) -> bool:
    return (Path(folder) / DB_FILE).exists()


def check_format(settings: dict[str, Any], path: Path) -> None:
    version = settings.get("format_version")
    if version != FORMAT_VERSION:
        hint = ("upgrade magistral_kit to a version that reads it"
                if isinstance(version, int) and version > FORMAT_VERSION else
                "open it with the kit version that wrote it, export_memos() it, and import_memos() the export")
        raise CubeFormatError(f"{path} has format_version {version!r}; this kit reads format_version "
                              f"{FORMAT_VERSION}. Fix: {hint}.")
    for key in ("embedder", "dimension"):
        if key not in settings:
            raise CubeFormatError(f"{path} lacks the setting '{key}'. Fix: restore the cube from a backup.")


def iter_chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
