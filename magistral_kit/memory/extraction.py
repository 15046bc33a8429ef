"""Memory extraction that never crashes: MemOS's prompt, a forgiving parser, the user's words as fallback.

MemOS's `GeneralTextMemory.extract` crashes on any reply that is not its exact JSON (see `memos_fixes`).
Here the same prompt (MemOS's general_text template) goes to a caller-supplied LLM callable — the chat's
already-loaded model; nothing is loaded here — and the reply is read in three ways, reported as `path`:

* ``json``: the reply (reasoning removed) is the JSON MemOS asks for;
* ``salvaged``: the items that parse were kept — from a code fence, inside reasoning, a truncated list,
  trailing commas, alternative key names, wrong types dropped, or items copied from the prompt's example
  dropped (weak models repeat the few-shot example as if it were the user's fact);
* ``raw``: nothing usable, so the user's message is kept verbatim as one memory of kind ``raw``.
"""
from __future__ import annotations

import difflib
import html
import json
import re
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Literal

from magistral_kit.memory.memos_fixes import extraction_prompt, extraction_template, strip_reasoning

LLM = Callable[[list[dict], int], str]
_LIST_KEYS = ("memory list", "memory_list", "memorylist", "memories", "memory", "items")
_VALUE_KEYS = ("value", "memory", "text", "content", "fact")
_EXAMPLE_SIMILARITY = 0.8
MAX_ITEMS = 30


@dataclass
class ExtractedItem:
    """One memory the extractor produced (or the user's message, kind 'raw')."""

    text: str
    kind: Literal["extracted", "raw"] = "extracted"
    key: str | None = None
    memory_type: str | None = None
    tags: list[str] = field(default_factory=list)

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
    """What extraction produced, how (`path`), from which model output, in how long."""

    items: list[ExtractedItem]
    path: Literal["json", "salvaged", "raw"]
    model_output: str
    seconds: float
    notes: list[str] = field(default_factory=list)

    def records(self, source: list[str] = (), meta: dict | None = None) -> list[dict[str, Any]]:
        """The items as `Memory.add_many` dicts (one durable batch per turn)."""
        return [{"text": i.text, "kind": i.kind, "source": list(source), "meta": {**(meta or {}), **i.meta()}}
                for i in self.items]

    def _repr_html_(self) -> str:
        colour = {"json": "#2a2", "salvaged": "#c80", "raw": "#c22"}[self.path]
        items = "".join(f"<li>[{i.kind}] {html.escape(i.text)}</li>" for i in self.items) or "<li><i>none</i></li>"
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return (f"<div><b>extraction</b>: path <b style='color:{colour}'>{self.path}</b>, {len(self.items)} "
                f"item(s), {self.seconds:.2f} s<ul>{items}</ul>"
                + (f"<div>notes:<ul>{notes}</ul></div>" if notes else "")
                + f"<details><summary>model output ({len(self.model_output)} chars)</summary>"
                  f"<pre style='white-space:pre-wrap'>{html.escape(self.model_output) or '(empty)'}</pre>"
                  f"</details></div>")


def conversation_text(messages: list[dict]) -> str:
    """'role:content' lines, as MemOS's extractor formats a conversation."""
    return "\n".join(f"{m.get('role', 'user')}:{m.get('content', '')}" for m in messages)


def extract(messages: list[dict], llm: LLM, max_new_tokens: int = 256) -> Extraction:
    """Ask `llm(messages, max_new_tokens)` for memories of `messages`; never raises on bad output.

    The fallback memory is the last user message verbatim; with none, a failed extraction stores nothing.
    """
    started = time.perf_counter()
    user_text = next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")
    prompt = extraction_prompt(conversation_text(messages))
    notes: list[str] = []
    try:
        output = llm([{"role": "user", "content": prompt}], max_new_tokens)
        if not isinstance(output, str):
            notes.append(f"extractor returned {type(output).__name__}, not text")
            output = "" if output is None else str(output)
    except Exception as exc:  # noqa: BLE001 - extraction must never take the chat down
        output = ""
        notes.append(f"extractor failed: {type(exc).__name__}: {exc}"[:300])
    items, path, parse_notes = parse_output(output, user_text)
    return Extraction(items, path, output, time.perf_counter() - started, notes + parse_notes)


