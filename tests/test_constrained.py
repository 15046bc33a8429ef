"""Constrained decoding: both libraries, both tokenizers (the embedded model's HF tokenizer and tekken via the
kit's adapter); a finished output always parses and fits the schema."""
import json

import pytest

from magistral_kit.memory.extraction import extraction_messages, schema, schema_for
from magistral_kit.model.constrained import BACKENDS, generate_json, generate_json_batch

SMALL = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 6},
                                          "n": {"type": "integer", "minimum": 0, "maximum": 99}},
         "required": ["city", "n"], "additionalProperties": False}


def check_small(text, strict=True):
    obj = json.loads(text, strict=strict)
    assert set(obj) == {"city", "n"} and len(obj["city"]) <= 6 and 0 <= obj["n"] <= 99


@pytest.mark.parametrize("backend", BACKENDS)
def test_hf_tokenizer_output_fits_the_schema(embedded_lm, backend):
    out = generate_json(embedded_lm, [{"role": "user", "content": "I live in Oslo, flat 12."}], SMALL, 40,
                        backend=backend)
    assert out.stopped == "eos", out.text
    check_small(out.text)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tekken_tokenizer_works_through_the_adapter(tiny_config, backend):
    from magistral_kit.model.loading import load_model

    lm = load_model(tiny_config, progress=False)
    assert lm.tokenizer_kind == "tekken"
    out = generate_json(lm, [{"role": "user", "content": "I live in Oslo."}], SMALL, 60, backend=backend)
    assert out.stopped == "eos", out.text  # random weights, yet the schema closes the object
    check_small(out.text, strict=True)


def test_the_extraction_schema_on_the_tekken_model_parses(tiny_config):
    from magistral_kit.model.loading import load_model

    lm = load_model(tiny_config, progress=False)
    out = generate_json(lm, extraction_messages("My sister Ana lives in Lisbon."), schema(), 400)
    if out.stopped == "eos":
        obj = json.loads(out.text)
        assert isinstance(obj["memory list"], list) and isinstance(obj["summary"], str)
    else:  # the cap cut it: not JSON, and the parser says so (never salvaged)
        from magistral_kit.memory.extraction import parse_output

        assert parse_output(out.text, "My sister Ana lives in Lisbon.").path == "invalid"


def test_batch_rows_finish_independently(tiny_config):
    from magistral_kit.model.loading import load_model

    lm = load_model(tiny_config, progress=False)
    outs = generate_json_batch(lm, [[{"role": "user", "content": m}] for m in ("Oslo", "I live in Rome now.")],
                               SMALL, 60)
    for out in outs:
        assert out.stopped == "eos"
        check_small(out.text)


def test_the_chats_extractor_on_the_tekken_model_uses_the_schema_for_the_message(tiny_config, tmp_path):
    """Chat.extractor_llm on a Magistral-format (tekken) model: the per-message schema (one item for a
    one-sentence statement) is what constrains the output, and its token count comes back with the text."""
    from magistral_kit.chat.session import open_chat
    from magistral_kit.memory.extraction import parse_output

    message = "My sister Ana lives in Lisbon."
    assert schema_for(message)["properties"]["memory list"]["maxItems"] == 1
    chat = open_chat(tiny_config.replace(cube_dir=str(tmp_path / "cube")), progress=False)
    out = chat.extractor_llm(extraction_messages(message), 400, user_text=message)
    chat.close()
    assert out.tokens_out >= 1 and isinstance(out.text, str)
    if out.stopped == "eos":  # random weights, but the schema closes the object: at most one item
        assert len(json.loads(out.text)["memory list"]) <= 1
    else:
        assert parse_output(out.text, message).path == "invalid"
