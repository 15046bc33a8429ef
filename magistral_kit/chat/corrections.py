"""Corrections typed in the chat: "Forget that …" and "That's wrong, it's …".

`parse` recognises the command, `plan` finds the memory it is about and says what will change (a
`CorrectionPlan`, shown in the notebook and printed by the terminal chat), `apply` makes the change through
the memory API: "forget" deletes the memory and what was extracted from it (the user asked for it to be
gone); "that's wrong" archives the wrong memory (MemOS status "archived", never deleted) and stores the
corrected statement as a new episodic memory whose `history` points to the old one.

Which memory? "Forget that <words>" searches for <words>; a bare "forget that" means the memory the
previous turn stored (or, after a question, the memory the previous answer relied on). "That's wrong,
it's X" corrects the previous turn's best retrieved memory after a question, else the memory the previous
turn stored.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any, Literal

_FORGET = re.compile(r"^\s*(?:please\s+)?forget\s+(?:that|about|the fact that)?\s*(?P<what>.*?)\s*[.!]?\s*$",
                     re.I | re.S)
_WRONG = re.compile(
    r"^\s*(?:no[,.!]?\s*)?(?:that'?s|that is|this is)\s+(?:wrong|not right|incorrect|not true)\s*[,.;:!—-]*\s*"
    r"(?:(?:it'?s|it is|actually|the right one is|the answer is)\s+)?(?P<new>.*?)\s*[.!]?\s*$", re.I | re.S)
_CAP_OR_NUM = re.compile(r"\b(?:[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*|\d[\d.,:/]*)\b")


@dataclass
class Correction:
    action: Literal["forget", "replace"]
    text: str  # what to forget, or the corrected value
    command: str


@dataclass
class CorrectionPlan:
    """What a correction will change; `apply` carries it out."""

    correction: Correction
    targets: list[Any] = field(default_factory=list)  # memory.Hit
    derived: list[Any] = field(default_factory=list)  # extracted memories of the targets
    new_text: str | None = None
    problem: str | None = None
    applied: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.problem:
            return f"Nothing changed: {self.problem}"
        lines = []
        verb = "forget (delete)" if self.correction.action == "forget" else "archive (superseded)"
        for t in self.targets:
            lines.append(f"{verb}: {t.text!r}")
        for d in self.derived:
            lines.append(f"{verb}, extracted from it: {d.text!r}")
        if self.new_text:
            lines.append(f"store: {self.new_text!r}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        state = "applied" if self.applied else "planned"
        body = html.escape(self.describe()).replace("\n", "<br>")
        return f"<div><b>memory correction ({state})</b><br>{body}</div>"


def parse(text: str) -> Correction | None:
    """A correction command, or None for an ordinary message."""
    m = _FORGET.match(text)
    if m:
        return Correction("forget", m.group("what").strip(), text)
    m = _WRONG.match(text)
    if m and m.group("new").strip():
        return Correction("replace", m.group("new").strip(), text)
    return None


def plan(memory: Any, correction: Correction, previous: Any, min_score: float = 0.3) -> CorrectionPlan:
    """Find the memory the correction is about. `previous`: the chat's earlier `Turn`s, oldest first (or
    one `Turn`, or None); the latest one that stated a fact or was answered from memory is meant."""
    p = CorrectionPlan(correction)
    target = None
    if correction.action == "forget" and correction.text:
        hits = memory.search(correction.text, top_k=1, kinds=("episodic", "extracted", "manual", "ingested"))
        if hits and hits[0].score >= min_score:
            target = hits[0]
    elif previous is not None:
        turns = previous if isinstance(previous, (list, tuple)) else [previous]
        target = next((t for t in (_previous_target(memory, turn) for turn in reversed(turns)) if t), None)
    if target is None:
        p.problem = ("no memory matches" + (f" {correction.text!r}" if correction.action == "forget" else
                                            " the previous turn") + ". Fix: say what to forget, e.g. "
                     "'forget that my sister lives in Lisbon', or check the memory inspector")
        return p
    p.targets = [target]
    p.derived = [memory.get(i) for i in target.meta.get("evolve_to", []) if _exists(memory, i)]
    if correction.action == "replace":
        p.new_text = corrected_text(target.text, correction.text)
    return p


def apply(memory: Any, p: CorrectionPlan, source: list[str], meta: dict | None = None) -> CorrectionPlan:
    """Carry out the plan through the memory API; the ids touched are in `p.applied`."""
    if p.problem:
        return p
    if p.correction.action == "forget":
        for hit in p.derived + p.targets:
            memory.delete(hit.id)
            p.applied.append(hit.id)
        return p
    old = p.targets[0]
    new_id = memory.add(p.new_text, source=source, kind="episodic",
                        meta={**(meta or {}), "correction_of": old.id, "speaker": "User", "status": "activated",
                              "history": [{"version": 1, "memory": old.text, "update_type": "feedback",
                                           "archived_memory_id": old.id, "created_at": old.created}]})
    for hit in p.targets + p.derived:
        memory.update(hit.id, meta={"status": "archived", "superseded_by": new_id})
        p.applied.append(hit.id)
    p.applied.append(new_id)
    return p


def corrected_text(old: str, new: str) -> str:
    """The old statement with its value replaced, when that is unambiguous; else the old one, corrected."""
    new_values = _CAP_OR_NUM.findall(new)
    if len(new_values) == 1 and new_values[0] == new.strip(" .!"):
        candidates = [v for v in _CAP_OR_NUM.findall(old)[1:] if v[:1].isdigit() == new[:1].isdigit()]
        if len(candidates) == 1:
            return old.replace(candidates[0], new.strip(" .!"), 1)
    return f"{old.rstrip('. ')} — corrected by the user: {new}"


def _previous_target(memory: Any, previous: Any) -> Any | None:
    kind = getattr(previous, "message_kind", None)
    if kind == "episodic-question":
        return _fresh(memory, previous.retrieved[0].id) if previous.retrieved else None
    if getattr(previous, "episodic_id", None):
        hit = _fresh(memory, previous.episodic_id)
        return hit if hit is not None and hit.meta.get("status") != "archived" else None
    return None


def _fresh(memory: Any, id: str) -> Any | None:
    try:
        return memory.get(id)
    except KeyError:
        return None


def _exists(memory: Any, id: Any) -> bool:
    return isinstance(id, str) and _fresh(memory, id) is not None
