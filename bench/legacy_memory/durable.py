"""The durable copy of a cube: format file, fsync'd journal, atomic snapshots, process lock.

Why a separate copy at all: qdrant's local storage is one SQLite file that cannot be repaired once
truncated, and MemOS's own `dump`/`load` write non-atomically and swallow read errors (a silently empty
cube). So the memories live here, and qdrant is only an index rebuilt from this copy when needed.

Layout of a cube folder::

    cube.json            format_version, embedder, dimension, created (written once, atomically)
    memories.json        the last snapshot (all records + the journal sequence number it includes)
    memories.prev.json   the snapshot before it (kept by `save`)
    journal.prev.jsonl   the operations between the two snapshots (so the previous one can be rolled forward)
    journal.jsonl        operations since the last snapshot: one JSON line per add/update/delete batch
    cube.lock            pid of the process that has the cube open for writing (flock'd)
    qdrant/              the index (disposable)

A record is ``{id, text, kind, source, created, updated, meta, seq, vector}`` with the vector as base64
float32. Every operation carries a sequence number; replay skips what the snapshot already contains, so a
crash between "snapshot renamed" and "journal rotated" replays nothing twice.
"""
from __future__ import annotations

import base64
import errno
import fcntl
import json
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

FORMAT_VERSION = 1
CUBE_FILE = "cube.json"
SNAPSHOT = "memories.json"
PREV_SNAPSHOT = "memories.prev.json"
JOURNAL = "journal.jsonl"
PREV_JOURNAL = "journal.prev.jsonl"
LOCK_FILE = "cube.lock"
INDEX_DIR = "qdrant"


class CubeError(RuntimeError):
    """Base class of every cube problem; the message names the problem and the fix."""


class CubeLockedError(CubeError):
    """Another process holds the cube open for writing."""


class CubeFormatError(CubeError):
    """The folder is not a cube this kit can read (other format version, foreign files)."""


class DimensionMismatchError(CubeError):
    """The cube's stored vectors have another dimension than the embedder produces."""


class CubeCorruptError(CubeError):
    """A snapshot or journal is damaged; the message says which file and how to restore."""


class ReadOnlyCubeError(CubeError):
    """A write was attempted on a cube opened with read_only=True."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def encode_vector(vec: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode("ascii")


def decode_vector(text: str, dimension: int) -> np.ndarray:
    vec = np.frombuffer(base64.b64decode(text), dtype="<f4")
    if vec.shape != (dimension,):
        raise ValueError(f"vector has {vec.size} values, expected {dimension}")
    return vec.copy()


def fsync_dir(path: Path) -> None:
    """Make a rename durable: fsync the directory entry."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename, fsync the folder: a reader sees old or new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


# --- cube.json ---------------------------------------------------------------------------------------


def read_cube_file(folder: Path) -> dict[str, Any] | None:
    """The cube's format record, or None for a new cube. Raises CubeFormatError for foreign folders."""
    f = folder / CUBE_FILE
    if not f.exists():
        stray = [n for n in (SNAPSHOT, PREV_SNAPSHOT, JOURNAL, PREV_JOURNAL) if (folder / n).exists()]
        if stray:
            raise CubeFormatError(
                f"{folder} holds {', '.join(stray)} but no {CUBE_FILE}, so its format is unknown. Fix: if "
                f"this is a kit cube whose {CUBE_FILE} was deleted, recreate it with format_version "
                f"{FORMAT_VERSION}, the embedder and the dimension; otherwise use another folder.")
        return None
    try:
        info = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CubeCorruptError(
            f"{f} cannot be read ({exc}). It only records format_version, embedder and dimension: "
            f"rewrite it, e.g. {{\"format_version\": {FORMAT_VERSION}, \"embedder\": \"embedded\", "
            f"\"dimension\": 384}}") from None
    version = info.get("format_version") if isinstance(info, dict) else None
    if version != FORMAT_VERSION:
        hint = ("upgrade magistral_kit to a version that reads it"
                if isinstance(version, int) and version > FORMAT_VERSION else
                "open it with the kit version that wrote it and copy the memories over with "
                "Memory.add_many, or start a new cube")
        raise CubeFormatError(
            f"{f} has format_version {version!r}; this kit reads format_version {FORMAT_VERSION}. "
            f"Fix: {hint}.")
    for key in ("embedder", "dimension"):
        if key not in info:
            raise CubeFormatError(f"{f} lacks '{key}'. Fix: add it (the embedder name / vector size).")
    return info


