"""Extraction never crashes: the three paths, the prompt's example filter, and a 1,000-output fuzz that also
checks each turn's items are stored all-or-nothing. The LLM is a scripted callable (a double for model OUTPUT)."""
from __future__ import annotations

import hashlib
import json
import random
import re

import numpy as np
import pytest

from magistral_kit.memory.extraction import Extraction, example_texts, extract, is_example_copy
from magistral_kit.memory.cube import CubeError, open_memory

USER = "My sister Ana moved to Lisbon last May."
CONV = [{"role": "user", "content": USER}, {"role": "assistant", "content": "How exciting for her!"}]


def item(value, key="Sister moved", tags=("family",)):
    return {"key": key, "memory_type": "UserMemory", "value": value, "tags": list(tags)}


def doc(*values) -> str:
    return json.dumps({"memory list": [item(v) for v in values], "summary": "The user talked about Ana."})


GOOD = doc("The user's sister Ana moved to Lisbon in May 2025.", "The user is excited for Ana.")
EXAMPLE_VALUE = ("On June 25, 2025 at 3:00 PM, Tom held a meeting with their team to discuss a new project. The "
                 "conversation covered the timeline and raised concerns about the feasibility of the December 15, "
                 "2025 deadline.")


def run(output: str) -> Extraction:
    return extract(CONV, lambda messages, n: output, 128)


@pytest.mark.parametrize("output,path,texts", [
    (GOOD, "json", ["The user's sister Ana moved to Lisbon in May 2025.", "The user is excited for Ana."]),
    ("<think>She said Ana moved. {maybe}</think>\n" + GOOD, "json",
     ["The user's sister Ana moved to Lisbon in May 2025.", "The user is excited for Ana."]),
    ("[THINK]Let me extract.[/THINK]```json\n" + doc("Ana lives in Lisbon.") + "\n```", "salvaged",
     ["Ana lives in Lisbon."]),
    ("Here are the memories:\n" + doc("Ana lives in Lisbon.") + "\nLet me know!", "salvaged", ["Ana lives in Lisbon."]),
    (GOOD[:GOOD.index("The user is excited") + 10], "salvaged", ["The user's sister Ana moved to Lisbon in May 2025."]),
    ('{"memory list": [{"value": "Ana lives in Lisbon.", "tags": ["a",],},],}', "salvaged", ["Ana lives in Lisbon."]),
    ('{"memories": [{"text": "Ana lives in Lisbon."}]}', "salvaged", ["Ana lives in Lisbon."]),
    ('{"memory list": [{"value": 42}, {"value": ["x"]}, {"value": "Ana lives in Lisbon.", "tags": "x"}]}',
     "salvaged", ["Ana lives in Lisbon."]),
    ("<think>The JSON is {\"memory list\": [{\"value\": \"Ana moved in May.\"}", "salvaged", ["Ana moved in May."]),
    ("", "raw", [USER]),
    ("   \n", "raw", [USER]),
    ("The user has a sister.", "raw", [USER]),
    ('{"memory list": "none"}', "raw", [USER]),
    ('{"memory list": [], "summary": ""}', "json", []),
    ("<think>only reasoning, cut off before any answer", "raw", [USER]),
    ("{'memory list': [{'key': 'k', 'value': 'Ana lives in Lisbon.'}]}", "salvaged", ["Ana lives in Lisbon."]),
])
def test_paths(output, path, texts):
    result = run(output)
    assert (result.path, [i.text for i in result.items]) == (path, texts), result.notes
    assert result.model_output == output and result.seconds >= 0
    assert all(i.kind == ("raw" if path == "raw" else "extracted") for i in result.items)


