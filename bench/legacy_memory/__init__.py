"""The memory layer as it was at commit 204f337 (journal + snapshots + qdrant-client local mode), copied here
ONLY so bench/memory_scale.py can measure it side by side with today's; nothing in the kit imports it."""
