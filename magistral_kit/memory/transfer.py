"""Cubes in and out: the one-time migration of journal-format cubes, and MemOS's own folder format both ways.

* `migrate_legacy` — a cube written by the kit before SQLite (cube.json + memories.json + journal.jsonl) is
  read and validated by `legacy.load`, copied into the SQLite record in ONE transaction (ids, texts, kinds,
  provenance, times, meta and the stored vectors), compared with what was read, and only then are the old
  files moved to ``pre-sqlite/`` (kept: delete them by hand when satisfied). A kill at any point leaves
  either the old cube (migrated again on the next open) or the migrated one.
* `export_memos` — a folder that PLAIN MemOS opens with ``GeneralMemCube.init_from_dir``: ``config.json``
  names only MemOS's built-in backends (qdrant, sentence_transformer, an openai extractor that is never
  called by search) and ``textual_memory.json`` holds every item with its stored vector, so MemOS's search
  there returns what the kit's ``memos`` preset returns.
* `import_memos_dump` — a folder dumped by plain MemOS (``cube.dump`` / ``text_mem.dump``) into a cube; unlike
  MemOS's ``load`` a damaged file is an error, never a silently empty cube. Texts are re-embedded with the
  cube's embedder (MemOS's vectors may come from another model); ids, times and metadata are kept.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from magistral_kit.memory import legacy
from magistral_kit.memory.errors import CubeCorruptError, CubeError, CubeFormatError
from magistral_kit.memory.items import fields_from_payload, memos_item, normalize_kind
from magistral_kit.memory.record import DB_FILE, FORMAT_VERSION, Record, Row

if TYPE_CHECKING:
    from magistral_kit.memory.cube import Memory

LEGACY_DIR = "pre-sqlite"
_LEGACY_FILES = (legacy.CUBE_FILE, legacy.SNAPSHOT, legacy.PREV_SNAPSHOT, legacy.JOURNAL, legacy.PREV_JOURNAL,
                 legacy.LOCK_FILE, legacy.INDEX_DIR)
MEMOS_FILE = "textual_memory.json"


def is_legacy(folder: Path) -> bool:
    """A journal-format cube not migrated yet (its cube.json still at the top)."""
    return (Path(folder) / legacy.CUBE_FILE).exists()


def migrate_legacy(folder: Path, embedder: str, dimension: int, index_text: Any,
                   lexical_text: Callable[[str, dict], str]) -> str:
    """Copy a journal-format cube into the SQLite record; returns a note for `Memory.notes`."""
    import uuid

    folder = Path(folder)
    info = legacy.read_cube_file(folder)
    if info is None:
        raise CubeFormatError(f"{folder} has no {legacy.CUBE_FILE}")
    dim = int(info["dimension"])
    loaded = legacy.load(folder, dim)  # CubeCorruptError with the fix when a file is damaged
    db = folder / DB_FILE
    for leftover in (db, Path(str(db) + "-wal"), Path(str(db) + "-shm")):
        leftover.unlink(missing_ok=True)  # an earlier migration killed before its commit: start again
    for tmp in folder.glob("*.json.tmp"):
        tmp.unlink()
    record = Record(folder, dim)
    try:
        rows = []
        for r in loaded.records.values():
            kind = normalize_kind(r["kind"])
            item = memos_item(r["id"], r["text"], kind, list(r["source"]), r["created"], r["updated"], r["meta"])
            payload = item.model_dump()
            rows.append(Row(r["id"], r["text"], kind, str(r["meta"].get("status", "activated")), r["created"],
                            r["updated"], payload, r["vector"], lexical=lexical_text(r["text"], r["meta"])))
        settings = {"format_version": FORMAT_VERSION, "embedder": info["embedder"], "dimension": dim,
                    "index_text": info.get("index_text", index_text), "created": info.get("created"),
                    "cube_id": str(uuid.uuid4()), "kind": "magistral_kit memory cube",
                    "migrated_from": {"format_version": legacy.FORMAT_VERSION, "memories": len(rows),
                                      "journal_seq": loaded.seq}}
        with record._lock, record._tx():
            record.conn.executemany("INSERT OR REPLACE INTO settings(key, value) VALUES (?, ?)",
                                    [(k, json.dumps(v)) for k, v in settings.items()])
            if rows:
                _write_rows_in_tx(record, rows)
        # verify before touching the old files
        stored = {r.id: r for r in record.rows()}
        if set(stored) != set(loaded.records) or any(
                stored[i].text != r["text"] or not np.array_equal(stored[i].vector, r["vector"])
                for i, r in loaded.records.items()):
            raise CubeCorruptError(f"migration of {folder} did not verify (the copy differs from the journal "
                                   f"format files, which are left untouched). Fix: report this; the old cube "
                                   f"opens with the previous kit version.")
    finally:
        record.close()
    aside = folder / LEGACY_DIR
    aside.mkdir(exist_ok=True)
    for name in _LEGACY_FILES:
        src = folder / name
        if src.exists():
            os.replace(src, aside / name)
    legacy.fsync_dir(folder)
    notes = "; ".join(loaded.notes)
    return (f"migrated {len(loaded.records)} memories from the journal format to SQLite ({DB_FILE}); the old "
            f"files are kept in {LEGACY_DIR}/ (delete it by hand once you are satisfied)"
            + (f"; {notes}" if notes else ""))


def _write_rows_in_tx(record: Record, rows: list[Row]) -> None:
    """Rows inside an open transaction, keeping their times (migration and import)."""
    seq = record._next_seq()
    record.conn.executemany(
        "INSERT OR REPLACE INTO memories(id, text, kind, status, created, updated, seq, payload, vector) "
        "VALUES (?,?,?,?,?,?,?,?,?)",
        [(r.id, r.text, r.kind, r.status, r.created, r.updated, seq, json.dumps(r.payload, ensure_ascii=False),
          np.asarray(r.vector, dtype="<f4").tobytes()) for r in rows])
    record.lexical.add_many((r.id, r.lexical or r.text) for r in rows)


def restore_previous(path: str | Path) -> str:
    """For a journal-format cube whose memories.json is damaged: put memories.prev.json back as the snapshot
    (the damaged file is kept as memories.corrupt-<time>.json); the journals are replayed on top when the
    cube is opened (and migrated). Refused while a process holds the cube."""
    from filelock import FileLock, Timeout

    from magistral_kit.memory.errors import CubeLockedError

    folder = Path(path).expanduser().resolve()
    holder = folder / "cube.holder.json"
    lock = FileLock(str(folder / "cube.lock"), timeout=0)
    try:
        if holder.exists() and json.loads(holder.read_text() or "{}").get("pid"):
            raise Timeout(str(holder))
        lock.acquire()
    except (Timeout, ValueError):
        raise CubeLockedError(f"cube {folder} is open (see {holder.name}); never swap files under a writer. "
                              f"Fix: close it there first.") from None
    try:
        prev = folder / legacy.PREV_SNAPSHOT
        if not prev.exists():
            raise CubeCorruptError(f"{prev} does not exist: there is no previous snapshot to restore.")
        json.loads(prev.read_text(encoding="utf-8"))  # refuse to restore a damaged one
        snap = folder / legacy.SNAPSHOT
        note = f"restored {prev.name} as {snap.name}"
        if snap.exists():
            aside = folder / f"memories.corrupt-{legacy.now_iso().replace(':', '')}.json"
            os.replace(snap, aside)
            note += f"; the damaged snapshot is kept as {aside.name}"
        legacy.atomic_write(snap, prev.read_bytes())
        return note
    finally:
        lock.release()


# --- MemOS's folder format --------------------------------------------------------------------------------


def memos_config(folder: Path, embedder_path: str, dimension: int, cube_id: str) -> dict[str, Any]:
    """A `GeneralMemCubeConfig` dict naming only MemOS's built-in backends."""
    return {
        "model_schema": "memos.configs.mem_cube.GeneralMemCubeConfig",
        "user_id": "magistral_kit", "cube_id": cube_id, "config_filename": "config.json",
        "text_mem": {"backend": "general_text", "config": {
            "cube_id": cube_id, "memory_filename": MEMOS_FILE,
            # never called by search; MemOS needs some extractor config to build its textual memory
            "extractor_llm": {"backend": "openai", "config": {
                "model_name_or_path": "set-a-model-to-extract", "api_key": "not-set",
                "api_base": "http://localhost:1/v1"}},
            "vector_db": {"backend": "qdrant", "config": {
                "collection_name": "memories", "vector_dimension": dimension, "distance_metric": "cosine",
                "path": str(Path(folder).resolve() / "qdrant")}},
            "embedder": {"backend": "sentence_transformer", "config": {"model_name_or_path": embedder_path}},
        }},
        "act_mem": {}, "para_mem": {}, "pref_mem": {},
    }


def export_memos(mem: "Memory", dst: str | Path) -> Path:
    """Write `mem` as a MemOS cube folder (config.json + textual_memory.json) at `dst` (must not exist or be
    empty). Written to a temporary sibling first and renamed, so `dst` is complete or absent."""
    from magistral_kit.memory.embedding import resolve_embedder

    dst = Path(dst).expanduser().resolve()
    if dst.exists() and any(dst.iterdir()):
        raise CubeError(f"{dst} is not empty. Fix: pass a new folder for the export.")
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with mem._lock:
        mem._check_open()
        items = [{"id": r.id, "vector": r.vector.tolist(), "payload": r.payload} for r in mem._record.rows()]
        cube_id = str(mem.info.get("cube_id", "kit-cube"))
    config = memos_config(dst, str(resolve_embedder(mem.embedder.name)), mem.dimension, cube_id)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    (tmp / MEMOS_FILE).write_text(json.dumps(items, ensure_ascii=False))
    if dst.exists():
        dst.rmdir()
    os.replace(tmp, dst)
    return dst


def read_memos_dump(src: str | Path) -> list[dict[str, Any]]:
    """The items of a MemOS dump; a missing or damaged file is an error naming it (MemOS's load would log
    and leave an empty cube)."""
    f = Path(src).expanduser().resolve() / MEMOS_FILE
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CubeFormatError(f"{f} does not exist: not a MemOS textual-memory dump. Fix: pass the folder "
                              f"that MemOS's cube.dump(dir) wrote.") from None
    except ValueError as exc:
        raise CubeCorruptError(f"{f} is damaged ({exc}); nothing was imported. Fix: dump it again from MemOS, "
                               f"or restore the file from a backup.") from None
    if not isinstance(data, list) or not all(isinstance(d, dict) and "id" in d and isinstance(
            d.get("payload"), dict) for d in data):
        raise CubeCorruptError(f"{f} is not a list of MemOS items (id, vector, payload); nothing was imported.")
    return data


def import_memos_dump(mem: "Memory", src: str | Path) -> list[str]:
    """Add the memories of a MemOS dump folder to the (writable) cube `mem`, keeping ids, times and metadata.
    Items without a kit kind become "ingested". All of it in one batch, or nothing."""
    data = read_memos_dump(src)
    recs = []
    for d in data:
        f = fields_from_payload(d["payload"], default_kind="ingested")
        if not f["text"].strip():
            raise CubeCorruptError(f"item {d['id']} of {src} has no memory text; nothing was imported.")
        recs.append({"id": str(d["id"]), "text": f["text"], "kind": f["kind"], "source": f["source"],
                     "created": f["created"], "updated": f["updated"], "meta": f["meta"]})
    with mem._lock:
        mem._check_writable()
        if recs:
            mem._store(recs)
    return [r["id"] for r in recs]