def test_items_copied_from_the_prompt_example_are_dropped():
    assert len(example_texts()) >= 4
    verbatim = run(doc(EXAMPLE_VALUE))
    assert verbatim.path == "raw" and [i.text for i in verbatim.items] == [USER]
    assert any("copied from the prompt's example" in n for n in verbatim.notes)
    near = EXAMPLE_VALUE.replace("Tom", "Tom Smith").replace("3:00 PM", "3 PM")
    mixed = run(doc(near, "Ana lives in Lisbon."))
    assert mixed.path == "salvaged" and [i.text for i in mixed.items] == ["Ana lives in Lisbon."]
    assert any("1 item(s) dropped: copied" in n for n in mixed.notes)
    assert not is_example_copy("The user's team meeting about the new website is on Friday.")
    assert not is_example_copy("The user recommended a book about focus to a friend.")


def test_extractor_that_raises_or_returns_nothing_gives_raw():
    def broken(messages, n):
        raise RuntimeError("CUDA out of memory")

    result = extract(CONV, broken, 64)
    assert result.path == "raw" and result.items[0].text == USER and "CUDA out of memory" in result.notes[0]
    result = extract(CONV, lambda m, n: None, 64)
    assert result.path == "raw" and result.model_output == ""
    assert extract([{"role": "assistant", "content": "hi"}], lambda m, n: "", 64).items == []


def test_prompt_is_memos_template_and_output_cap_is_passed():
    seen = []
    extract(CONV, lambda m, n: seen.append((m, n)) or GOOD, 77)
    (messages, cap), = seen
    assert cap == 77 and messages[0]["role"] == "user"
    assert "memory extraction expert" in messages[0]["content"] and f"user:{USER}" in messages[0]["content"]
    assert "${conversation}" not in messages[0]["content"]


def test_records_and_html():
    result = run(GOOD)
    recs = result.records(["s1-t3"], {"session": "s1"})
    assert recs[0] == {"text": "The user's sister Ana moved to Lisbon in May 2025.", "kind": "extracted",
                       "source": ["s1-t3"], "meta": {"session": "s1", "key": "Sister moved",
                                                      "memory_type": "UserMemory", "tags": ["family"]}}
    html = result._repr_html_()
    assert "json" in html and "Lisbon" in html and "model output" in html
    assert "&lt;think&gt;" in run("<think>x</think>" + GOOD)._repr_html_()


# --- fuzz --------------------------------------------------------------------------------------------
FACTS = ["The user's sister Ana moved to Lisbon.", "The user adopted a grey cat named Miso.",
         "The user runs 10 km every Sunday morning.", "The user is allergic to peanuts.",
         "The user works night shifts at the hospital.", "The user plans to visit Kyoto in April 2026.",
         "Ana said \"hello\" in Portuguese — olá!", "The user's favourite dish is bacalhau à brás."]


def malformed(rng: random.Random) -> str:
    values = rng.sample(FACTS, rng.randint(1, 4))
    if rng.random() < 0.15:
        values.insert(rng.randrange(len(values) + 1), rng.choice(example_texts()))
    obj: dict = {"memory list": [item(v) for v in values], "summary": "s"}
    if rng.random() < 0.2:
        obj[rng.choice(["memories", "memory_list", "items", "facts"])] = obj.pop("memory list")
    if rng.random() < 0.2:
        for it in obj.get("memory list", []):
            it[rng.choice(["text", "val", "memory", "content"])] = it.pop("value")
    if rng.random() < 0.2:
        for it in obj.get("memory list", []):
            it["value"] = rng.choice([None, 7, ["x"], {"v": 1}, "", it.get("value")])
            it["tags"] = rng.choice([None, "tag", [1, 2], ["ok"]])
    text = json.dumps(obj, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 2]))
    for _ in range(rng.randint(1, 3)):
        m = rng.randrange(13)
        if m == 0:
            text = text[:rng.randrange(len(text) + 1)]
        elif m == 1:
            text = "<think>" + rng.choice(["", "Let me think {", "the user said \"x\"", "{\"memory list\": ["]) + \
                   "</think>" + text
        elif m == 2:
            text = "[THINK]" + rng.choice(["", "reasoning ]]", "{"]) + rng.choice(["[/THINK]", ""]) + text
        elif m == 3:
            text = "```json\n" + text + rng.choice(["\n```", ""])
        elif m == 4:
            text = rng.choice(["Sure! ", "Here you go:\n", "I extracted: "]) + text + rng.choice(["", " Done.", "\n}"])
        elif m == 5:
            text = text.replace("}", "},", rng.randint(1, 3)).replace("]", ",]", 1)
        elif m == 6:
            text = rng.choice(["", " ", "null", "[]", "{}", "{{{{", "]]]", "nothing to extract", "\x00\ufffd",
                               "<think>", "[/THINK]", "{\"memory list\": null}", "\"memory list\""])
        elif m == 7:
            text = text.replace('"', "'")
        elif m == 8:
            cut = sorted(rng.sample(range(len(text) + 1), min(2, len(text) + 1)))
            text = text[:cut[0]] + text[cut[-1]:]
        elif m == 9:
            text = text + text
        elif m == 10:
            text = "<think>" + text  # answer lost inside an unclosed reasoning block
        elif m == 11:
            text = "".join(rng.choice("{}[]\",:abc \n") for _ in range(rng.randint(0, 80)))
        else:
            text = json.dumps(obj.get("memory list", []))
    return text


