"""Decoding constrained to a JSON schema, for the HF tokenizer and for tekken (mistral-common).

Why: a 135M model almost never writes MemOS's extraction JSON unaided, and repairing broken JSON stored
fragments the user never said. With the schema enforced token by token, every finished output parses.

`bench/constrained_decoding.py` compared two maintained libraries (time per token, install size, output
validity) and xgrammar (compiled token masks) is the one used. lm-format-enforcer, the other, was dropped: on
the tekken tokenizer it let raw control characters into JSON strings, and on the embedded model it let whitespace
run on until the token limit, so the object never closed (the bench keeps its adapter for the comparison).
xgrammar does not read a tekken tokenizer by itself, so it gets its vocabulary table from the Tekkenizer's byte
pieces here. Tables are built once per tokenizer (they walk the whole vocabulary).
"""
from __future__ import annotations

import json
import time
import weakref
from dataclasses import dataclass
from typing import Any

_TABLES: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
BACKENDS = ("xgrammar",)
BACKEND = "xgrammar"


@dataclass
class ConstrainedOutput:
    """The text the constrained decoder produced and what it cost."""

    text: str
    tokens_in: int
    tokens_out: int
    seconds: float
    stopped: str  # 'eos' (the schema was complete) or 'max_new_tokens'


def xgrammar_tokenizer_info(lm: Any, vocab_size: int) -> Any:
    """xgrammar's tokenizer table: its own reader for HF tokenizers, the Tekkenizer's byte pieces for tekken."""
    import xgrammar as xgr

    if lm.tokenizer_kind != "tekken":
        return xgr.TokenizerInfo.from_huggingface(lm.tokenizer, vocab_size=vocab_size,
                                                  stop_token_ids=list(lm.eos_token_ids))
    from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy

    inner = lm.tokenizer.instruct_tokenizer.tokenizer
    vocab = [b""] * inner.num_special_tokens  # control tokens: never text
    vocab += [inner.id_to_byte_piece(i, SpecialTokenPolicy.IGNORE) for i in range(inner.num_special_tokens,
                                                                                  inner.n_words)]
    return xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, vocab_size=vocab_size,
                             stop_token_ids=list(lm.eos_token_ids))


def _vocab_size(lm: Any) -> int:
    return int(lm.model.get_output_embeddings().weight.shape[0])


def _tables(lm: Any) -> dict:
    tables = _TABLES.get(lm.tokenizer)
    if tables is None:
        tables = _TABLES[lm.tokenizer] = {}
    return tables


def _xgrammar_compiled(lm: Any, schema: dict) -> Any:
    import xgrammar as xgr

    tables = _tables(lm)
    key = ("xgr", json.dumps(schema, sort_keys=True))
    if key not in tables:
        if "xgr_compiler" not in tables:
            tables["xgr_compiler"] = xgr.GrammarCompiler(xgrammar_tokenizer_info(lm, _vocab_size(lm)))
        # compact JSON (no free whitespace): fewer tokens, and a weak model cannot spin on newlines
        tables[key] = tables["xgr_compiler"].compile_json_schema(schema, any_whitespace=False)
    return tables[key]


def _constraint(lm: Any, schema: dict, backend: str) -> dict:
    if backend == "xgrammar":
        import xgrammar as xgr

        return {"logits_processor": [xgr.contrib.hf.LogitsProcessor(_xgrammar_compiled(lm, schema))]}
    raise ValueError(f"constrained decoding backend {backend!r} is not one of {BACKENDS}")


def generate_json(lm: Any, messages: list[dict], schema: dict, max_new_tokens: int,
                  backend: str | None = None) -> ConstrainedOutput:
    """Greedy decode of `messages` with the output constrained to `schema` (a JSON-schema dict)."""
    import torch

    ids = lm.encode_chat(messages)
    limit = max(1, min(max_new_tokens, lm.context_window - len(ids)))
    constraint = _constraint(lm, schema, backend or BACKEND)
    input_ids = torch.tensor([ids], device=lm.model.device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = lm.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                max_new_tokens=limit, do_sample=False, eos_token_id=lm.eos_token_ids,
                                pad_token_id=lm.eos_token_ids[0], **constraint)
    new = out[0, input_ids.shape[1]:].tolist()
    stopped = "eos" if new and new[-1] in lm.eos_token_ids else "max_new_tokens"
    return ConstrainedOutput(lm.decode(new), len(ids), len(new), time.perf_counter() - start, stopped)


def schema_text(schema: dict) -> str:
    return json.dumps(schema, ensure_ascii=False)


class _XgrammarBatch:
    """xgrammar's token masks for a batch; rows that finished (stop token) are left alone, unlike
    `xgrammar.contrib.hf.LogitsProcessor`, which asserts on the padding fed after a row's end."""

    def __init__(self, compiled: Any, batch: int) -> None:
        import xgrammar as xgr

        self.matchers = [xgr.GrammarMatcher(compiled) for _ in range(batch)]
        self.bitmask = xgr.allocate_token_bitmask(batch, compiled.tokenizer_info.vocab_size)
        self.started = False

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import xgrammar as xgr

        if self.started:
            for i, m in enumerate(self.matchers):
                if not m.is_terminated():
                    m.accept_token(int(input_ids[i, -1]))
        self.started = True
        for i, m in enumerate(self.matchers):
            if not m.is_terminated():
                m.fill_next_token_bitmask(self.bitmask, i)
        cpu = scores.to("cpu")
        xgr.apply_token_bitmask_inplace(cpu, self.bitmask)
        return cpu.to(scores.device)


def generate_json_batch(lm: Any, chats: list[list[dict]], schema: dict, max_new_tokens: int,
                        stop_at: str | None = None) -> list[ConstrainedOutput]:
    """`generate_json` for many chats at once (xgrammar, left padding): cheaper per output on CPU.

    `stop_at`: a row stops once its text contains this string (e.g. '"summary"' when only the items are
    wanted); such a row's text is cut there and its `stopped` is 'stop_at'."""
    import torch

    encoded = [lm.encode_chat(m) for m in chats]
    width = max(len(e) for e in encoded)
    pad = lm.eos_token_ids[0]
    input_ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=lm.model.device)
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=lm.model.device)
    proc = _XgrammarBatch(_xgrammar_compiled(lm, schema), len(chats))
    extra: dict[str, Any] = {}
    if stop_at:
        from transformers import StoppingCriteria, StoppingCriteriaList

        class _StopAt(StoppingCriteria):
            def __call__(self, ids: Any, scores: Any, **kw: Any) -> Any:
                return torch.tensor([stop_at in lm.decode(row[width:].tolist()) for row in ids],
                                    device=ids.device)

        extra["stopping_criteria"] = StoppingCriteriaList([_StopAt()])
    start = time.perf_counter()
    with torch.inference_mode():
        out = lm.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                do_sample=False, eos_token_id=lm.eos_token_ids, pad_token_id=pad,
                                logits_processor=[proc], **extra)
    seconds = time.perf_counter() - start
    results = []
    for row, e in zip(out.tolist(), encoded):
        new = row[width:]
        ends = [n for n, t in enumerate(new) if t in lm.eos_token_ids]
        new = new[:ends[0] + 1] if ends else new
        text = lm.decode(new)
        stopped = "eos" if ends else "max_new_tokens"
        if stop_at and stop_at in text:
            text, stopped = text[:text.index(stop_at)], "stop_at"
        results.append(ConstrainedOutput(text, len(e), len(new), seconds / len(chats), stopped))
    return results
