"""The memory layer: a cube over MemOS's textual memory (durable record, dense and lexical indexes, the
embedder, extraction, and every MemOS workaround in `memos_fixes`)."""
from magistral_kit.memory.cube import Hit, Memory, open_memory, reembed, restore_previous

__all__ = ["Hit", "Memory", "open_memory", "reembed", "restore_previous"]
