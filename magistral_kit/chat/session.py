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
import time
from contextlib import contextmanager
from pathlib import Path
from functools import partial
from types import SimpleNamespace
from typing import Any, Callable, Iterator

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
        self._background: threading.Thread | None = None  # extract_after_answer's running extraction

    # --- one turn --------------------------------------------------------------------------------------
    def send(self, text: str, on_text: Callable[[str], None] | None = None) -> Turn:
        """Run one turn and return its diagnostics. `on_text` receives the reply as it is generated.

        With memory on, the user's message is stored verbatim (kind "episodic", or "episodic-question" for
        a question or small talk) before the reply is generated, so nothing the user said is lost; a newer
        statement of a fact archives the older one; then the extractor adds grounded "extracted" memories.
        "Forget that …" / "That's wrong, it's …" correct the memory instead (see `chat.corrections`).

        An interrupt (the notebook's stop button, Ctrl-C) is re-raised after the turn is made consistent:
        during retrieval or generation no reply enters the history (the message itself is already stored
        verbatim, or nothing is, if the interrupt came before that); during extraction the exchange is in the
        history and no extracted memory of it is stored. Either way the turn is in `turns` and the session
        log, marked ``interrupted``, and the next `send` works. Storing and logging are never cut half-way
        (an interrupt there is held until they finish).

        With ``KitConfig.extract_after_answer`` the turn returns once the reply is done and the message is
        stored; its extraction runs in a background thread (``turn.extraction_state``: "pending", then
        "done"; the session log gets the turn again when done), and the next `send` waits for it.
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError("send() needs a non-empty message string")
        # the previous turn's extraction (extract_after_answer) finishes first: memories stay in turn order
        waited = self.wait() if self._background is not None else None
        turn = Turn(id=f"{self.session}-t{len(self.turns) + 1}", user=text)
        if waited is not None:
            turn.timings.steps["wait for extraction"] = waited
        stage = "generation"
        try:
            if self._use_memory and self._correct(turn, on_text):
                return self._finish(turn)
            self._answer(turn, on_text)
            stage = "extraction"
            self._remember(turn)
        except KeyboardInterrupt:
            turn.interrupted = stage
            kept = ("the message is stored verbatim" if turn.episodic_id else "nothing of it is in the memory")
            if stage == "generation":
                what = f"no reply entered the history; {kept}"
            else:
                extra = len(turn.stored_ids) - (1 if turn.episodic_id else 0)
                what = (f"the exchange is in the history; {kept}; "
                        f"{extra} extracted memory(ies) stored")
            turn.problems.append(f"interrupted during {stage}: {what}")
            self._finish(turn)
            raise
        self._finish(turn)
        if turn.extraction_state == "pending":  # logged as pending; the thread logs it again when done
            self._background = threading.Thread(target=self._extract_after_answer, args=(turn,),
                                                name=f"extract {turn.id}", daemon=True)
            self._background.start()
        return turn

    def _answer(self, turn: Turn, on_text: Callable[[str], None] | None) -> None:
        """Retrieve, keep the message, build the prompt, generate; then the exchange enters the history (if
        it has an answer)."""
        cfg, text = self.config, turn.user
        if self._use_memory and cfg.top_k and len(self.memory):
            with turn.timings.step("retrieve"):
                try:
                    turn.retrieved = self.memory.search(text, top_k=cfg.top_k)
                except Exception as exc:  # a broken index must not end the conversation
                    turn.problems.append(f"retrieval failed ({type(exc).__name__}: {exc}); answered without memories")
        if self._use_memory:
            self._store_message(turn)
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
                              "history; the message itself is stored and goes to extraction")

    def _remember(self, turn: Turn) -> None:
        if self._use_memory and self.config.extract:
            if self.config.extract_after_answer and turn.message_kind == "episodic" and turn.episodic_id:
                turn.extraction_state = "pending"  # `send` starts it once the turn is logged
            else:
                self._extract_and_store(turn)
        elif self._use_memory:
            turn.notes.append("extraction off: the message is stored verbatim only")

    def _extract_after_answer(self, turn: Turn) -> None:
        """The background half of a turn (KitConfig.extract_after_answer): extract, store, log the turn
        again (its id repeated, `extraction_state` "done"), then tell whoever watches the turn."""
        try:
            self._extract_and_store(turn)
        except BaseException as exc:  # noqa: BLE001 - the message is stored; the turn says what happened
            turn.problems.append(f"extraction after the answer failed ({type(exc).__name__}: {exc}); the "
                                 f"message is stored verbatim")
        finally:
            turn.extraction_state = "done"
            turn.memory = memory_reading()
            with _interrupt_held():
                self._log(turn)
            for callback in list(turn.on_change):
                try:
                    callback(turn)
                except Exception:  # noqa: BLE001 - a display callback must not break the chat
                    pass

    def wait(self) -> float:
        """Wait for a background extraction (KitConfig.extract_after_answer) to finish; seconds waited.
        `send`, `remember` and `close` call it, so memories are always stored in turn order."""
        thread, self._background = self._background, None
        if thread is None:
            return 0.0
        start = time.perf_counter()
        thread.join()
        return time.perf_counter() - start

    @property
    def _use_memory(self) -> bool:
        return self.config.memory and self.memory is not None

    def remember(self, text: str) -> Turn:
        """Store a user message as `send` would (verbatim, superseding, extraction) but generate no reply:
        for feeding a past conversation into memory."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("remember() needs a non-empty message string")
        if self.memory is None:
            raise ValueError("remember() needs memory: this chat was opened with memory off")
        self.wait()
        turn = Turn(id=f"{self.session}-t{len(self.turns) + 1}", user=text)
        turn.notes.append("remembered without a reply")
        self._store_message(turn)
        if self.config.extract:
            self._extract_and_store(turn)
        return self._finish(turn)

    def _finish(self, turn: Turn) -> Turn:
        turn.memory = memory_reading()
        with _interrupt_held():
            self.turns.append(turn)
            self._log(turn)
        return turn

    def _provenance(self, turn: Turn) -> dict:
        now = _dt.datetime.now()
        # date and speaker feed the retrieval options (KitConfig retrieval section), as in the LoCoMo runs
        return {"session": self.session, "turn": turn.id, "time": now.isoformat(timespec="seconds"),
                "date": now.strftime("%-d %B %Y")}

    def _store_message(self, turn: Turn) -> None:
        """The user's message, verbatim, with provenance; then archive what it supersedes."""
        from magistral_kit.memory.episodic import classify
        from magistral_kit.memory.superseding import apply, find_superseded

        kind = classify(turn.user)
        turn.message_kind, turn.message_kind_reason = kind.kind, kind.reason
        meta = {**self._provenance(turn), "speaker": "User", "status": "activated", "why_kind": kind.reason}
        if kind.instruction_like:
            meta["instruction_like"] = True
            turn.notes.append("the message reads like an instruction to the system (prompt injection?): stored "
                              "verbatim as the user's words, not extracted")
        with turn.timings.step("store"), _interrupt_held():
            try:
                turn.episodic_id = self.memory.add(turn.user, source=[turn.id], kind=kind.kind, meta=meta)
                turn.stored_ids.append(turn.episodic_id)
            except Exception as exc:
                turn.problems.append(f"storing the message failed ({type(exc).__name__}: {exc}); it is in the "
                                     f"session log only")
                return
        if not kind.states_fact:
            return
        with turn.timings.step("supersede"):
            try:
                found = find_superseded(self.memory, turn.episodic_id, turn.user, self.config.supersede_min_score)
                turn.superseded = apply(self.memory, found)
            except Exception as exc:
                turn.problems.append(f"checking for superseded memories failed ({type(exc).__name__}: {exc})")

    def _extract_and_store(self, turn: Turn) -> None:
        from magistral_kit.memory.episodic import classify
        from magistral_kit.memory.extraction import extract, skipped

        if turn.episodic_id is None:
            return
        if turn.message_kind != "episodic":
            turn.extraction = skipped(f"not extracted: {turn.message_kind_reason}")
            return
        if classify(turn.user).instruction_like:  # derived again (a pure check), not read back from the store
            turn.extraction = skipped("not extracted: the message reads like an instruction to the system")
            return
        with turn.timings.step("extract"):
            turn.extraction = extract(turn.user, partial(self.extractor_llm, user_text=turn.user),
                                      self.config.extraction_max_new_tokens)
        ex = turn.extraction
        if ex.error:
            turn.problems.append(f"extraction failed ({ex.error}); the message is stored verbatim, nothing "
                                 f"extracted")
        if ex.rejected:
            turn.notes.append(f"{len(ex.rejected)} extracted item(s) rejected as not grounded in the message")
        if not ex.items:
            return
        records = ex.records(source=[turn.id], meta={**self._provenance(turn), "derived_from": turn.episodic_id,
                                                     "status": "activated"})
        with turn.timings.step("store"), _interrupt_held():
            try:
                ids = self.memory.add_many(records)
                turn.stored_ids += ids
                self.memory.update(turn.episodic_id, meta={"evolve_to": ids})
            except Exception as exc:
                turn.problems.append(f"storing extracted memories failed ({type(exc).__name__}: {exc}); the "
                                     f"message itself is stored")

    def _correct(self, turn: Turn, on_text: Callable[[str], None] | None) -> bool:
        """Handle "forget that …" / "that's wrong, it's …"; True when the message was a correction."""
        from magistral_kit.chat import corrections
        from magistral_kit.model.generation import Reply

        correction = corrections.parse(turn.user)
        if correction is None:
            return False
        with turn.timings.step("correct"):
            plan = corrections.plan(self.memory, correction, self.turns)
            try:
                corrections.apply(self.memory, plan, source=[turn.id], meta=self._provenance(turn))
            except Exception as exc:
                turn.problems.append(f"correction failed ({type(exc).__name__}: {exc}); memory unchanged")
        turn.correction = plan
        turn.message_kind = "correction"
        if plan.new_text and plan.applied:
            turn.episodic_id = plan.applied[-1]  # the corrected statement: "forget that" next refers to it
            turn.stored_ids.append(plan.applied[-1])
        answer = ("Done. " if plan.applied else "") + plan.describe()
        turn.reply = Reply(answer=answer, thinking="", tokens_in=0, tokens_out=0, seconds=0.0, path="correction")
        if on_text:
            on_text(answer)
        self.history.append((turn.user, answer))
        return True

    def preview_correction(self, text: str):
        """What `send(text)` would change in memory for a correction command (None: not a correction)."""
        from magistral_kit.chat import corrections

        correction = corrections.parse(text)
        if correction is None or self.memory is None:
            return None
        return corrections.plan(self.memory, correction, self.turns)

    def extractor_llm(self, messages: list[dict], max_new_tokens: int, user_text: str | None = None) -> Any:
        """The shared model as the extractor: messages in (the model's own chat format, tekken included),
        a result with ``.text`` and ``.tokens_out`` out, greedy; decoding constrained to the extraction
        schema (`schema_for` the user's message, when given) unless `extraction_constrained` is off (then
        a reasoning model gets room for its trace, which the parser removes)."""
        if self.config.extraction_constrained:
            from magistral_kit.memory.extraction import schema, schema_for
            from magistral_kit.model.constrained import generate_json

            return generate_json(self.lm, messages, schema_for(user_text) if user_text else schema(), max_new_tokens)
        if self.lm.tokenizer_kind == "tekken":  # Magistral reasons first: leave room for the trace
            max_new_tokens = max(max_new_tokens, min(self.config.max_new_tokens, 2048))
        reply = generate_reply(self.lm, messages, self._extract_config, max_new_tokens=max_new_tokens)
        return SimpleNamespace(text=reply.raw, tokens_out=reply.tokens_out)

    def _log(self, turn: Turn) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(turn.to_dict(), default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    # --- lifetime --------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the cube (its qdrant folder lock) so another process or a re-run cell can open it; a
        background extraction is waited for first."""
        self.wait()
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