def write_cube_file(folder: Path, embedder: str, dimension: int, **extra: Any) -> dict[str, Any]:
    info = {"format_version": FORMAT_VERSION, "embedder": embedder, "dimension": int(dimension),
            "created": now_iso(), "kind": "magistral_kit memory cube", **extra}
    atomic_write(folder / CUBE_FILE, json.dumps(info, indent=1).encode())
    return info


# --- lock --------------------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


class ProcessLock:
    """An flock'd file naming the holder's pid, so a second process gets a useful error.

    flock is released by the kernel when the holder dies, so a lock file left by a killed kernel is
    recognised as stale (its pid is gone) and taken over.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock; returns a note when a stale lock was taken over."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self._read_holder(fd)
            os.close(fd)
            pid = holder.get("pid", "?")
            raise CubeLockedError(
                f"cube {self.path.parent} is open for writing in process {pid} "
                f"(host {holder.get('host', '?')}, since {holder.get('since', '?')}). Fix: close it there "
                f"(chat.close() / memory.close()) or stop that kernel; to look at it beside the running "
                f"chat, open_memory(path, read_only=True).") from None
        old = self._read_holder(fd)
        note = None
        if old.get("pid") and old.get("pid") != os.getpid():
            state = "no longer running" if not pid_alive(int(old["pid"])) else "no longer holding it"
            note = f"stale lock of process {old['pid']} ({state}) taken over"
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": now_iso()}).encode(), 0)
        self._fd = fd
        return note

    @staticmethod
    def _read_holder(fd: int) -> dict[str, Any]:
        try:
            data = os.pread(fd, 4096, 0)
            holder = json.loads(data.decode()) if data else {}
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None


# --- snapshot + journal ------------------------------------------------------------------------------


@dataclass
class LoadResult:
    records: dict[str, dict[str, Any]]
    seq: int
    notes: list[str] = field(default_factory=list)
    journal_good_bytes: int | None = None  # where to truncate a torn tail before appending


def _snapshot_summary(path: Path) -> str:
    """Why/whether a snapshot is readable, for error messages."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return f"readable ({len(data['items'])} memories, saved {data.get('saved', '?')})"
    except FileNotFoundError:
        return "missing"
    except Exception as exc:  # noqa: BLE001 - only a description for a message
        return f"also unreadable ({type(exc).__name__})"


