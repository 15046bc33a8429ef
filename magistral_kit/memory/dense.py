"""The dense index: one small interface, three Qdrant engines behind it, always rebuildable from the record.

Why an interface: the durable record (SQLite, `record`) holds every memory with its vector, so the dense index
is a disposable accelerator; which engine serves it is a measured choice (bench/memory_scale.py):

* `EdgeIndex` — Qdrant Edge (`qdrant-edge-py`): the Qdrant engine in-process, persistent, HNSW. Its
  write-ahead log is locked to one process and it has no server sync: it serves the writer only.
* `QdrantClientIndex` with ``location=":memory:"`` — qdrant-client's local mode (exact search, NumPy, all in
  RAM), built from the record on open. What a read-only view in another process uses.
* `QdrantClientIndex` with ``url=...`` — a Qdrant server or cluster (``KitConfig.qdrant_url``), where a
  researcher outgrows one machine; same calls, the collection named after the cube.

Each point carries ``{"mid": memory id, "kind", "status", "seq"}``: enough to filter by kind and status inside
the engine (what MemOS's own search cannot) and to check the index against the record (`state`).
"""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

_NS = uuid.UUID("6f1c3f0e-8a52-4a8e-9d55-3c1f4b7a2e10")
BATCH = 2000


def point_id(mid: str) -> str:
    """Qdrant ids are UUIDs or integers: a memory id that is a UUID is kept, any other is mapped (uuid5)."""
    try:
        return str(uuid.UUID(mid))
    except (ValueError, AttributeError, TypeError):
        return str(uuid.uuid5(_NS, str(mid)))


class DenseIndex(Protocol):
    """What the memory layer needs from a vector engine."""

    kind: str

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]) -> None: ...
    def delete(self, ids: Sequence[str]) -> None: ...
    def search(self, vector: np.ndarray, limit: int, *, kinds: Sequence[str] | None = None,
               exclude_status: Sequence[str] = (), exact: bool = False) -> list[tuple[str, float]]: ...
    def count(self) -> int: ...
    def state(self) -> dict[str, int]: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...


# --- qdrant-client: local (:memory: or a folder) or a server by URL -------------------------------------


class QdrantClientIndex:
    """qdrant-client over one collection. `location` is ':memory:' or a folder; `url` a server / cluster."""

    def __init__(self, dimension: int, *, location: str | None = ":memory:", url: str | None = None,
                 api_key: str | None = None, collection: str = "memories", client: Any = None) -> None:
        from qdrant_client import QdrantClient

        self.dimension = dimension
        self.collection = collection
        self.url = url
        self.kind = f"qdrant-server {url}" if url else ("qdrant-local :memory:" if location == ":memory:"
                                                          else f"qdrant-local {location}")
        if client is not None:
            self.client = client
        elif url:
            self.client = QdrantClient(url=url, api_key=api_key)
        elif location == ":memory:":
            self.client = QdrantClient(location=":memory:")
        else:
            self.client = QdrantClient(path=str(location))
        self._ensure()

    def _ensure(self) -> None:
        from qdrant_client import models

        if not self.client.collection_exists(self.collection):
            self.client.create_collection(self.collection, vectors_config=models.VectorParams(
                size=self.dimension, distance=models.Distance.DOT))
            if self.url:  # payload indexes only mean something on a server (local mode warns and ignores)
                for field in ("kind", "status", "mid"):
                    self.client.create_payload_index(self.collection, field, models.PayloadSchemaType.KEYWORD)
        size = self.client.get_collection(self.collection).config.params.vectors.size
        if size != self.dimension:
            raise ValueError(f"collection {self.collection!r} holds {size}-dim vectors, expected {self.dimension}")

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]) -> None:
        from qdrant_client import models

        for s in range(0, len(ids), BATCH):
            pts = [models.PointStruct(id=point_id(i), vector=v.tolist(), payload={**p, "mid": i})
                   for i, v, p in zip(ids[s:s + BATCH], vectors[s:s + BATCH], payloads[s:s + BATCH])]
            self.client.upsert(self.collection, pts, wait=True)

    def delete(self, ids: Sequence[str]) -> None:
        from qdrant_client import models

        if ids:
            self.client.delete(self.collection, models.PointIdsList(points=[point_id(i) for i in ids]), wait=True)

    def _filter(self, kinds: Sequence[str] | None, exclude_status: Sequence[str]) -> Any:
        from qdrant_client import models

        must = [models.FieldCondition(key="kind", match=models.MatchAny(any=list(kinds)))] if kinds else []
        must_not = ([models.FieldCondition(key="status", match=models.MatchAny(any=list(exclude_status)))]
                    if exclude_status else [])
        return models.Filter(must=must or None, must_not=must_not or None) if (must or must_not) else None

    def search(self, vector: np.ndarray, limit: int, *, kinds: Sequence[str] | None = None,
               exclude_status: Sequence[str] = (), exact: bool = False) -> list[tuple[str, float]]:
        from qdrant_client import models

        res = self.client.query_points(self.collection, query=np.asarray(vector).tolist(), limit=limit,
                                       query_filter=self._filter(kinds, exclude_status), with_payload=["mid"],
                                       search_params=models.SearchParams(exact=True) if exact else None).points
        return [(str(p.payload["mid"]), float(p.score)) for p in res]

    def count(self) -> int:
        return int(self.client.count(self.collection, exact=True).count)

    def state(self) -> dict[str, int]:
        out: dict[str, int] = {}
        offset = None
        while True:
            pts, offset = self.client.scroll(self.collection, limit=5000, offset=offset,
                                             with_payload=["mid", "seq"], with_vectors=False)
            for p in pts:
                out[str(p.payload["mid"])] = int(p.payload.get("seq", -1))
            if offset is None:
                return out

    def reset(self) -> None:
        if self.client.collection_exists(self.collection):
            self.client.delete_collection(self.collection)
        self._ensure()

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a broken client is best effort
            pass


