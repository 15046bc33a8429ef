"""magistral_kit: the helper package behind the notebooks.

Load the model once per kernel (`load_model`), open a memory chat on a MemOS cube (`open_chat`), and look at
every step of a turn. Importing the kit leaves the current directory alone: MemOS's logs and default
folders are pointed under tmp/ before MemOS is ever imported.
"""
from __future__ import annotations

import os as _os

from .config import ConfigError, KitConfig, tmp_dir as _tmp_dir

_os.environ.setdefault("MEMOS_BASE_PATH", str(_tmp_dir() / "memos"))

__all__ = ["KitConfig", "ConfigError"]