def canon(text: str) -> str:
    """Letters and digits only, \\uXXXX escapes decoded: compares an item with the raw output it came from."""
    text = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)
    return re.sub(r"[\W_]", "", text.lower())


class HashEmbedder:
    """Deterministic unit vectors: the fuzz checks storage, not semantics, and must stay fast on 2 cores."""

    name, dimension = "embedded", 384

    def encode(self, texts, batch_size=64):
        rows = [np.frombuffer(hashlib.sha512(t.encode()).digest() * 6, dtype=np.uint8)[:384].astype(np.float32) + 1
                for t in texts]
        out = np.stack(rows) if rows else np.zeros((0, 384), np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_fuzz_1000_malformed_outputs_never_raise_and_store_all_or_nothing(tmp_path):
    rng = random.Random(20261125)
    mem = open_memory(tmp_path / "fuzz")
    mem.embedder = HashEmbedder()
    vecdb = mem._text_mem.vector_db
    real_add, real_append = type(vecdb).add, mem._journal.append
    paths = {"json": 0, "salvaged": 0, "raw": 0}
    expected: dict[str, str] = {}
    failures = 0
    for n in range(1000):
        output = malformed(rng)
        result = run(output)  # must not raise
        paths[result.path] += 1
        assert result.path in paths
        for it in result.items:
            assert it.text.strip() and not is_example_copy(it.text)
            if result.path == "raw":
                assert it.text == USER and it.kind == "raw"
            else:  # nothing invented: every item's text is in the output (maybe JSON-escaped)
                assert it.kind == "extracted"
                assert canon(it.text) in canon(output), (output, it.text)
        records = result.records([f"s1-t{n}"])
        fault = rng.random()
        before = len(mem)
        if fault < 0.05 and records:  # the index fails mid-batch
            calls = []

            def flaky_add(self, data, calls=calls):
                calls.append(1)
                if len(calls) > 0:
                    raise ValueError("injected index failure")
                return real_add(self, data)

            type(vecdb).add = flaky_add
        elif fault < 0.10 and records:  # the disk fails while the journal line is written
            def torn(op):
                raise OSError(5, "injected I/O error")

            mem._journal.append = torn
        try:
            ids = mem.add_many(records)
            for i, rec in zip(ids, records):
                expected[i] = rec["text"]
            assert len(mem) == before + len(records)
        except (CubeError, OSError):
            failures += 1
            assert len(mem) == before  # none of the turn's items
        finally:
            type(vecdb).add = real_add
            mem._journal.append = real_append
    assert min(paths.values()) >= 10 and failures > 20, (paths, failures)
    assert {r["text"] for r in mem._records.values()} == set(expected.values())
    assert vecdb.count() == len(mem)
    mem.close()
    again = open_memory(tmp_path / "fuzz")
    try:
        assert {i: r["text"] for i, r in again._records.items()} == expected
        assert not any("rebuilt" in n or "torn" in n for n in again.notes), again.notes
    finally:
        again.close()
