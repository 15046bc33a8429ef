"""KitConfig.extract_after_answer: the turn returns before its extraction; nothing is lost or out of order."""
import json
import threading

from magistral_kit.chat.session import open_chat
from magistral_kit.config import KitConfig


def _doc(value: str) -> str:
    return json.dumps({"memory list": [{"key": "k", "memory_type": "UserMemory", "value": value, "tags": []}],
                       "summary": ""})


def test_turn_returns_pending_then_extraction_completes_in_order(tmp_path):
    chat = open_chat(KitConfig(cube_dir=str(tmp_path / "cube"), max_new_tokens=4, extract_after_answer=True),
                     progress=False)
    release = threading.Event()
    seen: list[str] = []

    def slow_extractor(messages, n, **kw):
        seen.append(kw.get("user_text", ""))
        assert release.wait(60)
        return _doc(kw["user_text"].rstrip("."))

    chat.extractor_llm = slow_extractor
    changed = []
    first = chat.send("My sister Ana works as a marine biologist in Lisbon.")
    first.on_change.append(changed.append)
    # the reply and the verbatim message are there; the extraction is not yet
    assert first.extraction_state == "pending" and first.extraction is None and first.episodic_id
    assert "pending" in first.to_html()
    assert chat.memory.get(first.episodic_id).text == first.user
    release.set()
    second = chat.send("I moved to Porto in May.")  # waits for the first extraction before anything else
    assert "wait for extraction" in second.timings.steps
    assert first.extraction_state == "done" and first.extraction.path == "json" and changed == [first]
    assert [i.text for i in first.extraction.items] == ["My sister Ana works as a marine biologist in Lisbon"]
    assert len(first.stored_ids) == 2  # the message and its grounded item
    chat.close()  # waits for the second one
    assert second.extraction_state == "done" and len(second.stored_ids) == 2
    assert seen == [first.user, second.user]
    log = [json.loads(line) for line in chat.log_path.read_text().splitlines()]
    assert [(r["id"], r["extraction_state"]) for r in log] == [
        (first.id, "pending"), (first.id, "done"), (second.id, "pending"), (second.id, "done")]
    assert log[1]["stored_ids"] == first.stored_ids


def test_a_failing_background_extraction_keeps_the_message_and_says_why(tmp_path):
    chat = open_chat(KitConfig(cube_dir=str(tmp_path / "cube"), max_new_tokens=4, extract_after_answer=True),
                     progress=False)

    def broken(messages, n, **kw):
        raise RuntimeError("extractor exploded")

    chat.extractor_llm = broken
    turn = chat.send("My cat is called Pixel.")
    chat.wait()
    assert turn.extraction_state == "done" and turn.extraction.path == "error"
    assert any("extractor exploded" in p for p in turn.problems)
    assert [h.text for h in chat.memory.search("cat", top_k=1)] == ["My cat is called Pixel."]
    questions = chat.send("Which city do I live in?")  # nothing to extract: not sent to the background
    assert questions.extraction_state == "" and questions.extraction.path == "skipped"
    chat.close()
