"""The memory chat: `open_chat`, `Chat.send` -> `Turn`, the prompt and its token budget."""
from magistral_kit.chat.session import Chat, open_chat
from magistral_kit.chat.turn import Turn

__all__ = ["Chat", "Turn", "open_chat"]
