"""The memory layer: a thin `Memory` over MemOS's textual memory, composing one part per job —
`record` (SQLite: the durable rows), `lexical` (FTS5 bm25), `dense` (Qdrant Edge / qdrant-client / server),
`vecdb` (those parts as a MemOS vector-DB backend), `items` (kit memory ↔ MemOS item), `transfer` (migration,
MemOS export/import), the embedder, extraction, and every MemOS workaround in `memos_fixes`."""
from magistral_kit.memory.cube import KINDS, Hit, Memory, open_memory, reembed
from magistral_kit.memory.transfer import export_memos, import_memos_dump, restore_previous

__all__ = ["KINDS", "Hit", "Memory", "open_memory", "reembed", "restore_previous", "export_memos", "import_memos_dump"]