def parse_output(output: str, user_text: str) -> tuple[list[ExtractedItem], str, list[str]]:
    """(items, path, notes) for one model output; see the module docstring for the three paths."""
    notes: list[str] = []
    answer, reasoning = strip_reasoning(output)
    if reasoning:
        notes.append(f"reasoning removed ({len(reasoning)} chars)")
    items, clean = _items_from(answer, notes)
    if not items and reasoning:
        items, _ = _items_from(reasoning, notes)
        clean = False
        if items:
            notes.append("items found inside the reasoning")
    if items is None:
        items = []
    kept = _drop_copied_examples(items, notes)
    kept = _dedupe(kept, notes)
    if len(kept) > MAX_ITEMS:
        notes.append(f"kept the first {MAX_ITEMS} of {len(kept)} items")
        kept = kept[:MAX_ITEMS]
    if kept:
        return kept, ("json" if clean and len(kept) == len(items) else "salvaged"), notes
    if items == [] and clean and _explicit_empty(answer):
        notes.append("the extractor found nothing to remember (empty memory list)")
        return [], "json", notes
    if user_text.strip():
        notes.append("nothing usable in the output: the user's message is stored verbatim")
        return [ExtractedItem(user_text, kind="raw")], "raw", notes
    notes.append("nothing usable in the output and no user message: nothing stored")
    return [], "raw", notes


