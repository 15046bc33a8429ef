"""Memory extraction from ONE user message: MemOS's JSON, parsed strictly, every item checked for grounding.

The user's message itself is always stored verbatim (kind "episodic", see `chat.session`); extraction only
adds "extracted" memories derived from it. So a bad extraction can never lose what the user said, and
nothing is "salvaged" from broken JSON: an output that does not parse adds nothing.

The extractor writes MemOS's `general_text` shape (`extraction_schema.json`: a "memory list" of
{key, memory_type, value, tags} plus "summary"); the chat constrains decoding to that schema
(`model.constrained`), so its outputs parse by construction. A reasoning trace (``<think>…</think>``,
``[THINK]…[/THINK]``) is removed before parsing. Each item then goes through `grounding.check` against
the user's message: items naming things the user did not say are rejected, shown and counted.

`path` says what happened: ``json`` (parsed; items kept and/or rejected), ``empty`` (parsed, no items),
``invalid`` (not the schema's JSON: nothing extracted), ``error`` (the extractor raised), ``skipped`` (the
message states no fact: no extractor call).
"""
from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Literal

from magistral_kit.memory.grounding import Verdict, check
from magistral_kit.memory.memos_fixes import strip_reasoning

LLM = Callable[[list[dict], int], Any]  # text, or a result with .text (and .tokens_out)
Path_ = Literal["json", "empty", "invalid", "error", "skipped"]
SCHEMA_FILE = Path(__file__).with_name("extraction_schema.json")

SYSTEM = ("You extract memories from the user's message. Write only JSON. Use the user's own words; "
          "never add names, places or numbers the user did not write.")
INSTRUCTION = ('Message from the user:\n"""\n{message}\n"""\n\nWrite {{"memory list": [...], "summary": "..."}}. '
               'Each item: "key" (a short title), "memory_type" ("UserMemory" for facts about the user, else '
               '"LongTermMemory"), "value" (one fact from the message, copied from its words), "tags" (words '
               'from the message). "summary": the message in one short sentence. If the message states no '
               'fact, write {{"memory list": [], "summary": ""}}.')


@lru_cache(maxsize=1)
def schema() -> dict:
    """The committed JSON schema of the extractor's output."""
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


@lru_cache(maxsize=8)
def _schema_with_items(max_items: int) -> dict:
    out = json.loads(json.dumps(schema()))
    out["properties"]["memory list"]["maxItems"] = max_items
    return out


def schema_for(user_text: str) -> dict:
    """The schema for one message: at most one item per sentence that states something (up to the committed
    schema's maxItems). A one-sentence message has one fact to extract: a second item can only repeat it
    (the embedded extractor wrote the same value twice) and costs a third of the output's tokens."""
    from magistral_kit.memory.episodic import statements

    cap = schema()["properties"]["memory list"]["maxItems"]
    return _schema_with_items(max(1, min(cap, len(statements(user_text)))))


def extraction_messages(user_text: str) -> list[dict]:
    """The extractor's chat: the kit's short instruction around the user's message (no few-shot example:
    weak models copy examples into memory as if the user had said them)."""
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": INSTRUCTION.format(message=user_text)}]


