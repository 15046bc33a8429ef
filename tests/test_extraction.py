"""Extraction: strict MemOS JSON, reasoning removed, nothing salvaged, every item checked for grounding."""
import json

import pytest

from magistral_kit.memory.extraction import (
    SCHEMA_FILE, extract, extraction_messages, parse_output, schema, schema_for,
)

USER = "My sister Ana moved to Lisbon in May 2025 and works as a marine biologist."


def doc(*values, key="sister", tags=("family",)):
    return json.dumps({"memory list": [{"key": key, "memory_type": "UserMemory", "value": v, "tags": list(tags)}
                                       for v in values], "summary": "The user's sister moved."})


def test_the_committed_schema_is_memos_shape():
    s = schema()
    assert s["required"] == ["memory list", "summary"]
    item = s["properties"]["memory list"]["items"]
    assert set(item["required"]) == {"key", "memory_type", "value", "tags"}
    assert set(item["properties"]["memory_type"]["enum"]) == {"UserMemory", "LongTermMemory"}
    assert SCHEMA_FILE.name == "extraction_schema.json"


@pytest.mark.parametrize("wrap", [lambda d: d, lambda d: "<think>the user said a lot</think>" + d,
                                  lambda d: "[THINK]Let me extract.[/THINK]" + d])
def test_json_path_keeps_grounded_items_with_key_and_tags(wrap):
    result = parse_output(wrap(doc("Ana moved to Lisbon in May 2025.")), USER)
    assert result.path == "json" and [i.text for i in result.items] == ["Ana moved to Lisbon in May 2025."]
    assert result.items[0].key == "sister" and result.items[0].tags == ["family"]
    assert result.records(["s-t1"])[0]["meta"] == {"key": "sister", "memory_type": "UserMemory", "tags": ["family"]}


def test_ungrounded_items_are_rejected_with_the_reason():
    result = parse_output(doc("Ana moved to Lisbon in May 2025.", "The user's sister works at Google in Madrid."),
                          USER)
    assert [i.text for i in result.items] == ["Ana moved to Lisbon in May 2025."]
    assert [i.text for i in result.rejected] == ["The user's sister works at Google in Madrid."]
    assert "Google" in result.rejected[0].verdict.reason and "Madrid" in result.rejected[0].verdict.reason


@pytest.mark.parametrize("output", [
    '{"memory list": [{"key": "sister", "value": "My sister works at a company called',  # cut: no salvage
    "I'm sorry for your loss, but as a memory-based AI I cannot",
    "```json\n" + doc("Ana moved to Lisbon.") + "\n```",  # not the schema's bare JSON: nothing repaired
    "", "null", "[]", '{"memories": []}',
])
def test_anything_but_the_schema_json_extracts_nothing(output):
    result = parse_output(output, USER)
    assert result.path == "invalid" and result.items == [] and result.rejected == []


def test_empty_memory_list_is_the_empty_path():
    result = parse_output('{"memory list": [], "summary": ""}', "Hello!")
    assert result.path == "empty" and result.items == []


def test_extractor_that_raises_gives_the_error_path():
    def broken(messages, n):
        raise RuntimeError("CUDA out of memory")

    result = extract(USER, broken, 64)
    assert result.path == "error" and "CUDA out of memory" in result.error and result.items == []
    assert extract(USER, lambda m, n: None, 64).path == "error"


def test_extractor_sees_only_the_user_message_and_the_cap():
    seen = []
    extract(USER, lambda m, n: seen.append((m, n)) or doc("Ana moved to Lisbon."), 77)
    (messages, cap), = seen
    assert cap == 77 and messages == extraction_messages(USER)
    assert USER in messages[-1]["content"] and "assistant" not in json.dumps(messages).lower()


@pytest.mark.parametrize("message, items", [
    ("My sister Ana works as a marine biologist in Lisbon.", 1),
    ("I quit coffee in January. My dog Rex turned 5 last week. I live in Porto.", 2),  # the committed cap
    ("Which city do I live in?", 1),
    ("Hi! I moved to Oslo. What should I see first?", 1),
])
def test_schema_for_allows_one_item_per_stated_sentence(message, items):
    s = schema_for(message)
    assert s["properties"]["memory list"]["maxItems"] == items
    assert schema()["properties"]["memory list"]["maxItems"] == 2  # the committed schema is untouched


def test_the_extractors_token_count_reaches_the_extraction():
    class Result:
        text = doc("Ana moved to Lisbon in May 2025.")
        tokens_out = 42

    ex = extract(USER, lambda m, n: Result())
    assert ex.path == "json" and ex.tokens_out == 42 and ex.to_dict()["tokens_out"] == 42
    assert "42 tokens" in ex._repr_html_()
    assert extract(USER, lambda m, n: doc("Ana moved to Lisbon.")).tokens_out is None