# --- Qdrant Edge: the engine in-process, HNSW, persistent ----------------------------------------------


class EdgeIndex:
    """A Qdrant Edge shard in `path` (HNSW above `hnsw_threshold` points; exact below)."""

    def __init__(self, path: Path, dimension: int, *, m: int = 16, ef_construct: int = 100, hnsw_ef: int = 512,
                 full_scan_threshold_kb: int = 10_000) -> None:
        import qdrant_edge as q

        self.q = q
        self.path = Path(path)
        self.dimension = dimension
        self.hnsw_ef = hnsw_ef
        self.kind = f"qdrant-edge {self.path.name}"
        self._config = q.EdgeConfig(
            vectors=q.EdgeVectorParams(size=dimension, distance=q.Distance.Dot),
            hnsw_config=q.HnswIndexConfig(m=m, ef_construct=ef_construct,
                                          full_scan_threshold=full_scan_threshold_kb, max_indexing_threads=1))
        self.shard = self._open()
        self._unoptimized = 0
        # HNSW is built only on request (`optimize`): on this 2-core machine it indexes a few hundred points a
        # second, so an automatic build would stall a chat turn for minutes; exact search stays fast to ~100k
        self.optimize_every: int | None = None

    def _open(self) -> Any:
        q = self.q
        if self.path.exists() and any(self.path.iterdir()):
            shard = q.EdgeShard.load(str(self.path))
            dim = _edge_dimension(shard, self.path)
            if dim is not None and dim != self.dimension:
                shard.close()
                raise ValueError(f"Qdrant Edge shard {self.path} holds {dim}-dim vectors, expected "
                                 f"{self.dimension}")
            return shard
        self.path.mkdir(parents=True, exist_ok=True)
        shard = q.EdgeShard.create(str(self.path), self._config)
        for name in ("kind", "status"):  # filters read these indexes, not every point's payload from disk
            shard.update(q.UpdateOperation.create_field_index(name, q.PayloadSchemaType.Keyword))
        return shard

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]) -> None:
        q = self.q
        for s in range(0, len(ids), BATCH):
            pts = [q.Point(point_id(i), v.tolist(), {**p, "mid": i})
                   for i, v, p in zip(ids[s:s + BATCH], vectors[s:s + BATCH], payloads[s:s + BATCH])]
            self.shard.update(q.UpdateOperation.upsert_points(pts))
        self._unoptimized += len(ids)
        if self.optimize_every is not None and self._unoptimized >= self.optimize_every:
            self.optimize()

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            self.shard.update(self.q.UpdateOperation.delete_points([point_id(i) for i in ids]))

    def optimize(self) -> bool:
        """Build the HNSW graph over what was added (blocking; `Memory.build_index`). Until then, and for
        points added since, Qdrant Edge searches exactly."""
        self._unoptimized = 0
        return bool(self.shard.optimize())

    def search(self, vector: np.ndarray, limit: int, *, kinds: Sequence[str] | None = None,
               exclude_status: Sequence[str] = (), exact: bool = False) -> list[tuple[str, float]]:
        """Nearest `limit` among `kinds`, without `exclude_status`. The filter is applied to an over-fetched
        candidate list (doubling until enough), not inside Qdrant: measured, a payload filter made Qdrant
        Edge's scan over an unindexed segment ~30x slower, and excluded memories are the rare case."""
        q = self.q
        vec = np.asarray(vector, dtype=np.float32).tolist()
        want = set(kinds) if kinds is not None else None
        fetch = limit if (want is None and not exclude_status) else limit * 2 + 8
        while True:
            req = q.QueryRequest(limit=fetch, query=q.Query.Nearest(vec),
                                 with_payload=q.PayloadSelector.Include(["mid", "kind", "status"]),
                                 params=q.SearchParams(exact=exact, hnsw_ef=None if exact else max(self.hnsw_ef, fetch)))
            points = self.shard.query(req)
            out = [(str(p.payload["mid"]), float(p.score)) for p in points
                   if (want is None or p.payload.get("kind") in want) and p.payload.get("status") not in exclude_status]
            if len(out) >= limit or len(points) < fetch:
                return out[:limit]
            fetch *= 4

    def count(self) -> int:
        return int(self.shard.count(self.q.CountRequest(exact=True)))

    def state(self) -> dict[str, int]:
        q = self.q
        out: dict[str, int] = {}
        offset = None
        while True:
            points, offset = self.shard.scroll(q.ScrollRequest(limit=5000, offset=offset, with_payload=True,
                                                               with_vector=False))
            for p in points:
                out[str(p.payload["mid"])] = int(p.payload.get("seq", -1))
            if offset is None:
                return out

    def reset(self) -> None:
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self.shard = self._open()

    def close(self) -> None:
        shard, self.shard = getattr(self, "shard", None), None
        if shard is not None:
            try:
                shard.flush()
            finally:
                shard.close()


def _edge_dimension(shard: Any, path: Path | None = None) -> int | None:
    """The vector size a shard was created with (from its edge_config.json), or None when unknown."""
    try:
        import json

        cfg = json.loads((Path(path) / "edge_config.json").read_text())
        return int(cfg["vectors"][""]["size"])
    except Exception:  # noqa: BLE001 - the dimension is also checked by the first upsert
        return None
