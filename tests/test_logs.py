"""Logs go where the config says, at the level the user chose (MemOS logs prompts at INFO)."""
import logging

from magistral_kit.config import KitConfig
from magistral_kit.chat.logs import configure_logging


def test_logs_go_to_the_configured_folder_at_the_chosen_level(tmp_path):
    path = configure_logging(KitConfig(log_dir=str(tmp_path / "logs")))  # default WARNING
    logging.getLogger("memos.llms.hf").info("PROMPT: my private chat")
    logging.getLogger("magistral_kit.chat.session").warning("a warning")
    for h in logging.getLogger("memos").handlers + logging.getLogger("magistral_kit").handlers:
        h.flush()
    text = path.read_text()
    assert path.parent == tmp_path / "logs" and "a warning" in text and "private chat" not in text
    configure_logging(KitConfig(log_dir=str(tmp_path / "logs"), log_level="INFO"))
    logging.getLogger("memos.llms.hf").info("PROMPT: now asked for")
    for h in logging.getLogger("memos").handlers:
        h.flush()
    assert "now asked for" in path.read_text()
    assert len([h for h in logging.getLogger("memos").handlers if h.get_name() == "magistral_kit_file"]) == 1
    configure_logging(KitConfig(log_dir=str(tmp_path / "logs")))  # back to the default for other tests
