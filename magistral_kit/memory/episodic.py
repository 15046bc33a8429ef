"""Does a user message state something? Decides the episodic kind of the verbatim memory, and whether to
spend an extractor call on it.

Every user message is stored verbatim. A message that states a fact is kind "episodic"; one with no fact
(a question, a greeting, thanks, a request to the assistant) is kind "episodic-question": kept and shown
in the inspector, but left out of default retrieval, so "Which city do I live in?" is never retrieved as
if it said where the user lives. A message is a fact when at least one of its sentences is a statement
that is not small talk.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_SENTENCE = re.compile(r"[^.!?¿¡\n]+[.!?\n]*|[¿¡][^?!]*[?!]?")
_SMALL_TALK = re.compile(
    r"^(hi|hello|hey|hiya|yo|thanks|thank you|thank you so much|thanks a lot|cheers|ok|okay|cool|great|nice|"
    r"lol|haha|bye|goodbye|see you|good (morning|afternoon|evening|night)|how are you( doing)?( today)?|"
    r"what'?s up|sup|hola|bonjour|hallo|ciao|ol[aá]|gracias|merci|danke|yes|no|sure|"
    r"thanks for [\w\s]+)\W*(there|again|today|everyone)?\W*$", re.I)
_REQUEST = re.compile(
    r"^(please\s+)?(can|could|would|will) you\b|^(please\s+)?(tell|give|show|explain|write|help|remind|list|"
    r"describe|summari[sz]e|translate|suggest|recommend)\b|^remind me\b|^let'?s\b", re.I)
_QUESTION_START = re.compile(
    r"^(who|whom|whose|what|which|when|where|why|how|is|are|am|was|were|do|does|did|can|could|should|would|"
    r"will|have|has|qu[eé]|qui|quand|o[uù]|wo|wann|wer|was|wie|d[oó]nde|cu[aá]ndo|c[oó]mo)\b", re.I)
_INSTRUCTION_LIKE = re.compile(
    r"ignore (all |any )?(the )?(previous|prior|above|earlier) (instructions|messages|prompts)|^\s*system\s*:|"
    r"you are now\b|disregard (all |your )?(previous |prior )?instructions", re.I | re.M)


@dataclass
class MessageKind:
    """The kind to store a user message under, and why."""

    kind: str  # "episodic" or "episodic-question"
    reason: str
    instruction_like: bool = False  # reads like a prompt injection: stored verbatim, never extracted

    @property
    def states_fact(self) -> bool:
        return self.kind == "episodic"


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.findall(text) if s.strip(" .!?¿¡\n")]


def _is_statement(sentence: str) -> bool:
    s = sentence.strip()
    body = s.strip(" .!?¿¡")
    if s.endswith("?") or s.startswith("¿") or _SMALL_TALK.match(body) or _REQUEST.match(body):
        return False
    if _QUESTION_START.match(body) and len(body.split()) <= 12 and not re.search(r"\b(I|my|I'm|we|our)\b", body):
        return False
    return len(re.findall(r"\w+", body)) >= 2


def statements(text: str) -> list[str]:
    """The sentences of `text` that state something (not questions, greetings or requests)."""
    return [s for s in sentences(text) if _is_statement(s)]


def classify(text: str) -> MessageKind:
    """"episodic" when some sentence states something, else "episodic-question" (question / small talk)."""
    injected = bool(_INSTRUCTION_LIKE.search(text))
    parts = sentences(text)
    facts = statements(text)
    if facts:
        return MessageKind("episodic", f"states something: {facts[0][:60]!r}", injected)
    if any(s.rstrip().endswith("?") or s.startswith("¿") for s in parts):
        why = "a question"
    elif any(_REQUEST.match(s.strip(" .!")) for s in parts):
        why = "a request to the assistant"
    else:
        why = "small talk"
    return MessageKind("episodic-question", f"{why}: no fact stated", injected)
