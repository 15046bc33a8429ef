"""The prompt of one turn: system prompt with memories, the recent exchanges, and the token budget.

The budget is enforced by counting the tokens the model will really see (`LoadedModel.encode_chat`), not by
estimating characters. What does not fit is dropped in a fixed order and reported: the oldest exchanges
first, then the lowest-scored memories, until the prompt leaves the reply at least
``min(max_new_tokens, budget // 2)`` tokens. What the reply may then use is `generation.reply_limit`: the
budget minus the prompt, at most max_new_tokens; the plan's "kept for the reply" is exactly that limit.

Exchanges whose answer is empty (a reasoning trace cut by the token limit, an immediate end of sequence) are
never put in the prompt: mistral-common rejects an empty assistant message, and an empty reply teaches the
model nothing. The chat keeps such exchanges out of its history too (`Chat.send`).
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Sequence

from magistral_kit.config import KitConfig
from magistral_kit.model.generation import context_budget, reply_limit

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer the user's message concisely."
MEMORY_HEADER = ("What you remember about the user from earlier conversations (most relevant first; use a "
                 "memory only if it helps answer):")


class PromptTooLongError(ValueError):
    """Even with no history and no memories, the message does not fit the context budget."""


@dataclass
class PromptPlan:
    """The messages sent to the model and what the budget cut."""

    messages: list[dict]
    tokens: int
    budget: int
    reply_reserve: int  # the reply's limit: min(max_new_tokens, budget - tokens)
    memories: list[Any]
    exchanges_kept: int
    exchanges_dropped_for_window: int = 0
    exchanges_dropped_for_budget: int = 0
    memories_dropped: list[Any] = field(default_factory=list)

    @property
    def trimmed(self) -> str:
        parts = []
        if self.exchanges_dropped_for_window:
            parts.append(f"{self.exchanges_dropped_for_window} exchange(s) beyond the history window")
        if self.exchanges_dropped_for_budget:
            parts.append(f"{self.exchanges_dropped_for_budget} oldest exchange(s) for the token budget")
        if self.memories_dropped:
            parts.append(f"{len(self.memories_dropped)} lowest-scored memory(ies) for the token budget")
        return "; ".join(parts) or "nothing"

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "budget": self.budget, "reply_reserve": self.reply_reserve,
                "exchanges_kept": self.exchanges_kept,
                "exchanges_dropped_for_window": self.exchanges_dropped_for_window,
                "exchanges_dropped_for_budget": self.exchanges_dropped_for_budget,
                "memories_dropped": [m.id for m in self.memories_dropped]}

    def to_html(self) -> str:
        return (f"<div>prompt: <b>{self.tokens:,}</b> tokens of a {self.budget:,}-token budget "
                f"({self.reply_reserve:,} kept for the reply); {self.exchanges_kept} exchange(s) and "
                f"{len(self.memories)} memory(ies) included; trimmed: {html.escape(self.trimmed)}</div>")


def system_prompt_with_memories(base: str | None, memories: Sequence[Any]) -> str:
    """The system prompt, with the retrieved memories appended as a list (none: the base alone)."""
    text = base or DEFAULT_SYSTEM_PROMPT
    if not memories:
        return text
    lines = "\n".join(f"- {m.text}" for m in memories)
    return f"{text}\n\n{MEMORY_HEADER}\n{lines}"


# --- where the memories sit (bench/answer_use.py measures the choices) -----------------------------------
USER_MEMORY_HEADER = "Notes of what I told you before:"
# asking for a brief answer from the notes: on the embedded model it answered from memory more often than a
# bare "Now: <message>" (bench/answer_use.py; README's answer-use table)
USER_MEMORY_ASK = "Using these notes, answer briefly:"


def memory_placement(config: KitConfig, lm: Any) -> str:
    """'system' (a list in the system prompt) or 'user' (quoted just before the message, in the user's
    voice). 'auto': 'user' for chat-template (HF) models — on the embedded model it answered from memory at
    least as often as 'system' (bench/results/answer_use*.json) — and 'system' for Magistral (tekken, every
    version), whose SYSTEM_PROMPT.txt expects context there and which has not been measured yet."""
    choice = getattr(config, "memory_placement", "auto")
    if choice != "auto":
        return choice
    return "system" if getattr(lm, "tokenizer_kind", "hf") == "tekken" else "user"


def user_message_with_memories(user_text: str, memories: Sequence[Any]) -> str:
    """The user's message preceded by the memories in the user's own voice (what they said, when)."""
    if not memories:
        return user_text
    lines = "\n".join(f"- {_said(m)}" for m in memories)
    return f"{USER_MEMORY_HEADER}\n{lines}\n\n{USER_MEMORY_ASK} {user_text}"


def _said(memory: Any) -> str:
    meta = getattr(memory, "meta", {}) or {}
    date = meta.get("date")
    return f"({date}) {memory.text}" if date else memory.text


def build_prompt(lm: Any, config: KitConfig, user_text: str, history: Sequence[tuple[str, str]],
                 memories: Sequence[Any]) -> PromptPlan:
    """Fit system prompt + memories + recent exchanges + the new message into the budget."""
    base = config.system_prompt if config.system_prompt is not None else lm.system_prompt
    budget = context_budget(lm, config)
    reserve = min(config.max_new_tokens, budget // 2)
    limit = budget - reserve
    answered = [(u, a) for u, a in history if a and a.strip()]
    window = answered[-config.history_turns:] if config.history_turns else []
    dropped_window = len(answered) - len(window)
    kept_memories = sorted(memories, key=lambda m: m.score, reverse=True)
    dropped_memories: list[Any] = []
    dropped_budget = 0

    placement = memory_placement(config, lm)

    def compose() -> list[dict]:
        in_system = kept_memories if placement == "system" else []
        msgs = [{"role": "system", "content": system_prompt_with_memories(base, in_system)}]
        for user, answer in window:
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        last = user_text if placement == "system" else user_message_with_memories(user_text, kept_memories)
        return msgs + [{"role": "user", "content": last}]

    messages = compose()
    tokens = lm.count_tokens(messages)
    while tokens > limit and (window or kept_memories):
        if window:
            window.pop(0)
            dropped_budget += 1
        else:
            dropped_memories.append(kept_memories.pop())
        messages = compose()
        tokens = lm.count_tokens(messages)
    if tokens > limit:
        raise PromptTooLongError(
            f"the message alone needs {tokens:,} prompt tokens, more than the {limit:,} the budget allows "
            f"(context_budget {budget:,} minus {reserve:,} reserved for the reply). Fix: shorten the message, "
            "or lower max_new_tokens / raise context_budget (up to the model's window)")
    return PromptPlan(messages=messages, tokens=tokens, budget=budget,
                      reply_reserve=reply_limit(lm, config, tokens)[0],
                      memories=kept_memories, exchanges_kept=len(window), exchanges_dropped_for_window=dropped_window,
                      exchanges_dropped_for_budget=dropped_budget, memories_dropped=dropped_memories)
