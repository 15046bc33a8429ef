"""One reply budget: context budget (clamped to the window) minus the prompt, at most max_new_tokens.

The same prompt goes through plain generate and the fast decode loop (its eager CPU variant); a scripted
model (tests/scripted.py) makes both emit the same tokens, so the length and the stop reason must agree.
"""
from __future__ import annotations

import pytest

from scripted import Scripted
from magistral_kit.chat.prompt import build_prompt
from magistral_kit.config import KitConfig
from magistral_kit.model import generation
from magistral_kit.model.generation import generate_reply, reply_limit
from magistral_kit.model.loading import load_model


@pytest.fixture()
def v7_config(magistral_dirs):
    return KitConfig(model=str(magistral_dirs("v7")), quantization="nf4", device="cpu", temperature=0.0)


def both_paths(lm, cfg, messages, script, monkeypatch):
    replies = {}
    for path in ("generate", "eager"):
        with monkeypatch.context() as m:
            if path == "eager":
                m.setattr(generation, "fast_mode", lambda lm, config: "eager")
            with Scripted(lm, lambda prompt: script):
                replies[path] = generate_reply(lm, messages, cfg)
    assert replies["generate"].path == "generate" and replies["eager"].path == "eager"
    return replies["generate"], replies["eager"]


@pytest.mark.parametrize("max_new, script_len, stopped", [
    (4096, 1000, "budget"),            # the context budget leaves fewer tokens than max_new_tokens
    (30, 1000, "max_new_tokens"),      # max_new_tokens is the tighter bound
    (4096, 5, "eos"),                  # the model ends its reply itself
])
def test_both_decode_paths_give_the_same_length_and_stop_reason(v7_config, monkeypatch, max_new, script_len,
                                                                 stopped):
    cfg = v7_config.replace(context_budget=256, max_new_tokens=max_new)
    lm = load_model(cfg, progress=False)
    plan = build_prompt(lm, cfg, "How far is the moon?", [], [])
    limit, bound = reply_limit(lm, cfg, plan.tokens)
    assert plan.reply_reserve == limit == min(max_new, 256 - plan.tokens)  # "kept for the reply" is the limit
    plain, fast = both_paths(lm, cfg, plan.messages, [ord("a")] * script_len, monkeypatch)
    expected_len = script_len + 1 if stopped == "eos" else limit
    for reply in (plain, fast):
        assert reply.stopped == stopped and reply.tokens_out == expected_len and reply.limit == limit
        assert reply.tokens_in == plan.tokens
    assert plain.raw == fast.raw
    from magistral_kit.model.fast_decode import current_runner

    assert current_runner(lm.model).cache_len >= plan.tokens + limit  # the fast path's cache holds prompt + limit
    assert "kept for the reply" in plan.to_html() and f"({limit:,} kept for the reply)" in plan.to_html()


def test_the_window_clamps_the_budget(v7_config):
    lm = load_model(v7_config, progress=False)
    cfg = v7_config.replace(context_budget=10 * lm.context_window, max_new_tokens=10 * lm.context_window)
    assert reply_limit(lm, cfg, 100) == (lm.context_window - 100, "budget")
    assert reply_limit(lm, cfg.replace(max_new_tokens=50), 100) == (50, "max_new_tokens")


def test_a_prompt_that_fills_the_budget_is_refused_clearly(v7_config):
    cfg = v7_config.replace(context_budget=256)
    lm = load_model(cfg, progress=False)
    with pytest.raises(ValueError, match="no room for a reply.*Fix"):
        generate_reply(lm, [{"role": "user", "content": "x" * 300}], cfg)


def test_fast_loop_stopping_at_a_full_cache_reports_the_budget(v7_config, monkeypatch):
    """If the cache step were smaller than prompt + limit, the stop would be the budget, not max_new_tokens."""
    from magistral_kit.model import fast_decode

    cfg = v7_config.replace(context_budget=256, max_new_tokens=4096)
    lm = load_model(cfg, progress=False)
    monkeypatch.setattr(generation, "fast_mode", lambda lm, config: "eager")
    monkeypatch.setattr(fast_decode, "cache_steps_for", lambda budget, steps=(): (120,))
    messages = [{"role": "user", "content": "hi"}]
    with Scripted(lm, lambda prompt: [ord("a")] * 1000):
        reply = generate_reply(lm, messages, cfg)
    assert reply.stopped == "budget" and reply.tokens_out < reply.limit
