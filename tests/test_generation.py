"""Reasoning split on Magistral-format outputs, and replies from real models (embedded and tiny NF4)."""

from magistral_kit.model.generation import generate_reply, split_reasoning

COMPLETE = "<think>\nThe user asks 2+2. That is 4.\n</think>\n\nThe answer is **4**."
UNTERMINATED = "<think>\nLet me consider the user's question carefully. First, the capital"
TEMPLATE_OPENED = "so the user wants a haiku.\n</think>\nAutumn leaves fall"
CONTROL_TOKENS = "[THINK]short plan[/THINK]Done."


def test_split_complete_reasoning():
    assert split_reasoning(COMPLETE) == ("The user asks 2+2. That is 4.", "The answer is **4**.", True)


def test_split_unterminated_reasoning_gives_no_answer():
    thinking, answer, complete = split_reasoning(UNTERMINATED)
    assert answer == "" and not complete and thinking.startswith("Let me consider")


def test_split_absent_reasoning_is_all_answer():
    assert split_reasoning("  Paris.  ") == ("", "Paris.", True)


def test_split_close_marker_only_and_control_tokens():
    assert split_reasoning(TEMPLATE_OPENED) == ("so the user wants a haiku.", "Autumn leaves fall", True)
    assert split_reasoning(CONTROL_TOKENS) == ("short plan", "Done.", True)


def test_embedded_model_answers_a_chat_message(embedded_lm, embedded_config):
    pieces = []
    reply = generate_reply(embedded_lm, [{"role": "user", "content": "What is the capital of France?"}],
                           embedded_config, on_text=pieces.append)
    assert "Paris" in reply.answer
    assert reply.stopped == "eos" and 0 < reply.tokens_out < embedded_config.max_new_tokens
    assert "".join(pieces).strip() == reply.raw.strip()  # streamed text is the reply


def test_attention_mask_reaches_the_model(embedded_lm, embedded_config):
    seen = []

    def hook(module, args, kwargs):
        seen.append(kwargs.get("attention_mask"))

    handle = embedded_lm.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        generate_reply(embedded_lm, [{"role": "user", "content": "Hi"}], embedded_config, max_new_tokens=3)
    finally:
        handle.remove()
    assert seen and all(m is not None for m in seen)
    assert seen[0].shape[-1] > 1 and bool(seen[0].all())


def test_tiny_mistral_nf4_produces_tokens_on_cpu(tiny_config):
    from magistral_kit.model.loading import load_model

    lm = load_model(tiny_config, progress=False)
    assert lm.quantization == "nf4" and lm.device == "cpu" and lm.tokenizer_kind == "tekken"
    assert any(type(m).__name__ == "Linear4bit" for m in lm.model.modules())
    reply = generate_reply(lm, [{"role": "user", "content": "Hello"}], tiny_config)
    assert reply.tokens_out == tiny_config.max_new_tokens and reply.stopped == "max_new_tokens"
    assert reply.raw
