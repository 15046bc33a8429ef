"""Where the kit's and MemOS's logs go, and at which level: only where the config says.

MemOS logs full prompts and model replies at INFO. The kit never lets that reach the current directory
(`memos_fixes.import_memos` removes MemOS's own handlers); `configure_logging` sends the `magistral_kit`
and `memos` loggers to ``<log_dir>/magistral_kit.log`` at `KitConfig.log_level` (WARNING by default, so
no chat content is written unless the user asks for INFO or DEBUG).
"""
from __future__ import annotations

import logging
from pathlib import Path

from magistral_kit.config import KitConfig

_HANDLER_NAME = "magistral_kit_file"


def configure_logging(config: KitConfig) -> Path:
    """Point the kit's and MemOS's loggers at one file under `config.log_path`; idempotent."""
    from magistral_kit.memory.memos_fixes import import_memos

    import_memos()  # MemOS sets its own logger level on import: import it first so the choice below stands
    path = config.log_path / "magistral_kit.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    level = getattr(logging, config.log_level)
    for name in ("magistral_kit", "memos"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if h.get_name() == _HANDLER_NAME]:
            logger.removeHandler(handler)
            handler.close()
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    return path
