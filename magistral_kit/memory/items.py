"""One memory in its two shapes: MemOS's `TextualMemoryItem` (what MemOS calls and dumps) and the kit's row.

The kit's fields ride in MemOS's item so that plain MemOS keeps them: ``metadata.info`` is the kit's ``meta``
dict as given; ``kind``, ``provenance`` (turn ids) and ``created_at`` are extra metadata fields (MemOS's
metadata model allows extras). Where MemOS has a field of its own the kit's meta is mirrored into it:
``status`` ("activated" / "archived" …), ``evolve_to`` (ids a memory was superseded by), ``key``, ``tags``,
``confidence``, so MemOS code reading those sees the kit's values.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

KINDS = ("episodic", "episodic-question", "extracted", "manual", "ingested")
DEFAULT_EXCLUDED_KINDS = ("episodic-question",)
LEGACY_KINDS = {"raw": "episodic"}
STATUSES = ("activated", "resolving", "archived", "deleted")
_MEMOS_SOURCE = {"episodic": "conversation", "episodic-question": "conversation", "extracted": "conversation",
                 "ingested": "file", "manual": None}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def normalize_kind(kind: str) -> str:
    """'raw' (cubes written before kinds were split) is read as 'episodic'."""
    return LEGACY_KINDS.get(kind, kind)


def memos_item(id: str, text: str, kind: str, source: list[str], created: str, updated: str,
               meta: dict[str, Any]) -> Any:
    """The `TextualMemoryItem` MemOS stores for a kit memory."""
    from memos.memories.textual.item import TextualMemoryItem, TextualMemoryMetadata

    fields: dict[str, Any] = {"source": _MEMOS_SOURCE.get(kind), "updated_at": updated, "kind": kind,
                              "provenance": list(source), "created_at": created, "info": dict(meta)}
    status = meta.get("status")
    fields["status"] = status if status in STATUSES else "activated"
    if isinstance(meta.get("evolve_to"), list) and all(isinstance(x, str) for x in meta["evolve_to"]):
        fields["evolve_to"] = list(meta["evolve_to"])
    if isinstance(meta.get("key"), str):
        fields["key"] = meta["key"]
    if isinstance(meta.get("tags"), list) and all(isinstance(t, str) for t in meta["tags"]):
        fields["tags"] = list(meta["tags"])
    if isinstance(meta.get("confidence"), (int, float)) and not isinstance(meta.get("confidence"), bool):
        fields["confidence"] = float(meta["confidence"])
    return TextualMemoryItem(id=id, memory=text, metadata=TextualMemoryMetadata(**fields))


def fields_from_payload(payload: dict[str, Any], default_kind: str = "ingested") -> dict[str, Any]:
    """Kit fields (text, kind, status, source, created, updated, meta) from a MemOS item dump.

    Works on items written by plain MemOS too: no kind → `default_kind`; no provenance → []; no created_at →
    updated_at (or now); no info → {} (MemOS's own status is kept in meta only when not 'activated')."""
    md = payload.get("metadata") or {}
    info = md.get("info")
    kit_item = isinstance(info, dict) and "kind" in md
    meta = dict(info) if isinstance(info, dict) else {}
    kind = normalize_kind(str(md.get("kind") or default_kind))
    if kind not in KINDS:
        kind = default_kind
    status = md.get("status") or "activated"
    if not kit_item and status != "activated":
        meta.setdefault("status", status)
    if isinstance(meta.get("status"), str):
        status = meta["status"]
    prov = md.get("provenance")
    source = [str(s) for s in prov] if isinstance(prov, list) else []
    updated = str(md.get("updated_at") or now_iso())
    created = str(md.get("created_at") or updated)
    return {"text": str(payload.get("memory", "")), "kind": kind, "status": str(status), "source": source,
            "created": created, "updated": updated, "meta": meta}
