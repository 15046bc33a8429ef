"""`open_chat` and `Chat.send`: one turn = retrieve → prompt → generate → extract → store, every step shown.

The chat and the extractor share the ONE model from `load_model`; MemOS never loads one. A step that fails
(retrieval, extraction, storing) is reported in the `Turn` and the turn carries on: memory stays on. Every
turn is appended to the cube's session log (``sessions/<session>.jsonl``) so sessions can be analysed
later.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from magistral_kit.config import KitConfig
from magistral_kit.diagnostics import memory_reading
from magistral_kit.model.generation import generate_reply
from magistral_kit.chat.logs import configure_logging
from magistral_kit.model.loading import LoadedModel, load_model
from magistral_kit.chat.prompt import build_prompt
from magistral_kit.chat.turn import Turn


class Chat:
    """A conversation over a memory cube. Create it with `open_chat`."""

    def __init__(self, config: KitConfig, lm: LoadedModel, memory) -> None:
        self.config, self.lm, self.memory = config, lm, memory
        self.session = "s" + _dt.datetime.now().strftime("%Y%m%d%H%M%S") + secrets.token_hex(2)
        self.history: list[tuple[str, str]] = []
        self.turns: list[Turn] = []
        self._extract_config = config.replace(temperature=0.0)
        self.log_path = Path(memory.path) / "sessions" / f"{self.session}.jsonl"

    # --- one turn --------------------------------------------------------------------------------------
    def send(self, text: str, on_text: Callable[[str], None] | None = None) -> Turn:
        """Run one turn and return its diagnostics. `on_text` receives the reply as it is generated.

        An interrupt (the notebook's stop button, Ctrl-C) is re-raised after the turn is made consistent:
        during retrieval or generation nothing of the turn enters the history or the memory; during
        extraction the exchange is in the history and nothing of it is stored. Either way the turn is in
        `turns` and the session log, marked ``interrupted``, and the next `send` works. Storing and logging
        are never cut half-way (an interrupt there is held until they finish).
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError("send() needs a non-empty message string")
        turn = Turn(id=f"{self.session}-t{len(self.turns) + 1}", user=text)
        stage = "generation"
        try:
            self._answer(turn, on_text)
            stage = "extraction"
            self._remember(turn)
        except KeyboardInterrupt:
            turn.interrupted = stage
            if stage == "generation":
                what = "nothing of this turn entered the history or the memory"
            else:
                stored = f"{len(turn.stored_ids)} memory(ies) stored" if turn.stored_ids else "nothing of it stored"
                what = f"the exchange is in the history; {stored}"
            turn.problems.append(f"interrupted during {stage}: {what}")
            self._finish(turn)
            raise
        self._finish(turn)
        return turn

    def _answer(self, turn: Turn, on_text: Callable[[str], None] | None) -> None:
        """Retrieve, build the prompt, generate; then the exchange enters the history (if it has an answer)."""
        cfg, text = self.config, turn.user
        if self._use_memory and cfg.top_k and len(self.memory):
            with turn.timings.step("retrieve"):
                try:
                    turn.retrieved = self.memory.search(text, top_k=cfg.top_k)
                except Exception as exc:  # a broken index must not end the conversation
                    turn.problems.append(f"retrieval failed ({type(exc).__name__}: {exc}); answered without memories")
        with turn.timings.step("prompt"):
            turn.plan = build_prompt(self.lm, cfg, text, self.history, turn.retrieved)
        with turn.timings.step("generate"):
            turn.reply = generate_reply(self.lm, turn.plan.messages, cfg,
                                        max_new_tokens=cfg.max_new_tokens, on_text=on_text)
        turn.notes += turn.reply.notes
        if turn.reply.answer.strip():
            self.history.append((text, turn.reply.answer))
        else:
            # never an empty assistant message: mistral-common rejects it, and it would end the chat
            turn.notes.append(f"empty answer {turn.reply.empty_reason()}: this exchange is kept out of the "
                              "history; the message alone goes to extraction")

    def _remember(self, turn: Turn) -> None:
        if self._use_memory and self.config.extract:
            self._extract_and_store(turn)
        elif self._use_memory:
            turn.notes.append("extraction off: nothing stored this turn")

    @property
    def _use_memory(self) -> bool:
        return self.config.memory and self.memory is not None

    def _finish(self, turn: Turn) -> None:
        turn.memory = memory_reading()
        with _interrupt_held():
            self.turns.append(turn)
            self._log(turn)

    def _extract_and_store(self, turn: Turn) -> None:
        from magistral_kit.memory.extraction import extract

        messages = [{"role": "user", "content": turn.user}]
        if turn.reply is not None and turn.reply.answer.strip():
            messages.append({"role": "assistant", "content": turn.reply.answer})
        with turn.timings.step("extract"):
            turn.extraction = extract(messages, self.extractor_llm, self.config.extraction_max_new_tokens)
        # date and speaker feed the retrieval options (KitConfig retrieval section), as in the LoCoMo runs
        meta = {"session": self.session, "turn": turn.id, "date": _dt.date.today().strftime("%-d %B %Y")}
        items = [{"text": item.text, "source": [turn.id], "kind": item.kind,
                  "meta": {**meta, **({"speaker": "User"} if item.kind == "raw" else {})}}
                 for item in turn.extraction.items]
        with turn.timings.step("store"), _interrupt_held():
            try:
                turn.stored_ids = self.memory.add_many(items) if items else []
            except Exception as exc:
                turn.problems.append(f"storing failed ({type(exc).__name__}: {exc}); nothing of this turn stored")

    def extractor_llm(self, messages: list[dict], max_new_tokens: int) -> str:
        """The shared model as MemOS's extractor sees it: messages in, raw text out (greedy)."""
        reply = generate_reply(self.lm, messages, self._extract_config, max_new_tokens=max_new_tokens)
        return reply.raw

    def _log(self, turn: Turn) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(turn.to_dict(), default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    # --- lifetime --------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the cube (its qdrant folder lock) so another process or a re-run cell can open it."""
        if self.memory is not None:
            self.memory.close()

    def __enter__(self) -> "Chat":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _repr_html_(self) -> str:
        return (f"<div><b>Chat</b> session <code>{self.session}</code>, {len(self.turns)} turn(s), model "
                f"{self.lm.name}, cube <code>{self.memory.path if self.memory is not None else '(memory off)'}</code> with "
                f"{len(self.memory) if self.memory is not None else 0} memories</div>")


def open_chat(config: KitConfig | None = None, progress: bool = True) -> Chat:
    """Open (or create) the cube named in `config` and chat over it with the cached model."""
    from magistral_kit.memory.cube import open_memory

    config = config or KitConfig()
    configure_logging(config)
    lm = load_model(config, progress=progress)
    memory = open_memory(config.cube_path, embedder=config.embedder, retrieval=_retrieval_options(config),
                         index=config.qdrant_url or None)
    return Chat(config, lm, memory)


def _retrieval_options(config: KitConfig):
    from magistral_kit.memory.retrieval import RetrievalOptions

    return RetrievalOptions.from_config(config)


@contextmanager
def _interrupt_held() -> Iterator[None]:
    """Hold a Ctrl-C / notebook interrupt until the block is done, then raise it (main thread only).

    Storing a turn's memories and writing its log line are short; cut half-way they would leave the memory
    and the log disagreeing about the turn.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt
