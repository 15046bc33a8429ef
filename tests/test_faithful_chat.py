"""The chat's memory-writing flow on the embedded model, with a scripted extractor where the test needs one:
every user message kept verbatim, questions kept apart, extraction grounded and linked, failures visible,
newer facts superseding older ones, corrections applied through the memory API."""
import json

import pytest

from magistral_kit.chat.session import open_chat
from magistral_kit.config import KitConfig
from magistral_kit.memory.superseding import chain


@pytest.fixture()
def chat(tmp_path):
    c = open_chat(KitConfig(cube_dir=str(tmp_path / "cube"), temperature=0.0, max_new_tokens=8), progress=False)
    yield c
    c.close()


def memos_json(*items):
    return json.dumps({"memory list": [{"key": k, "memory_type": "UserMemory", "value": v, "tags": t}
                                       for k, v, t in items], "summary": "about the user"})


def test_every_message_is_stored_verbatim_and_questions_kept_apart(chat):
    chat.extractor_llm = lambda m, n, **kw: '{"memory list": [], "summary": ""}'
    fact = chat.send("My sister Ana works as a marine biologist in Lisbon.")
    question = chat.send("Which city does my sister live in?")
    hello = chat.send("Hi there!")
    items = chat.memory.items()
    assert list(items["text"]) == [fact.user, question.user, hello.user]
    assert list(items["kind"]) == ["episodic", "episodic-question", "episodic-question"]
    stored = chat.memory.get(fact.episodic_id)
    assert stored.meta["session"] == chat.session and stored.meta["turn"] == fact.id and stored.meta["time"]
    # default retrieval leaves questions and greetings out; asking for the kind finds them
    assert [h.kind for h in chat.memory.search("Which city does my sister live in?", top_k=5)] == ["episodic"]
    assert chat.memory.search("Hi there", top_k=5, kinds=("episodic-question",))
    assert question.extraction.path == "skipped" and hello.extraction.path == "skipped"


def test_json_path_end_to_end_key_and_tags_reach_the_stored_item(chat):
    chat.extractor_llm = lambda m, n, **kw: memos_json(
        ("sister job", "Ana works as a marine biologist in Lisbon.", ["family", "work"]),
        ("sister employer", "Ana works at a company called Oceanix.", ["work"]))
    turn = chat.send("My sister Ana works as a marine biologist in Lisbon.")
    assert turn.extraction.path == "json"
    assert [i.text for i in turn.extraction.rejected] == ["Ana works at a company called Oceanix."]
    extracted = [chat.memory.get(i) for i in turn.stored_ids if i != turn.episodic_id]
    assert [(h.text, h.kind, h.meta["key"], h.meta["tags"]) for h in extracted] == [
        ("Ana works as a marine biologist in Lisbon.", "extracted", "sister job", ["family", "work"])]
    assert extracted[0].meta["derived_from"] == turn.episodic_id
    assert chat.memory.get(turn.episodic_id).meta["evolve_to"] == [extracted[0].id]
    assert "Oceanix" in turn.to_html() and "rejected" in turn.to_html()
    log = json.loads(chat.log_path.read_text().splitlines()[-1])
    assert log["extraction"]["rejected"][0]["text"] == "Ana works at a company called Oceanix."
    assert log["extraction"]["keys"] == ["sister job"]


def test_an_extractor_that_raises_shows_in_problems_html_and_log(chat):
    def broken(messages, n, **kw):
        raise RuntimeError("CUDA out of memory (scripted)")

    chat.extractor_llm = broken
    turn = chat.send("I fly to Quito on 12 March for a conference.")
    assert any("CUDA out of memory" in p for p in turn.problems)
    assert "CUDA out of memory" in turn.to_html()
    log = json.loads(chat.log_path.read_text().splitlines()[-1])
    assert any("CUDA out of memory" in p for p in log["problems"])
    assert chat.memory.get(turn.episodic_id).text == turn.user  # the message itself is kept