# --- parsing -----------------------------------------------------------------------------------------
_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)(?:```|$)", re.S)
_TRAILING_COMMA = re.compile(r",(\s*[\]}])")
_DECODER = json.JSONDecoder()


def _items_from(text: str, notes: list[str]) -> tuple[list[ExtractedItem] | None, bool]:
    """Items from one text and whether it was the exact format (no repair needed)."""
    if not text.strip():
        return None, False
    whole = _whole_json(text)
    if whole is not None:
        scratch: list[str] = []
        items, exact = _items_from_obj(whole, scratch)
        if items is not None:
            notes.extend(scratch)
            return items, exact
    # code fences first (what a chat model wraps JSON in), then the bare text; a complete outer object
    # with a list of items, else every complete item object (a truncated list)
    bodies = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for body in bodies:
        for candidate in (body, _TRAILING_COMMA.sub(r"\1", body)):
            for obj in _objects(candidate):
                scratch = []
                items, _ = _items_from_obj(obj, scratch, bare_item=False)
                if items:
                    notes.extend(scratch)
                    notes.append("JSON repaired (code fence, surrounding prose or trailing commas)")
                    return items, False
    loose = _loose_items(text)
    if loose:
        notes.append(f"output is not complete JSON: {len(loose)} complete item(s) salvaged")
        return loose, False
    literal = _python_literal(text)
    if literal is not None:
        scratch = []
        items, _ = _items_from_obj(literal, scratch)
        if items:
            notes.extend(scratch)
            notes.append("read as a Python literal (single quotes), not JSON")
            return items, False
    values = _complete_values(text)
    if values:
        notes.append(f"output cut inside an item: {len(values)} complete \"value\" string(s) salvaged")
        return values, False
    return None, False


_VALUE_STRING = re.compile(r'"value"\s*:\s*"((?:[^"\\\n]|\\.)*)"')


def _complete_values(text: str) -> list[ExtractedItem]:
    """Last resort for a reply cut mid-item: every complete "value": "..." string."""
    out = []
    for match in _VALUE_STRING.finditer(text):
        try:
            value = json.loads(f'"{match.group(1)}"')
        except ValueError:
            continue
        if value.strip():
            out.append(ExtractedItem(value.strip()))
    return out


def _python_literal(text: str) -> Any:
    """Weak models answer with a Python dict repr ({'key': 'x'}); read it without evaluating code."""
    import ast

    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start or end - start > 20_000:
        return None
    try:
        return ast.literal_eval(text[start:end + 1])
    except Exception:  # noqa: BLE001 - SyntaxError, ValueError, RecursionError, MemoryError on junk
        return None


def _whole_json(text: str) -> Any:
    try:
        return json.loads(text.strip())
    except ValueError:
        return None


def _objects(text: str) -> Any:
    """Each complete JSON object or array that starts at a '{' or '[' of `text`, in order."""
    for match in re.finditer(r"[{\[]", text):
        try:
            obj, _ = _DECODER.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(obj, (dict, list)):
            yield obj


def _loose_items(text: str) -> list[ExtractedItem]:
    """Every complete {...} object that looks like a memory item (truncated lists, broken outer JSON)."""
    out = []
    fixed = _TRAILING_COMMA.sub(r"\1", text)
    for match in re.finditer(r"\{", fixed):
        try:
            obj, _ = _DECODER.raw_decode(fixed, match.start())
        except ValueError:
            continue
        if isinstance(obj, dict):
            item = _item(obj)
            if item is not None:
                out.append(item)
    return out


def _items_from_obj(obj: Any, notes: list[str], bare_item: bool = True) -> tuple[list[ExtractedItem] | None, bool]:
    """(items, exact): exact = the MemOS shape with every item valid. `bare_item`: accept a lone item."""
    exact = isinstance(obj, dict) and isinstance(obj.get("memory list"), list)
    raw_list = None
    if isinstance(obj, dict):
        for key in _LIST_KEYS:
            if isinstance(obj.get(key), list):
                raw_list = obj[key]
                break
        if raw_list is None and bare_item and _item(obj) is not None:
            raw_list = [obj]
    elif isinstance(obj, list):
        raw_list = obj
    if raw_list is None:
        return None, False
    if not exact:
        notes.append("JSON without a 'memory list': items read from another key/shape")
    items, bad = [], 0
    for entry in raw_list:
        item = _item(entry) if isinstance(entry, dict) else None
        if item is None:
            bad += 1
        else:
            items.append(item)
    if bad:
        notes.append(f"{bad} malformed item(s) dropped (no text value or wrong types)")
    return items, exact and bad == 0


def _item(entry: dict) -> ExtractedItem | None:
    value = next((entry[k] for k in _VALUE_KEYS if isinstance(entry.get(k), str) and entry[k].strip()), None)
    if value is None:
        return None
    key = entry.get("key")
    mtype = entry.get("memory_type")
    tags = entry.get("tags")
    if isinstance(tags, str):
        tags = [tags]
    tags = [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []
    return ExtractedItem(value.strip(), "extracted", key if isinstance(key, str) else None,
                         mtype if isinstance(mtype, str) else None, tags)


def _explicit_empty(text: str) -> bool:
    obj = _whole_json(text)
    if obj is None:
        obj = next(iter(_objects(text)), None)
    return isinstance(obj, dict) and obj.get("memory list") == []


# --- the prompt's own example ------------------------------------------------------------------------
def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


@lru_cache(maxsize=1)
def example_texts() -> tuple[str, ...]:
    """The values, keys and summaries of the few-shot examples in MemOS's extraction prompt."""
    template = extraction_template()
    start = template.find("Example:")
    examples = template[start:] if start >= 0 else template
    found = [_norm(i.text) for i in _loose_items(examples)]
    found += [_norm(m) for m in re.findall(r'"summary":\s*"([^"]+)"', examples)]
    return tuple(t for t in found if len(t) > 20)


def is_example_copy(text: str) -> bool:
    """True when `text` is (nearly) one of the prompt's example memories, not something the user said."""
    norm = _norm(text)
    if len(norm) < 20:
        return False
    for ex in example_texts():
        if norm in ex or ex in norm:
            return True
        if difflib.SequenceMatcher(None, norm, ex, autojunk=False).ratio() >= _EXAMPLE_SIMILARITY:
            return True
    return False


def _drop_copied_examples(items: list[ExtractedItem], notes: list[str]) -> list[ExtractedItem]:
    kept = [i for i in items if not is_example_copy(i.text)]
    if len(kept) < len(items):
        notes.append(f"{len(items) - len(kept)} item(s) dropped: copied from the prompt's example, "
                     f"not said by the user")
    return kept


def _dedupe(items: list[ExtractedItem], notes: list[str]) -> list[ExtractedItem]:
    seen, out = set(), []
    for item in items:
        key = _norm(item.text)
        if key not in seen:
            seen.add(key)
            out.append(item)
    if len(out) < len(items):
        notes.append(f"{len(items) - len(out)} duplicate item(s) dropped")
    return out
