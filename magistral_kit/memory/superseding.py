"""A newer message that restates a fact supersedes the older memory: the old one is archived, never deleted.

"I live in Lisbon" then, sessions later, "I live in Porto now": both are what the user said, but a question
about the present must find Porto first. The older memory is marked with MemOS's own metadata fields
(`TextualMemoryMetadata`): status "archived" plus `superseded_by`; the newer one gets a `history` entry in
the shape of MemOS's `ArchivedTextualMemory` (memory, update_type "conflict"/"duplicate",
archived_memory_id, created_at). Default search leaves archived memories out; `include_archived=True` and
the inspector show the chain. Memories extracted from an archived message are archived with it.

When is it the same fact? The two messages must be near in embedding space AND state it in the same frame:
a first-person phrase such as "I live in", "my favourite tea is", "my friend Ana" (pronoun plus the words
up to the value — a name, a number or the end of the clause). Different people ("my friend Ana" vs "my
friend Bruno") or different predicates never match.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_FRAME = re.compile(r"\b(i|i'm|i am|my|our|we|we're)\b((?:\s+[\w'-]+){1,4})", re.I)
_WEAK = frozenset("have has had am is are was were a an the got like love also really just still now do did "
                  "been being so very".split())
_STOP_AT = re.compile(r"^(?:[A-Z\d].*|in|at|on|to|for|from|with|of|near|by)$")


def frames(text: str) -> set[str]:
    """First-person frames of `text`, lower-cased ('i live in', 'my favourite tea is', 'my friend ana')."""
    out = set()
    for m in _FRAME.finditer(text):
        pron = m.group(1).lower().replace("i'm", "i am").replace("we're", "we are")
        words: list[str] = []
        for raw in m.group(2).split():
            w = raw.strip(".,;:!?\"()")
            if not w:
                break
            if words and (w[:1].isdigit() or (w[:1].isupper() and words[-1].lower() not in ("friend", "sister",
                          "brother", "mother", "father", "son", "daughter", "partner", "wife", "husband",
                          "boss", "manager", "colleague", "cousin", "aunt", "uncle", "dog", "cat"))):
                break
            words.append(w)
            if w.lower() in ("in", "at", "on", "to", "for", "from", "near", "by", "is", "are", "was") and len(words) > 1:
                break
            if raw != raw.rstrip(".,;:!?"):
                break
        words = [w.lower() for w in words if w.lower() not in ("now", "still", "also", "really", "just")]
        if words and not all(w in _WEAK for w in words):
            out.add(" ".join([pron, *words]))
    return out


@dataclass
class Supersession:
    """One older memory archived by a newer one."""

    old_id: str
    old_text: str
    new_id: str
    update_type: str  # "conflict" (the value changed) or "duplicate" (restated as it was)
    frame: str


def find_superseded(memory: Any, new_id: str, text: str, min_score: float,
                    kinds: tuple[str, ...] = ("episodic",), candidates: int = 8) -> list[Supersession]:
    """Older active memories of `kinds` that `text` (stored as `new_id`) restates."""
    new_frames = frames(text)
    if not new_frames:
        return []
    out = []
    for hit in memory.search(text, top_k=candidates, kinds=kinds):
        if hit.id == new_id or hit.score < min_score:
            continue
        shared = new_frames & frames(hit.text)
        if not shared:
            continue
        same = _norm(hit.text) == _norm(text)
        out.append(Supersession(hit.id, hit.text, new_id, "duplicate" if same else "conflict", sorted(shared)[0]))
    return out


def apply(memory: Any, found: list[Supersession]) -> list[str]:
    """Archive each superseded memory (and what was extracted from it); link both ways. Returns archived ids."""
    archived: list[str] = []
    by_new: dict[str, list[dict]] = {}
    for s in found:
        old = memory.get(s.old_id)
        children = [c for c in old.meta.get("evolve_to", []) if isinstance(c, str)]
        memory.update(s.old_id, meta={"status": "archived", "superseded_by": s.new_id})
        archived.append(s.old_id)
        for child in children:
            try:
                memory.update(child, meta={"status": "archived", "superseded_by": s.new_id})
                archived.append(child)
            except KeyError:
                pass  # deleted by the user meanwhile
        by_new.setdefault(s.new_id, []).append(
            {"version": 1, "memory": old.text, "update_type": s.update_type, "archived_memory_id": s.old_id,
             "created_at": old.created, "frame": s.frame})
    for new_id, entries in by_new.items():
        history = list(memory.get(new_id).meta.get("history", []))
        memory.update(new_id, meta={"history": history + entries})
    return archived


def chain(memory: Any, id: str) -> list[Any]:
    """The memory and every version it replaced, newest first (follows `history` links)."""
    out, seen, todo = [], set(), [id]
    while todo:
        current = todo.pop(0)
        if current in seen:
            continue
        seen.add(current)
        try:
            hit = memory.get(current)
        except KeyError:
            continue
        out.append(hit)
        todo += [h.get("archived_memory_id") for h in hit.meta.get("history", []) if h.get("archived_memory_id")]
    return out


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())
