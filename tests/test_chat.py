"""The memory chat end to end on the embedded default: memory on, several turns, every step visible."""
import io
import json

import pytest

from magistral_kit.model import loading as model_mod
from magistral_kit.chat.session import open_chat
from magistral_kit.config import KitConfig
from magistral_kit.chat.prompt import build_prompt

FACTS = ["My name is Ana and I live in Lisbon.", "My dog is called Pixel and loves the beach.",
         "Where do I live?", "What is my dog called?"]


@pytest.fixture()
def chat_config(tmp_path):
    return KitConfig(cube_dir=str(tmp_path / "cube"), temperature=0.0, max_new_tokens=24,
                     extraction_max_new_tokens=48)


def test_memory_on_for_many_turns_with_every_step_visible(chat_config, monkeypatch):
    import memos.llms.hf as memos_hf

    def refuse(*a, **k):
        raise AssertionError("MemOS's HF backend tried to load its own model")

    monkeypatch.setattr(memos_hf.HFLLM, "__init__", refuse)
    chat = open_chat(chat_config, progress=False)
    loads = len(model_mod.LOADS)
    try:
        turns = [chat.send(text) for text in FACTS]
    finally:
        chat.close()
    assert len(model_mod.LOADS) == loads  # chat + extraction share the one model
    first, *later = turns
    assert first.retrieved == [] and first.stored_ids  # nothing to retrieve yet; something stored
    for turn in later:  # the earlier attempt crashed here, on the second message
        assert turn.retrieved and all(-1.0 <= h.score <= 1.0 for h in turn.retrieved)
        assert all(h.source and h.source[0].startswith(chat.session) for h in turn.retrieved)
    for turn in turns:
        assert turn.problems == []
        assert turn.extraction.path in ("json", "empty", "invalid", "skipped") and turn.extraction.model_output is not None
        assert {"prompt", "generate", "store"} <= set(turn.timings.steps)
        # a question costs no extractor call; a statement does
        assert ("extract" in turn.timings.steps) == (turn.message_kind == "episodic")
        html = turn._repr_html_()
        for part in ("retrieved", "prompt:", "assistant:", "extraction", "stored", "RSS"):
            assert part in html
    # 'where do I live' retrieves the Lisbon memory first among session memories
    assert any("Lisbon" in h.text for h in turns[2].retrieved)
    log = [json.loads(line) for line in chat.log_path.read_text().splitlines()]
    assert [row["id"] for row in log] == [t.id for t in turns]
    assert log[1]["retrieved"] and log[1]["timings"]["generate"] > 0


def test_reopening_the_chat_loads_nothing_and_keeps_memories(chat_config):
    with open_chat(chat_config, progress=False) as chat:
        chat.send("I work as a baker in Porto.")
        stored = len(chat.memory)
    loads = len(model_mod.LOADS)
    with open_chat(chat_config, progress=False) as again:
        assert len(again.memory) == stored > 0
        hits = again.memory.search("Where do I work?", top_k=3)
        assert any("Porto" in h.text or "baker" in h.text for h in hits)
    assert len(model_mod.LOADS) == loads


def test_budget_drops_oldest_exchanges_then_lowest_memories(embedded_lm):
    from magistral_kit.memory.cube import Hit

    history = [(f"message number {i} " + "word " * 60, "ok " * 20) for i in range(30)]
    memories = [Hit(id=f"m{i}", text=f"memory {i} " + "fact " * 60, score=s, source=[], kind="raw", created="", meta={})
                for i, s in enumerate([0.9, 0.5, 0.7])]
    cfg = KitConfig(context_budget=1200, max_new_tokens=200)
    plan = build_prompt(embedded_lm, cfg, "hello", history, memories)
    assert plan.exchanges_dropped_for_window == 10 and plan.exchanges_dropped_for_budget > 0
    assert plan.tokens <= plan.budget - plan.reply_reserve
    assert plan.messages[-1]["role"] == "user" and plan.messages[-1]["content"].endswith("hello")  # the message is last
    kept_first = plan.messages[1]["content"]
    assert kept_first.startswith(f"message number {10 + plan.exchanges_dropped_for_budget} ")
    tight = build_prompt(embedded_lm, KitConfig(context_budget=400, max_new_tokens=200), "hello", history, memories)
    assert tight.exchanges_kept == 0 and [m.id for m in tight.memories_dropped][:1] == ["m1"]  # lowest score first
    assert "lowest-scored" in tight.trimmed


def test_terminal_chat_lists_memories(tmp_path):
    from magistral_kit.__main__ import main

    out = io.StringIO()
    code = main(["chat", "--cube", str(tmp_path / "term"), "--max-new-tokens", "16", "--temperature", "0"],
                stdin=io.StringIO("I collect blue stamps.\nmem\nmem stamps\nquit\n"), stdout=out)
    text = out.getvalue()
    assert code == 0 and "assistant>" in text and "cube released" in text
    listing = text.split("you> ")[2]
    assert "memories" in listing and "stamps" in listing
