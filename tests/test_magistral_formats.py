"""Magistral's own chat formats, through the real tokenizer / formatting / decoding path.

Tiny random Mistrals carry generated tekken tokenizers of the versions Magistral checkpoints ship (v7 for
2506, v11 / v13 for later releases) and a SYSTEM_PROMPT.txt; `tests/scripted.py` makes the model emit chosen
tokens. Many turns per version: a complete reasoning trace, a trace cut by the token limit, an immediate end
of sequence, memories in the prompt, extraction. The rule under test: an empty answer never becomes an empty
assistant message (mistral-common raises InvalidAssistantMessageException on one, which killed the chat).
"""
from __future__ import annotations

import json

import pytest

from conftest import SYSTEM_PROMPT_FILE
from scripted import Scripted, ids_of
from magistral_kit.chat.session import open_chat
from magistral_kit.config import KitConfig
from magistral_kit.model.loading import load_model

VERSIONS = ["v7", "v11", "v13"]
MAX_NEW = 120


def think(version: str, text: str, close: bool = True) -> list[str]:
    """A reasoning trace as the version writes it: <think> text for 2506 (v7), [THINK] tokens later."""
    if version == "v7":
        return ["<think>", text] + (["</think>"] if close else [])
    return ["[THINK]", text] + (["[/THINK]"] if close else [])


def config_for(folder, tmp_path, **kw) -> KitConfig:
    base = dict(model=str(folder), quantization="none", device="cpu", temperature=0.0, max_new_tokens=MAX_NEW,
                cube_dir=str(tmp_path / "cube"), extraction_max_new_tokens=400,
                # the scripted model writes the extractor's JSON itself; the schema-constrained decoder on tekken
                # is tested in tests/test_constrained.py
                extraction_constrained=False)
    return KitConfig(**{**base, **kw})


@pytest.mark.parametrize("version", VERSIONS)
def test_tokenizer_has_the_versions_markers(magistral_dirs, tmp_path, version):
    lm = load_model(config_for(magistral_dirs(version), tmp_path), progress=False)
    inner = lm.tokenizer.instruct_tokenizer.tokenizer
    assert str(inner.version) == version and lm.model.config.vocab_size == inner.n_words
    assert inner.get_special_token("[SYSTEM_PROMPT]") >= 0
    if version == "v7":
        with pytest.raises(Exception):
            inner.get_special_token("[THINK]")
    else:
        assert inner.get_special_token("[THINK]") != inner.get_special_token("[/THINK]")
    assert lm.system_prompt == SYSTEM_PROMPT_FILE


@pytest.mark.parametrize("version", VERSIONS)
def test_many_turns_through_each_version(magistral_dirs, tmp_path, version):
    cfg = config_for(magistral_dirs(version), tmp_path)
    chat = open_chat(cfg, progress=False)
    lm = chat.lm
    script = {  # matched in this order against the newest user message
        "Where": think(version, "A memory says Lisbon.") + ["Ana lives in Lisbon."],
        "Ana": think(version, "The user states a fact about Ana.") + ["Noted: Ana lives in Lisbon."],
        "mountains": think(version, " and on" * 200, close=False),  # cut by max_new_tokens
        "silence": [],  # immediate end of sequence
    }

    def respond(prompt: str):
        if "memory list" in prompt:  # the extractor: MemOS's JSON for the first turn, nothing later (raw path)
            if "My sister Ana" not in prompt:
                return []
            return json.dumps({"memory list": [{"key": "fact", "memory_type": "UserMemory",
                                                "value": "Ana lives in Lisbon.", "tags": ["t"]}], "summary": "s"},
                              separators=(",", ":"))  # compact: what the schema-constrained decoder allows
        last = prompt.split("[INST]")[-1]
        key = next(k for k in script if k in last)
        return ids_of(lm, *script[key]) if script[key] else []

    try:
        with Scripted(lm, respond) as s:
            complete = chat.send("My sister Ana lives in Lisbon.")
            cut = chat.send("Tell me about the mountains.")
            empty = chat.send("silence please")
            recall = chat.send("Where does Ana live?")
    finally:
        chat.close()
    chat_prompts = [p for p in s.prompts if "memory list" not in p]
    assert len(chat_prompts) == 4
    # formatting is mistral-common's for the version: system prompt token, the folder's SYSTEM_PROMPT.txt
    assert chat_prompts[0].startswith("<s>[SYSTEM_PROMPT]" + SYSTEM_PROMPT_FILE)
    # 1: a complete trace -> reasoning split from the answer
    assert complete.answer == "Noted: Ana lives in Lisbon." and complete.reply.reasoning_complete
    assert complete.reply.thinking == "The user states a fact about Ana." and complete.reply.stopped == "eos"
    # 2: cut by the token limit -> no answer, the reason is said, nothing empty enters the history
    assert cut.answer == "" and not cut.reply.reasoning_complete
    assert cut.reply.stopped == "max_new_tokens" and cut.reply.tokens_out == MAX_NEW
    assert any("empty answer" in n and "max_new_tokens" in n for n in cut.notes)
    # 3: immediate end of sequence
    assert empty.answer == "" and empty.reply.tokens_out == 1 and empty.reply.stopped == "eos"
    assert any("ended its reply at once" in n for n in empty.notes)
    # 4: the next turn works, sees the answered exchange only, and the memory in its system prompt
    assert recall.answer == "Ana lives in Lisbon." and recall.problems == []
    assert chat.history == [("My sister Ana lives in Lisbon.", "Noted: Ana lives in Lisbon."),
                            ("Where does Ana live?", "Ana lives in Lisbon.")]
    last = chat_prompts[3]
    assert "Noted: Ana lives in Lisbon.</s>" in last
    exchanges = last.split("[/SYSTEM_PROMPT]")[1]
    assert "mountains" not in exchanges and "silence" not in exchanges
    assert recall.retrieved and "Ana lives in Lisbon." in last.split("[/SYSTEM_PROMPT]")[0]
    # extraction ran every turn on the same formatting; the JSON path stored the fact
    assert complete.extraction.path == "json" and complete.stored_ids, str(complete.extraction.to_dict())
    assert complete.extraction.items[0].text == "Ana lives in Lisbon."
    for t in (cut, empty, recall):  # nothing extracted (a request / question is not even tried): the message is kept
        assert t.extraction.path != "json" and t.episodic_id in t.stored_ids and not t.problems
    log = [json.loads(line) for line in chat.log_path.read_text().splitlines()]
    assert [r["answer"] for r in log] == ["Noted: Ana lives in Lisbon.", "", "", "Ana lives in Lisbon."]


@pytest.mark.parametrize("version", VERSIONS)
def test_an_empty_answer_never_becomes_an_assistant_message(magistral_dirs, tmp_path, version):
    """The exact failure: before the fix, every turn after a cut trace raised InvalidAssistantMessageException."""
    from mistral_common.exceptions import InvalidAssistantMessageException, TokenizerException

    from magistral_kit.chat.prompt import build_prompt

    lm = load_model(config_for(magistral_dirs(version), tmp_path), progress=False)
    with pytest.raises((InvalidAssistantMessageException, TokenizerException), match="ssistant message"):
        lm.encode_chat([{"role": "user", "content": "a"}, {"role": "assistant", "content": ""},
                        {"role": "user", "content": "b"}])
    plan = build_prompt(lm, config_for(magistral_dirs(version), tmp_path), "next",
                        [("first", "an answer"), ("cut", ""), ("blank", "  ")], [])
    assert [m["content"] for m in plan.messages[1:]] == ["first", "an answer", "next"]
    assert plan.exchanges_kept == 1
