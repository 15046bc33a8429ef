"""One reply from a list of messages: ids (with attention mask) → generate → answer split from reasoning.

Magistral-Small-2506 writes its reasoning as ``<think>…</think>`` before the answer; later Magistral
versions use ``[THINK]…[/THINK]`` control tokens. `split_reasoning` handles both, and a trace cut by the
token limit (no closing marker): then everything generated is reasoning and the answer is empty, so
unfinished reasoning is never shown or stored as if it were an answer.

One reply budget (`reply_limit`): the context budget (config, clamped to the model's window) minus the prompt
is what the reply may use, and the reply's limit is ``min(max_new_tokens, that)``. Both decode paths get the
same limit (the fast path picks a cache step that holds prompt + limit), the prompt plan reports it as "kept
for the reply", and `Reply.stopped` says which bound ended the reply.
"""
from __future__ import annotations

import html
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from magistral_kit.config import KitConfig
from magistral_kit.diagnostics import details_html

_OPEN = re.compile(r"<think>|\[THINK\]")
_CLOSE = re.compile(r"</think>|\[/THINK\]")


@dataclass
class Reply:
    """What the model said: the answer, its reasoning, and what it cost."""

    answer: str
    thinking: str
    tokens_in: int
    tokens_out: int
    seconds: float
    reasoning_complete: bool = True
    stopped: str = "eos"  # 'eos', 'max_new_tokens' (the config's cap) or 'budget' (context budget − prompt)
    limit: int = 0  # the most tokens this reply could have had (`reply_limit`)
    path: str = "generate"  # 'generate' or the fast decode path that produced it
    notes: list[str] = field(default_factory=list)
    raw: str = ""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_out / self.seconds if self.seconds else 0.0

    def to_html(self) -> str:
        head = (f"<div style='color:#666'>{self.tokens_in} tokens in, {self.tokens_out} out, {self.seconds:.2f} s "
                f"({self.tokens_per_second:.1f} tok/s), stopped at {self.stopped}, via {html.escape(self.path)}</div>")
        think = ""
        if self.thinking:
            label = "reasoning" + ("" if self.reasoning_complete else " (cut by the token limit)")
            think = details_html(f"{label}: {len(self.thinking)} characters", self.thinking)
        answer = html.escape(self.answer) if self.answer else f"<i>{html.escape(self.empty_reason())}</i>"
        return f"{head}{think}<div style='white-space:pre-wrap'>{answer}</div>"

    def empty_reason(self) -> str:
        """Why the answer is empty, and what to change (only meaningful when it is)."""
        if not self.reasoning_complete:
            return (f"(no answer: the reasoning was cut after {self.tokens_out:,} tokens by the {self.stopped} limit; "
                    "raise max_new_tokens, and context_budget up to the model's window, for long reasoning)")
        if self.tokens_out <= 1 and self.stopped == "eos":
            return "(no answer: the model ended its reply at once)"
        return "(no answer: the model wrote only reasoning)"

    def _repr_html_(self) -> str:
        return self.to_html()


def split_reasoning(text: str) -> tuple[str, str, bool]:
    """(thinking, answer, complete) from raw model text.

    No opening marker and no closing marker: all answer. A closing marker without an opening one (the
    template opened the trace): before it is reasoning. An opening marker that never closes: all reasoning,
    incomplete.
    """
    close = _CLOSE.search(text)
    open_ = _OPEN.search(text)
    if open_ is None and close is None:
        return "", text.strip(), True
    if close is None:
        return text[open_.end():].strip(), "", False
    start = open_.end() if open_ is not None and open_.start() < close.start() else 0
    thinking = text[start:close.start()].strip()
    answer = _CLOSE.sub("", _OPEN.sub("", text[close.end():])).strip()
    return thinking, answer, True


def context_budget(lm: Any, config: KitConfig) -> int:
    """Prompt + reply tokens a turn may use: the config's budget clamped to the model's window."""
    return min(config.context_budget, lm.context_window)


def reply_limit(lm: Any, config: KitConfig, prompt_tokens: int,
                max_new_tokens: int | None = None) -> tuple[int, str]:
    """(the most tokens the reply may have, which bound sets it: 'max_new_tokens' or 'budget').

    The reply may use what the context budget leaves after the prompt, and never more than max_new_tokens.
    """
    wanted = max_new_tokens or config.max_new_tokens
    room = context_budget(lm, config) - prompt_tokens
    return (wanted, "max_new_tokens") if wanted <= room else (max(room, 0), "budget")


