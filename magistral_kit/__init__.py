"""magistral_kit: the helper package behind the notebooks.

Load the model once per kernel (`load_model`), open a memory chat on a MemOS cube (`open_chat`), and look at
every step of a turn. The package is layered; each layer imports only from the ones below it:

    chat/, notebook/, evaluation/   the memory chat and its Turn; widgets, maps, tables; LoCoMo
    memory/, model/                 the cube over MemOS's textual memory; loading, generation, fast decode
    config.py, diagnostics.py       KitConfig; timers and memory readings

The public API is re-exported here and imported lazily, so `import magistral_kit` stays light (no torch, no
MemOS) and still leaves the current directory alone: MemOS's logs and default folders are pointed under tmp/
before MemOS is ever imported.
"""
from __future__ import annotations

import importlib as _importlib
import os as _os

from magistral_kit.config import ConfigError, KitConfig, tmp_dir as _tmp_dir

_os.environ.setdefault("MEMOS_BASE_PATH", str(_tmp_dir() / "memos"))

# public name -> module that defines it (imported on first use)
_LAZY = {
    "load_model": "magistral_kit.model.loading",
    "LoadedModel": "magistral_kit.model.loading",
    "generate_reply": "magistral_kit.model.generation",
    "Reply": "magistral_kit.model.generation",
    "open_memory": "magistral_kit.memory.cube",
    "Memory": "magistral_kit.memory.cube",
    "open_chat": "magistral_kit.chat.session",
    "Chat": "magistral_kit.chat.session",
    "Turn": "magistral_kit.chat.turn",
    "chat_panel": "magistral_kit.notebook.panel",
    "memory_map": "magistral_kit.notebook.maps",
}

__all__ = ["KitConfig", "ConfigError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'magistral_kit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
