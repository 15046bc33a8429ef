"""`Turn`: everything one chat turn did, as HTML for the notebook and as a dict for the session log."""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Callable

from magistral_kit.diagnostics import MemoryReading, Timings, details_html
from magistral_kit.model.generation import Reply
from magistral_kit.chat.prompt import PromptPlan


@dataclass
class Turn:
    """One exchange: retrieved memories, prompt plan, reply, extraction, stored ids, timings, memory."""

    id: str
    user: str
    reply: Reply | None = None
    retrieved: list[Any] = field(default_factory=list)  # memory.Hit
    plan: PromptPlan | None = None
    extraction: Any = None  # extraction.Extraction
    stored_ids: list[str] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
    memory: MemoryReading | None = None
    problems: list[str] = field(default_factory=list)  # what went wrong and how the turn carried on
    interrupted: str = ""  # '' or the stage a KeyboardInterrupt cut: 'generation' / 'extraction'
    notes: list[str] = field(default_factory=list)
    message_kind: str | None = None  # "episodic", "episodic-question" or "correction"
    message_kind_reason: str = ""
    episodic_id: str | None = None  # the user's message, stored verbatim
    superseded: list[str] = field(default_factory=list)  # ids archived because this message restates them
    correction: Any = None  # corrections.CorrectionPlan
    extraction_state: str = ""  # '' (inline or none), 'pending' / 'done' (KitConfig.extract_after_answer)
    on_change: list[Callable[["Turn"], None]] = field(default_factory=list, repr=False)  # e.g. a panel's refresh

    @property
    def answer(self) -> str:
        return self.reply.answer if self.reply else ""

    def to_dict(self) -> dict:
        """The turn as plain data (one line of the session log)."""
        r = self.reply
        ex = self.extraction
        return {
            "id": self.id, "user": self.user,
            "answer": r.answer if r else None, "thinking": r.thinking if r else None,
            "reply": ({"tokens_in": r.tokens_in, "tokens_out": r.tokens_out, "seconds": r.seconds,
                       "stopped": r.stopped, "limit": r.limit, "path": r.path,
                       "reasoning_complete": r.reasoning_complete}
                      if r else None),
            "retrieved": [{"id": h.id, "text": h.text, "score": h.score, "source": list(h.source)}
                          for h in self.retrieved],
            "prompt": self.plan.to_dict() if self.plan else None,
            "message_kind": self.message_kind, "episodic_id": self.episodic_id,
            "extraction": ex.to_dict() if ex is not None else None,
            "stored_ids": list(self.stored_ids), "superseded": list(self.superseded),
            "correction": ({"action": self.correction.correction.action, "change": self.correction.describe(),
                            "applied": list(self.correction.applied)} if self.correction is not None else None),
            "timings": dict(self.timings.steps),
            "memory": self.memory.to_dict() if self.memory else None,
            "problems": list(self.problems), "notes": list(self.notes), "interrupted": self.interrupted,
            "extraction_state": self.extraction_state,
        }

    # --- display ---------------------------------------------------------------------------------------
    def to_html(self) -> str:
        parts = [f"<div style='border:1px solid #ccc;padding:6px'><b>Turn {html.escape(self.id)}</b>",
                 f"<div><b>user:</b> {html.escape(self.user)}</div>"]
        for p in self.problems:
            parts.append(f"<div style='color:#b00'>⚠ {html.escape(p)}</div>")
        parts.append(self._retrieved_html())
        if self.plan:
            parts.append(self.plan.to_html())
        if self.reply:
            parts.append("<div><b>assistant:</b></div>" + self.reply.to_html())
        parts.append(self._stored_html())
        parts.append(self._extraction_html())
        parts.append(self.timings.to_html())
        if self.memory:
            parts.append(f"<div style='color:#666'>memory: {html.escape(str(self.memory))}</div>")
        for n in self.notes:
            parts.append(f"<div style='color:#666'>note: {html.escape(n)}</div>")
        return "".join(parts) + "</div>"

    def _retrieved_html(self) -> str:
        if not self.retrieved:
            return "<div><b>retrieved:</b> <i>no memories</i></div>"
        rows = "".join(
            f"<tr><td>{h.score:.3f}</td><td style='text-align:left'>{html.escape(h.text)}</td>"
            f"<td>{html.escape(', '.join(h.source))}</td><td>{html.escape(h.kind)}</td></tr>"
            for h in self.retrieved)
        dropped = {m.id for m in (self.plan.memories_dropped if self.plan else [])}
        note = f" ({len(dropped)} dropped for the budget)" if dropped else ""
        return (f"<div><b>retrieved</b>{note}:</div><table><tr><th>score</th><th>memory</th>"
                f"<th>from turn</th><th>kind</th></tr>{rows}</table>")

    def _stored_html(self) -> str:
        if self.correction is not None:
            return self.correction._repr_html_()
        if self.message_kind is None:
            return ""
        sup = (f"; archived {len(self.superseded)} older memory(ies) it restates" if self.superseded else "")
        return (f"<div><b>stored verbatim</b> as <b>{html.escape(self.message_kind)}</b> "
                f"({html.escape(self.message_kind_reason)}){sup}</div>")

    def _extraction_html(self) -> str:
        ex = self.extraction
        if self.extraction_state == "pending":
            return ("<div><b>extraction:</b> <i>pending</i> (it runs after the answer; the next message waits "
                    "for it)</div>")
        if ex is None:
            return "<div><b>extraction:</b> <i>off</i></div>"
        items = "".join(f"<li>{html.escape(i.text)}</li>" for i in ex.items) or "<li><i>none</i></li>"
        rejected = "".join(f"<li><s>{html.escape(i.text)}</s> — {html.escape(i.verdict.reason)}</li>"
                           for i in ex.rejected if i.verdict is not None)
        error = (f"<div style='color:#b00'>extractor error: {html.escape(ex.error)}</div>" if ex.error else "")
        stored = ", ".join(self.stored_ids) or "nothing"
        after = ", after the answer" if self.extraction_state == "done" else ""
        return (f"<div><b>extraction</b> via <b>{html.escape(ex.path)}</b> path ({ex.seconds:.1f} s{after}):"
                f"<ul>{items}</ul>"
                + (f"rejected as not grounded in the message:<ul>{rejected}</ul>" if rejected else "")
                + error + f"stored: <code>{html.escape(stored)}</code></div>"
                + details_html("the extractor's raw output", ex.model_output or "(empty)"))

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        return f"Turn({self.id!r}, answer={self.answer[:60]!r}, retrieved={len(self.retrieved)}, stored={len(self.stored_ids)})"
