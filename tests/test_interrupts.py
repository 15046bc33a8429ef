"""Interrupting a turn (the notebook's stop button = KeyboardInterrupt) keeps history, memory and log consistent.

The interrupt is injected where a researcher would hit it: while the reply streams (from the streaming
callback), while the extractor runs (a patched extractor), and while memories are being stored (a real
SIGINT, which must be held until the store and the log line are written).
"""
from __future__ import annotations

import json
import os
import signal

import pytest

from scripted import Scripted, ids_of
from magistral_kit.chat.session import open_chat
from magistral_kit.config import KitConfig
from magistral_kit.memory import extraction


@pytest.fixture()
def chat(magistral_dirs, tmp_path):
    cfg = KitConfig(model=str(magistral_dirs("v7")), quantization="nf4", device="cpu", temperature=0.0,
                    max_new_tokens=60, extraction_max_new_tokens=32, cube_dir=str(tmp_path / "cube"))
    c = open_chat(cfg, progress=False)
    yield c
    c.close()


def replies(chat):
    """The model answers 'Fine.' to everything (and writes nothing for the extractor: raw path)."""
    return Scripted(chat.lm, lambda prompt: [] if "memory list" in prompt else ids_of(chat.lm, "Fine, thanks."))


def log_rows(chat):
    return [json.loads(line) for line in chat.log_path.read_text().splitlines()]


def test_interrupt_while_the_reply_streams(chat):
    with replies(chat):
        chat.send("first message")
        before = (list(chat.history), len(chat.memory))

        seen: list[str] = []

        def stop(piece: str) -> None:
            seen.append(piece)
            if len(seen) == 4:  # mid-reply
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            chat.send("second message", on_text=stop)
        assert "".join(seen) == "Fine"
        assert chat.history == before[0]  # no reply of the cut turn entered the history
        assert len(chat.memory) == before[1] + 1  # but the message itself was kept verbatim before generating
        assert chat.memory.get(chat.turns[-1].episodic_id).text == "second message"
        assert "the message is stored verbatim" in chat.turns[-1].problems[0]
        cut = chat.turns[-1]
        assert cut.interrupted == "generation" and "interrupted during generation" in cut.problems[0]
        assert "interrupted during generation" in cut._repr_html_()
        third = chat.send("third message")  # the next turn works
    assert third.answer == "Fine, thanks." and third.problems == []
    assert [u for u, _ in chat.history] == ["first message", "third message"]
    rows = log_rows(chat)
    assert [r["id"] for r in rows] == [t.id for t in chat.turns] and len(rows) == 3
    assert [r["interrupted"] for r in rows] == ["", "generation", ""]
    assert len({r["id"] for r in rows}) == 3


def test_interrupt_during_extraction(chat, monkeypatch):
    real = extraction.extract
    with replies(chat):
        chat.send("first message")
        stored = len(chat.memory)

        def interrupted(*a, **k):
            raise KeyboardInterrupt

        monkeypatch.setattr(extraction, "extract", interrupted)
        with pytest.raises(KeyboardInterrupt):
            chat.send("second message")
        assert len(chat.memory) == stored + 1  # the message verbatim, nothing extracted from it
        assert chat.history[-1] == ("second message", "Fine, thanks.")  # the exchange happened
        assert chat.turns[-1].interrupted == "extraction"
        assert "0 extracted memory(ies) stored" in chat.turns[-1].problems[0]
        monkeypatch.setattr(extraction, "extract", real)
        third = chat.send("third message")
    assert third.stored_ids and len(chat.memory) == stored + 1 + len(third.stored_ids)
    assert [r["interrupted"] for r in log_rows(chat)] == ["", "extraction", ""]


def test_an_interrupt_while_storing_waits_for_the_store_and_the_log(chat, monkeypatch):
    real_add = chat.memory.add

    def add_then_signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the stop button pressed while the message is being stored
        return real_add(*args, **kwargs)

    with replies(chat):
        monkeypatch.setattr(chat.memory, "add", add_then_signalled)
        with pytest.raises(KeyboardInterrupt):
            chat.send("my flight is on Friday")
        turn = chat.turns[-1]
        assert turn.stored_ids and len(chat.memory) == len(turn.stored_ids) == 1  # the store finished
        assert chat.memory.get(turn.stored_ids[0]).text == "my flight is on Friday"
        assert turn.interrupted == "generation" and "the message is stored verbatim" in turn.problems[0]
        assert log_rows(chat)[-1]["stored_ids"] == turn.stored_ids
        monkeypatch.setattr(chat.memory, "add", real_add)
        assert chat.send("next").problems == []