def test_a_newer_statement_supersedes_the_older_one(chat):
    chat.extractor_llm = lambda m, n, **kw: '{"memory list": [], "summary": ""}'
    old = chat.send("I live in Lisbon, near the river.")
    chat.send("My favourite tea is jasmine.")
    new = chat.send("Big news: I live in Porto now, we moved last month.")
    assert new.superseded == [old.episodic_id]
    top = chat.memory.search("Which city do I live in now?", top_k=3)
    assert "Porto" in top[0].text and all("Lisbon" not in h.text for h in top)
    archived = chat.memory.get(old.episodic_id)
    assert archived.meta["status"] == "archived" and archived.meta["superseded_by"] == new.episodic_id
    assert [h.id for h in chain(chat.memory, new.episodic_id)] == [new.episodic_id, old.episodic_id]
    assert any("Lisbon" in h.text for h in chat.memory.search("Lisbon", top_k=5, include_archived=True))
    assert len(chat.memory) == 3  # nothing deleted


def test_corrections_forget_and_replace(chat):
    chat.extractor_llm = lambda m, n, **kw: '{"memory list": [], "summary": ""}'
    chat.send("My dentist appointment is on 2 May at 10:15.")
    chat.send("My cat is called Pixel.")
    preview = chat.preview_correction("Forget that my dentist appointment is on 2 May")
    assert "dentist" in preview.describe() and preview.applied == []
    forget = chat.send("Forget that my dentist appointment is on 2 May")
    assert forget.correction.applied and "dentist" in forget.answer
    assert all("dentist" not in t for t in chat.memory.items()["text"])
    cat = chat.send("My cat is called Pixel.")
    fix = chat.send("That's wrong, it's Nova.")
    assert fix.correction.new_text == "My cat is called Nova."
    assert chat.memory.get(cat.episodic_id).meta["status"] == "archived"
    assert "Nova" in chat.memory.search("What is my cat called?", top_k=1)[0].text
    assert "correction" in fix.to_html()
    before = len(chat.memory)
    nothing = chat.preview_correction("Forget that")  # bare: the previous turn's memory
    assert nothing.targets and nothing.targets[0].id == fix.correction.applied[-1]
    assert len(chat.memory) == before


def test_corrections_from_the_panel(chat):
    from magistral_kit.notebook import panel as ui

    chat.extractor_llm = lambda m, n, **kw: '{"memory list": [], "summary": ""}'
    panel = ui.chat_panel(chat)
    panel.widget()
    chat.remember("My gym locker code is 4719.")
    panel._w["input"].value = "That's wrong, it's 5820."
    panel._w["button"].click()
    assert panel.error is None
    assert "memory correction (applied)" in panel._w["diagnostics"].value
    assert "5820" in panel._w["diagnostics"].value
    assert "5820" in chat.memory.search("What is my locker code?", top_k=1)[0].text


def test_unconstrained_extractor_gets_room_for_a_reasoning_trace(tiny_mistral_dir, tmp_path, monkeypatch):
    from magistral_kit.chat import session

    seen = []
    real = session.generate_reply

    def spy(lm, messages, config, max_new_tokens=None, on_text=None):
        seen.append((messages, max_new_tokens))
        return real(lm, messages, config, max_new_tokens=4, on_text=on_text)

    config = KitConfig(model=str(tiny_mistral_dir), quantization="none", device="cpu", temperature=0.0,
                       max_new_tokens=4096, extraction_constrained=False, extraction_max_new_tokens=64,
                       cube_dir=str(tmp_path / "cube"))
    with open_chat(config, progress=False) as c:
        monkeypatch.setattr(session, "generate_reply", spy)
        turn = c.remember("My sister Ana lives in Lisbon.")
    (messages, cap), = seen
    assert cap == 2048  # a tekken (Magistral) model reasons before its JSON: more than the 64-token cap
    assert messages[0]["role"] == "system" and "Ana" in messages[-1]["content"]
    assert turn.extraction.path in ("invalid", "empty", "json")