def read_snapshot(path: Path, dimension: int) -> tuple[dict[str, dict[str, Any]], int]:
    """Records and sequence number of a snapshot; CubeCorruptError (never an empty cube) when damaged."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("items"), list):
            raise ValueError("no 'items' list")
        if data.get("count") != len(data["items"]):
            raise ValueError(f"count {data.get('count')} != {len(data['items'])} items")
        records = {}
        for rec in data["items"]:
            rec["vector"] = decode_vector(rec["vector"], dimension)
            records[rec["id"]] = rec
        return records, int(data["seq"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        folder = path.parent
        prev = folder / PREV_SNAPSHOT
        prev_state = _snapshot_summary(prev) if path.name == SNAPSHOT else "n/a"
        fix = (f"the previous snapshot {prev.name} is {prev_state}. Fix: "
               f"magistral_kit.memory.restore_previous('{folder}') moves the damaged file aside and puts "
               f"{prev.name} back; {PREV_JOURNAL} and {JOURNAL} are replayed on open, so the memories "
               f"saved since are kept")
        if path.name != SNAPSHOT or not prev_state.startswith("readable"):
            fix = "no readable previous snapshot; restore the folder from a backup"
        raise CubeCorruptError(f"{path} is damaged ({type(exc).__name__}: {exc}); {fix}.") from None


def iter_journal(path: Path) -> Iterator[tuple[int, int, dict[str, Any] | None, bytes]]:
    """(line number, end offset, parsed op or None when unparsable, raw line) for each line."""
    with open(path, "rb") as fh:
        data = fh.read()
    pos = 0
    lineno = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        raw = data[pos:] if end < 0 else data[pos:end + 1]
        pos = len(data) if end < 0 else end + 1
        lineno += 1
        try:
            op = json.loads(raw) if raw.endswith(b"\n") else None
            if not isinstance(op, dict) or "seq" not in op or "op" not in op:
                op = None
        except ValueError:
            op = None
        yield lineno, pos, op, raw


def apply_op(records: dict[str, dict[str, Any]], op: dict[str, Any], dimension: int) -> None:
    """Replay one journal operation (set-or-delete by id, so replaying twice is harmless)."""
    if op["op"] in ("add", "update"):
        for rec in op["items"]:
            rec = dict(rec)
            rec["vector"] = decode_vector(rec["vector"], dimension)
            records[rec["id"]] = rec
    elif op["op"] == "delete":
        for mid in op["ids"]:
            records.pop(mid, None)
    else:
        raise ValueError(f"unknown operation {op['op']!r}")


def load(folder: Path, dimension: int) -> LoadResult:
    """Snapshot + journals → records. Tolerates only a torn LAST journal line (a kill mid-append)."""
    snap = folder / SNAPSHOT
    records: dict[str, dict[str, Any]] = {}
    seq = 0
    if snap.exists():
        records, seq = read_snapshot(snap, dimension)
    result = LoadResult(records, seq)
    for name in (PREV_JOURNAL, JOURNAL):
        jpath = folder / name
        if not jpath.exists():
            continue
        lines = list(iter_journal(jpath))
        for i, (lineno, end, op, raw) in enumerate(lines):
            last = i == len(lines) - 1
            if op is None:
                if last and name == JOURNAL:
                    result.notes.append(
                        f"{name}: torn last line {lineno} skipped ({len(raw)} bytes, an interrupted "
                        f"write that never returned); the {lineno - 1} operations before it are kept")
                    result.journal_good_bytes = end - len(raw)
                    break
                raise CubeCorruptError(
                    f"{jpath} line {lineno} is damaged (not a complete JSON operation) and is not the "
                    f"last line, so operations after it cannot be trusted. Fix: keep the intact lines "
                    f"1..{lineno - 1} (truncate the file at byte {end - len(raw)}) and reopen, or "
                    f"restore the folder from a backup.")
            if op["seq"] <= result.seq:
                continue
            if op["seq"] != result.seq + 1:
                raise CubeCorruptError(
                    f"{jpath} line {lineno} has operation {op['seq']} but {result.seq + 1} was expected: "
                    f"operations are missing (a snapshot or journal file was removed or replaced). Fix: "
                    f"restore the missing file, or magistral_kit.memory.restore_previous('{folder}').")
            try:
                apply_op(result.records, op, dimension)
            except (ValueError, KeyError, TypeError) as exc:
                raise CubeCorruptError(
                    f"{jpath} line {lineno} cannot be applied ({exc}). Fix: truncate the file at byte "
                    f"{end - len(raw)} to keep the operations before it, or restore from a backup.") from None
            result.seq = op["seq"]
    return result


def record_json(rec: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in rec.items() if k != "vector"}
    out["vector"] = encode_vector(rec["vector"])
    return out


class Journal:
    """Append-only, fsync'd: one line per operation, so a batch is all-or-nothing."""

    def __init__(self, folder: Path, truncate_at: int | None = None) -> None:
        self.path = folder / JOURNAL
        if truncate_at is not None and self.path.exists():
            os.truncate(self.path, truncate_at)
        created = not self.path.exists()
        self._fh = open(self.path, "ab")
        if created:  # the file's directory entry must be durable too, not only its lines
            os.fsync(self._fh.fileno())
            fsync_dir(folder)

    def append(self, op: dict[str, Any]) -> None:
        line = json.dumps(op, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        start = self._fh.tell()
        try:
            self._fh.write(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except BaseException:
            # leave no half line behind for the next append to glue onto
            try:
                self._fh.flush()
            except OSError:
                pass
            try:
                os.truncate(self.path, start)
                self._fh.seek(start)
            except OSError:
                pass
            raise

    def rotate(self) -> None:
        """After a snapshot: the current journal becomes the previous one, a new empty one starts."""
        self._fh.close()
        folder = self.path.parent
        os.replace(self.path, folder / PREV_JOURNAL)
        self._fh = open(self.path, "ab")
        os.fsync(self._fh.fileno())
        fsync_dir(folder)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def write_snapshot(folder: Path, records: dict[str, dict[str, Any]], seq: int, info: dict[str, Any]) -> Path:
    """Atomic snapshot; the old one becomes memories.prev.json without a moment with no memories.json."""
    items = [record_json(r) for r in records.values()]
    data = {"format_version": FORMAT_VERSION, "seq": seq, "saved": now_iso(), "count": len(items),
            "embedder": info.get("embedder"), "dimension": info.get("dimension"), "items": items}
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    snap = folder / SNAPSHOT
    tmp = folder / (SNAPSHOT + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
    if snap.exists():
        # hard link keeps memories.json in place while the previous copy is made
        prev_tmp = folder / (PREV_SNAPSHOT + ".tmp")
        if prev_tmp.exists():
            prev_tmp.unlink()
        os.link(snap, prev_tmp)
        os.replace(prev_tmp, folder / PREV_SNAPSHOT)
    os.replace(tmp, snap)
    fsync_dir(folder)
    return snap
