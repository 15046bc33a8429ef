"""Script what a loaded model says, keeping the real tokenizer, chat formatting and decode loops.

Random weights never write a reasoning trace, an answer, or MemOS's JSON on purpose. `Scripted` hooks the
model's forward: each new generation (a forward over more than one token: the prompt) asks `respond(prompt)`
for the token ids to emit, and every step then puts all the weight on the next one (end of sequence once
the script is used up). Plain `generate` and the fast decode loop both run unchanged around it.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence


def ids_of(lm: Any, *pieces: str) -> list[int]:
    """Token ids of text pieces; a piece that is a control token of the tokenizer (``[THINK]``, ``</s>``) is that id."""
    if lm.tokenizer_kind != "tekken":
        out: list[int] = []
        for p in pieces:
            out += lm.tokenizer.encode(p, add_special_tokens=False)
        return out
    inner = lm.tokenizer.instruct_tokenizer.tokenizer
    out = []
    for p in pieces:
        try:
            out.append(inner.get_special_token(p))
        except Exception:  # not a control token: plain text
            out += inner.encode(p, bos=False, eos=False)
    return out


def prompt_text(lm: Any, ids: Sequence[int]) -> str:
    """The prompt as the model saw it, control tokens included."""
    if lm.tokenizer_kind == "tekken":
        from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy

        return lm.tokenizer.instruct_tokenizer.tokenizer.decode(list(ids), special_token_policy=SpecialTokenPolicy.KEEP)
    return lm.tokenizer.decode(list(ids))


class Scripted:
    """Context manager: while active, `lm.model` emits what `respond(prompt_text)` returns (ids or text)."""

    def __init__(self, lm: Any, respond: Callable[[str], Sequence[int] | str]) -> None:
        self.lm, self.respond = lm, respond
        self.queue: list[int] = []
        self.prompts: list[str] = []
        self.handle = None

    def _hook(self, module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids.shape[1] > 1:  # a prompt: a new generation starts
            text = prompt_text(self.lm, input_ids[0].tolist())
            self.prompts.append(text)
            script = self.respond(text)
            self.queue = ids_of(self.lm, script) if isinstance(script, str) else list(script)
        nxt = self.queue.pop(0) if self.queue else self.lm.eos_token_ids[0]
        logits = output.logits
        logits[:, -1, :] = -1e4
        logits[:, -1, nxt] = 1e4
        return output

    def __enter__(self) -> "Scripted":
        self.handle = self.lm.model.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()
