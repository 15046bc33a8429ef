"""The cube as a MemOS vector-DB backend: MemOS's `GeneralTextMemory` writes and reads through it.

MemOS's `VecDBFactory` maps backend names to classes; `register()` adds ``"kit_cube"`` → `CubeVecDB`. So
``text_mem.add / update / delete / get / get_all / search`` — MemOS's own code — reach the kit's storage:
every write is committed to the durable record (SQLite: row + lexical entry, one transaction) and then to
the dense index; reads come from the record, searches from the dense index with payloads from the record.

A `CubeVecDB` is built by MemOS from its config; the parts it composes (record, dense index, the hook that
says what the lexical index holds) are handed over through `attach()` under the config's ``cube_key``.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

import numpy as np

from magistral_kit.memory.items import fields_from_payload
from magistral_kit.memory.record import Record, Row

BACKEND = "kit_cube"
_PARTS: dict[str, dict[str, Any]] = {}
_PARTS_LOCK = threading.Lock()
_REGISTERED = False


def attach(key: str, record: Record, dense: Any, lexical_text: Callable[[str, dict], str],
           on_dense_error: Callable[[str], None]) -> None:
    """Make the parts available to the `CubeVecDB` MemOS builds for config ``cube_key=key``."""
    with _PARTS_LOCK:
        _PARTS[key] = {"record": record, "dense": dense, "lexical_text": lexical_text,
                       "on_dense_error": on_dense_error}


def detach(key: str) -> None:
    with _PARTS_LOCK:
        _PARTS.pop(key, None)


def register() -> None:
    """Register the backend in MemOS's config and class factories (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from magistral_kit.memory.memos_fixes import import_memos

    import_memos()
    from memos.configs.vec_db import BaseVecDBConfig, VectorDBConfigFactory
    from memos.vec_dbs.base import BaseVecDB
    from memos.vec_dbs.factory import VecDBFactory
    from memos.vec_dbs.item import VecDBItem

    class CubeVecDBConfig(BaseVecDBConfig):
        """``cube_key`` names the parts attached by the open `Memory`."""

        cube_key: str

    class CubeVecDB(BaseVecDB):
        def __init__(self, config: CubeVecDBConfig) -> None:
            self.config = config
            with _PARTS_LOCK:
                parts = _PARTS.get(config.cube_key)
            if parts is None:
                raise RuntimeError(f"no open cube under key {config.cube_key!r}. Fix: open the cube with "
                                   f"magistral_kit.open_memory(path); its text_memory is this backend.")
            self.record: Record = parts["record"]
            self.dense = parts["dense"]
            self._lexical_text = parts["lexical_text"]
            self._on_dense_error = parts["on_dense_error"]

        # --- collections: one per cube ---------------------------------------------------------------
        def create_collection(self) -> None:
            pass

        def list_collections(self) -> list[str]:
            return [self.config.collection_name]

        def collection_exists(self, name: str) -> bool:
            return name == self.config.collection_name

        def delete_collection(self, name: str) -> None:
            """MemOS's `delete_all`: every memory removed (durably, with tombstones)."""
            ids = [t[0] for t in self.record.ids_kinds()]
            self.record.delete(ids)
            self.dense.reset()

        def ensure_payload_indexes(self, fields: list[str]) -> None:
            pass

        # --- writes ----------------------------------------------------------------------------------
        def _rows(self, data: Sequence[Any]) -> list[Row]:
            rows = []
            for d in data:
                item = d if isinstance(d, VecDBItem) else VecDBItem.from_dict(d)
                f = fields_from_payload(item.payload)
                vec = np.asarray(item.vector, dtype=np.float32)
                rows.append(Row(id=str(item.id), text=f["text"], kind=f["kind"], status=f["status"],
                                created=f["created"], updated=f["updated"], payload=item.payload, vector=vec,
                                lexical=self._lexical_text(f["text"], f["meta"]), meta=f["meta"]))
            return rows

        def add(self, data: list[Any]) -> None:
            """Durable when this returns (one SQLite transaction), then indexed."""
            rows = self._rows(data)
            if not rows:
                return
            self.record.write(rows)
            self._index(rows)

        def upsert(self, data: list[Any]) -> None:
            self.add(data)

        def update(self, id: str, data: Any) -> None:
            item = data if isinstance(data, VecDBItem) else VecDBItem.from_dict(data)
            item.id = id
            self.add([item])

        def _index(self, rows: list[Row]) -> None:
            try:
                self.dense.upsert([r.id for r in rows], np.stack([r.vector for r in rows]),
                                  [{"kind": r.kind, "status": r.status, "seq": r.seq} for r in rows])
            except Exception as exc:  # noqa: BLE001 - the record has them; the index is rebuilt from it
                self._on_dense_error(f"dense upsert of {len(rows)} failed ({type(exc).__name__}: {exc})")

        def delete(self, ids: list[str]) -> None:
            self.record.delete(list(ids))
            try:
                self.dense.delete(list(ids))
            except Exception as exc:  # noqa: BLE001
                self._on_dense_error(f"dense delete failed ({type(exc).__name__}: {exc})")

        # --- reads -----------------------------------------------------------------------------------
        @staticmethod
        def _item(row: Row, score: float | None = None, with_vector: bool = True) -> Any:
            return VecDBItem(id=row.id, vector=row.vector.tolist() if with_vector else None,
                             payload=row.payload, score=score)

        def search(self, query_vector: list[float], top_k: int, filter: dict[str, Any] | None = None) -> list[Any]:
            """MemOS's search call: nearest `top_k` with their scores (cosine: vectors are unit norm)."""
            pairs = self.dense.search(np.asarray(query_vector, dtype=np.float32), top_k)
            rows = self.record.get_many([i for i, _ in pairs])
            out = [self._item(rows[i], s, with_vector=False) for i, s in pairs if i in rows]
            return [o for o in out if _matches(o.payload, filter)] if filter else out

        def get_by_id(self, id: str) -> Any:
            row = self.record.get(id)
            return self._item(row) if row else None

        def get_by_ids(self, ids: list[str]) -> list[Any]:
            rows = self.record.get_many(list(ids))
            return [self._item(rows[i]) for i in ids if i in rows]

        def get_all(self) -> list[Any]:
            return [self._item(r) for r in self.record.rows()]

        def get_by_filter(self, filter: dict[str, Any]) -> list[Any]:
            return [self._item(r) for r in self.record.rows() if _matches(r.payload, filter)]

        def count(self, filter: dict[str, Any] | None = None) -> int:
            return self.record.count() if not filter else len(self.get_by_filter(filter))

    VectorDBConfigFactory.backend_to_class[BACKEND] = CubeVecDBConfig
    VecDBFactory.backend_to_class[BACKEND] = CubeVecDB
    _REGISTERED = True


def _matches(payload: dict[str, Any], filter: dict[str, Any]) -> bool:
    """Equality on payload keys (dotted keys reach into metadata), as MemOS's qdrant filter does."""
    for key, want in filter.items():
        cur: Any = payload
        for part in key.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if cur is None and isinstance(payload.get("metadata"), dict):
            cur = payload["metadata"].get(key)
        if cur != want:
            return False
    return True