def generate_reply(lm: Any, messages: list[dict], config: KitConfig, max_new_tokens: int | None = None,
                   on_text: Callable[[str], None] | None = None) -> Reply:
    """Generate a reply to `messages` with the loaded model `lm` (a `LoadedModel`).

    `on_text` receives the text as it is produced (the reasoning trace included), for streaming into a
    notebook. The attention mask is always passed. The reply is limited by `reply_limit`.
    """
    import torch

    ids = lm.encode_chat(messages)
    limit, bound = reply_limit(lm, config, len(ids), max_new_tokens)
    if limit < 1:
        budget = context_budget(lm, config)
        raise ValueError(f"the prompt has {len(ids):,} tokens, which leaves no room for a reply in the "
                         f"{budget:,}-token context budget (context_budget {config.context_budget:,}, model window "
                         f"{lm.context_window:,}). Fix: lower history_turns or top_k, shorten the message, or raise "
                         "context_budget (up to the model's window)")
    input_ids = torch.tensor([ids], device=lm.model.device)
    attention_mask = torch.ones_like(input_ids)
    sampling: dict[str, Any] = {"do_sample": False}
    if config.temperature > 0:
        sampling = {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p}
    streamer = _TextCallbackStreamer(lm, on_text) if on_text else None
    start = time.perf_counter()
    out_ids, path, notes, cache_full = _decode(lm, input_ids, attention_mask, limit, sampling, streamer, config)
    seconds = time.perf_counter() - start
    if out_ids and out_ids[-1] in lm.eos_token_ids:
        stopped = "eos"
    else:
        stopped = "budget" if cache_full else bound
    raw = lm.decode(out_ids)
    thinking, answer, complete = split_reasoning(raw)
    return Reply(answer=answer, thinking=thinking, tokens_in=len(ids), tokens_out=len(out_ids), seconds=seconds,
                 reasoning_complete=complete, stopped=stopped, limit=limit, path=path, notes=notes, raw=raw)


def fast_mode(lm: Any, config: KitConfig) -> str | None:
    """The fast decode loop's mode for this model ('auto': CUDA graph) or None for plain generate."""
    if config.fast_decode and lm.quantization == "nf4" and str(lm.device).startswith("cuda"):
        return "auto"
    return None


def _decode(lm: Any, input_ids: Any, attention_mask: Any, limit: int, sampling: dict, streamer: Any,
            config: KitConfig) -> tuple[list[int], str, list[str], bool]:
    """(new ids, path, notes, stopped because the cache was full)."""
    import torch

    mode = fast_mode(lm, config)
    if mode is not None:
        return _fast_decode(lm, input_ids, attention_mask, limit, sampling, streamer, config, mode)
    with torch.inference_mode():
        out = lm.model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=limit,
                                eos_token_id=lm.eos_token_ids, pad_token_id=lm.eos_token_ids[0],
                                streamer=streamer, **sampling)
    return out[0, input_ids.shape[1]:].tolist(), "generate", [], False


def _fast_decode(lm: Any, input_ids: Any, attention_mask: Any, limit: int, sampling: dict, streamer: Any,
                 config: KitConfig, mode: str) -> tuple[list[int], str, list[str], bool]:
    """The CUDA-graph decode loop (fast_decode.py); it falls back to generate itself and says why in the notes."""
    from magistral_kit.model.fast_decode import cache_steps_for, fast_generate

    on_token = streamer.text if streamer is not None else None
    res = fast_generate(
        lm.model, input_ids, attention_mask, limit, lm.eos_token_ids, sampling.get("temperature", 0.0),
        sampling.get("top_p", 1.0), on_token=on_token,
        cache_steps=cache_steps_for(context_budget(lm, config)), compile=config.compile, mode=mode)
    if streamer is not None:
        streamer.end()
    cache_full = res.stop_reason == "cache_full"
    if res.reason:
        return res.ids, res.path, [f"fast decode not used: {res.reason}"], cache_full
    note = (f"fast decode ({res.path}): cache {res.cache_len:,} tokens, prefill {res.prefill_seconds:.2f} s, "
            f"{res.decode_tok_per_s:.1f} tok/s")
    if res.capture_seconds or res.compile_seconds:
        note += f"; one-time capture {res.capture_seconds:.1f} s, compile {res.compile_seconds:.1f} s"
    if res.gemv:
        note += f"; NF4 linears: {res.gemv}"
    notes = [note]
    if res.kernel_reason:
        notes.append(f"NF4 decode kernel not used ({res.kernel or 'bitsandbytes'} decodes): {res.kernel_reason}")
    return res.ids, res.path, notes, cache_full


class _TextCallbackStreamer:
    """A transformers streamer: skips the prompt, then passes new text on through `IncrementalText`."""

    def __init__(self, lm: Any, on_text: Callable[[str], None]) -> None:
        from magistral_kit.model.fast_decode import IncrementalText

        self.text = IncrementalText(lm.decode, on_text)
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate passes the prompt first
            self.prompt_seen = True
            return
        for token_id in value.reshape(-1).tolist():
            self.text(token_id)

    def end(self) -> None:
        self.text.flush()