@dataclass
class ExtractedItem:
    """One memory the extractor produced, with its grounding verdict."""

    text: str
    key: str | None = None
    memory_type: str | None = None
    tags: list[str] = field(default_factory=list)
    verdict: Verdict | None = None

    @property
    def grounded(self) -> bool:
        return self.verdict is not None and self.verdict.grounded

    def meta(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.key:
            out["key"] = self.key
        if self.memory_type:
            out["memory_type"] = self.memory_type
        if self.tags:
            out["tags"] = list(self.tags)
        return out


@dataclass
class Extraction:
    """What extraction produced (`items`: grounded, `rejected`: not), how (`path`), from which output."""

    items: list[ExtractedItem]
    path: Path_
    model_output: str
    seconds: float
    rejected: list[ExtractedItem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    summary: str = ""
    tokens_out: int | None = None  # tokens the extractor generated (its cost), when the extractor says

    def records(self, source: list[str] = (), meta: dict | None = None) -> list[dict[str, Any]]:
        """The grounded items as `Memory.add_many` dicts of kind "extracted"."""
        return [{"text": i.text, "kind": "extracted", "source": list(source), "meta": {**(meta or {}), **i.meta()}}
                for i in self.items]

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "items": [i.text for i in self.items],
                "keys": [i.key for i in self.items], "tags": [i.tags for i in self.items],
                "rejected": [{"text": i.text, "why": i.verdict.reason if i.verdict else ""} for i in self.rejected],
                "model_output": self.model_output, "seconds": self.seconds, "tokens_out": self.tokens_out,
                "error": self.error,
                "notes": list(self.notes)}

    def _repr_html_(self) -> str:
        colour = {"json": "#2a2", "empty": "#666", "skipped": "#666", "invalid": "#c80", "error": "#c22"}[self.path]
        items = "".join(f"<li>{html.escape(i.text)}</li>" for i in self.items) or "<li><i>none</i></li>"
        rej = "".join(f"<li><s>{html.escape(i.text)}</s> — {html.escape(i.verdict.reason if i.verdict else '')}</li>"
                      for i in self.rejected)
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return (f"<div><b>extraction</b>: path <b style='color:{colour}'>{self.path}</b>, {len(self.items)} "
                f"kept, {len(self.rejected)} rejected as ungrounded, {self.seconds:.2f} s"
                + (f", {self.tokens_out} tokens" if self.tokens_out is not None else "") + f"<ul>{items}</ul>"
                + (f"<div>rejected:<ul>{rej}</ul></div>" if rej else "")
                + (f"<div style='color:#b00'>error: {html.escape(self.error)}</div>" if self.error else "")
                + (f"<div>notes:<ul>{notes}</ul></div>" if notes else "")
                + f"<details><summary>model output ({len(self.model_output)} chars)</summary>"
                  f"<pre style='white-space:pre-wrap'>{html.escape(self.model_output) or '(empty)'}</pre>"
                  f"</details></div>")


def skipped(reason: str) -> Extraction:
    """No extractor call: the message states no fact (a question, a greeting)."""
    return Extraction([], "skipped", "", 0.0, notes=[reason])


def extract(user_text: str, llm: LLM, max_new_tokens: int = 256) -> Extraction:
    """Ask `llm(messages, max_new_tokens)` for memories of one user message; never raises on bad output.

    An extractor that raises gives path "error" with the exception in `error` (the chat shows it).
    """
    started = time.perf_counter()
    tokens_out = None
    try:
        output = llm(extraction_messages(user_text), max_new_tokens)
        if not isinstance(output, str):  # a generation result: its text and how many tokens it cost
            tokens_out = getattr(output, "tokens_out", None)
            output = getattr(output, "text", output)
        if not isinstance(output, str):
            raise TypeError(f"extractor returned {type(output).__name__}, not text")
    except Exception as exc:  # noqa: BLE001 - the user's message is stored anyway; the error is shown
        return Extraction([], "error", "", time.perf_counter() - started,
                          error=f"{type(exc).__name__}: {exc}"[:500])
    result = parse_output(output, user_text)
    result.seconds = time.perf_counter() - started
    result.tokens_out = tokens_out
    return result


def parse_output(output: str, user_text: str) -> Extraction:
    """Strict parse of one output (reasoning removed), then the grounding check of every item."""
    notes: list[str] = []
    answer, reasoning = strip_reasoning(output)
    if reasoning:
        notes.append(f"reasoning removed ({len(reasoning)} chars)")
    try:
        obj = json.loads(answer)
    except ValueError as exc:
        return Extraction([], "invalid", output, 0.0, notes=notes + [f"not JSON ({exc}); nothing extracted"])
    raw_items = obj.get("memory list") if isinstance(obj, dict) else None
    if not isinstance(raw_items, list):
        return Extraction([], "invalid", output, 0.0, notes=notes + ["JSON without a 'memory list'; nothing "
                                                                      "extracted"])
    kept, rejected, seen = [], [], set()
    for entry in raw_items:
        item = _item(entry)
        if item is None:
            notes.append(f"malformed item dropped: {str(entry)[:80]}")
            continue
        if item.text.lower() in seen:
            continue
        seen.add(item.text.lower())
        item.verdict = check(item.text, user_text)
        (kept if item.verdict.grounded else rejected).append(item)
    summary = obj.get("summary") if isinstance(obj.get("summary"), str) else ""
    path: Path_ = "json" if (kept or rejected) else "empty"
    return Extraction(kept, path, output, 0.0, rejected=rejected, notes=notes, summary=summary)


def _item(entry: Any) -> ExtractedItem | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("value"), str) or not entry["value"].strip():
        return None
    key, mtype, tags = entry.get("key"), entry.get("memory_type"), entry.get("tags")
    tags = [t for t in tags if isinstance(t, str) and t.strip()] if isinstance(tags, list) else []
    return ExtractedItem(entry["value"].strip(), key if isinstance(key, str) else None,
                         mtype if isinstance(mtype, str) else None, tags)
