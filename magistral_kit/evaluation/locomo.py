"""LoCoMo: load the conversations, normalise their evidence ids, and score retrieval with recall@k.

Why this module exists: a memory must be judged on conversations nobody here wrote. LoCoMo (Maharana et al.,
2024) ships 10 long multi-session dialogues with questions that name the dialogue turns holding their answer.

Two file shapes are accepted:

* one conversation per file, flat: ``{"speaker_a", "speaker_b", "session_1", "session_1_date_time", …, "qa"}``
  (the form of the shared copy and of `synthetic.write_locomo`), in a folder or as a single file;
* the public single-file form: a JSON list of ``{"sample_id", "conversation": {…}, "qa": […]}``.

Only the dialogue is kept (``session_N`` turns and their dates). The gold annotations ``session_N_observation``,
``session_N_summary`` and ``events_session_N`` are never read, so they cannot leak into a cube.

**Evidence normalisation** (`normalise_evidence`). A few evidence ids in the data are malformed. Each raw id is
split on ``;``, ``,`` and whitespace, then every piece is matched against ``D<session>:<turn>`` with an
optional stray colon after the ``D`` (``D:11:26``) and leading zeros (``D30:05``), and rewritten canonically
(``D11:26``, ``D30:5``). A piece with no turn number (``D``) is dropped. Ids that are well formed but name a turn
that does not exist (``D10:19`` when session 10 has 16 turns) are kept, since nothing can be inferred, and
reported as *dangling*; repeated ids are removed. `evidence_report` counts every kind of fix over a set of
conversations (``tests/test_locomo.py`` pins its counts on the real data). Questions left with no evidence
cannot be scored and are excluded from recall, as in the reference figure (categories 1–4 only).

**Where the data is** (`find_locomo`): a path the caller gives, else ``$MAGISTRAL_LOCOMO``, else
``../shared/locomo`` beside the repository when it exists. Nothing else is read; without data, tests and
notebook 03 use a small LoCoMo-format set the project generates (`magistral_kit.evaluation.synthetic`).

**Metric** (`score_question`, `summarise`): for a question of categories 1–4, retrieve the top k memories; it is
a hit at k when any of them has a provenance (``source``) that contains one of the question's evidence ids.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from magistral_kit.config import REPO_ROOT

CATEGORY_NAMES: dict[int, str] = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
SCORED_CATEGORIES: tuple[int, ...] = (1, 2, 3, 4)
KS: tuple[int, ...] = (1, 5, 10)
TUNING_SET: tuple[str, ...] = ("26", "30", "41", "42", "43")
HELD_OUT: tuple[str, ...] = ("44", "47", "48", "49", "50")
# Measured by the author: plain cosine over raw turn text, all-MiniLM-L6-v2, 1,536 questions.
REFERENCE_BASELINE: dict[str, Any] = {
    "recall@1": 0.189, "recall@5": 0.421, "recall@10": 0.516, "questions": 1536,
    "per_category_recall@5": {"multi-hop": 0.387, "temporal": 0.445, "open-domain": 0.272, "single-hop": 0.440},
}

_SESSION_KEY = re.compile(r"session_(\d+)")
_EVIDENCE_PIECE = re.compile(r"D:?(\d+):0*(\d+)")


class LocomoFormatError(ValueError):
    """A file is not LoCoMo-shaped; the message says which file, what is missing and how to fix it."""


LOCOMO_ENV = "MAGISTRAL_LOCOMO"


def shared_path() -> Path:
    """Where a shared copy may sit: ``../shared/locomo`` next to the repository."""
    return REPO_ROOT.parent / "shared" / "locomo"


def find_locomo() -> Path | None:
    """The LoCoMo data to use when no path is given: ``$MAGISTRAL_LOCOMO``, else the shared copy if present."""
    env = os.environ.get(LOCOMO_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return shared_path() if shared_path().exists() else None


def default_path() -> Path:
    """`find_locomo`, or raise `LocomoFormatError` saying how to point at the data."""
    found = find_locomo()
    if found is None:
        raise LocomoFormatError(
            f"no LoCoMo data found: ${LOCOMO_ENV} is not set and {shared_path()} does not exist. Fix: pass the "
            f"folder or locomo10.json (load_locomo(path), --locomo PATH), or set {LOCOMO_ENV}=PATH; to try the "
            "pipeline without it, use magistral_kit.evaluation.synthetic.write_locomo(folder)")
    return found


@dataclass(frozen=True)
class Turn:
    """One utterance of the dialogue. ``image`` is the caption of a shared photo, part of what was said."""

    dia_id: str
    speaker: str
    text: str
    session: int
    date: str
    image: str = ""


@dataclass(frozen=True)
class Question:
    question: str
    answer: str
    category: int
    evidence: tuple[str, ...]
    raw_evidence: tuple[str, ...]

    @property
    def category_name(self) -> str:
        return CATEGORY_NAMES.get(self.category, str(self.category))

    @property
    def scored(self) -> bool:
        """Counted in recall: categories 1–4 with at least one evidence id."""
        return self.category in SCORED_CATEGORIES and bool(self.evidence)


@dataclass
class Conversation:
    sample_id: str
    speaker_a: str
    speaker_b: str
    turns: list[Turn]
    questions: list[Question]
    fixes: Counter = field(default_factory=Counter)

    @property
    def sessions(self) -> dict[int, list[Turn]]:
        """Turns grouped by session number, in dialogue order."""
        out: dict[int, list[Turn]] = {}
        for t in self.turns:
            out.setdefault(t.session, []).append(t)
        return out

    @property
    def turn_ids(self) -> set[str]:
        return {t.dia_id for t in self.turns}

    def turn(self, dia_id: str) -> Turn | None:
        return next((t for t in self.turns if t.dia_id == dia_id), None)

    def scored_questions(self) -> list[Question]:
        return [q for q in self.questions if q.scored]

    def __repr__(self) -> str:
        return (f"Conversation({self.sample_id!r}, {self.speaker_a} & {self.speaker_b}, "
                f"{len(self.sessions)} sessions, {len(self.turns)} turns, {len(self.questions)} questions)")


# --- evidence ---------------------------------------------------------------------------------------
def normalise_evidence(raw: Iterable[Any], known_ids: set[str] | None = None) -> tuple[tuple[str, ...], Counter]:
    """Canonical evidence ids from the raw list, and a Counter of what was fixed (see the module docstring)."""
    fixes: Counter = Counter()
    out: list[str] = []
    for item in raw:
        text = str(item).strip()
        pieces = [p for p in re.split(r"[;,\s]+", text) if p]
        if len(pieces) > 1:
            fixes["split ';'" if ";" in text else "split ','" if "," in text else "split whitespace"] += 1
        for piece in pieces:
            m = _EVIDENCE_PIECE.fullmatch(piece)
            if not m:
                fixes["dropped unparseable"] += 1
                continue
            canon = f"D{int(m.group(1))}:{int(m.group(2))}"
            if piece.startswith("D:"):
                fixes["stray colon"] += 1
            elif canon != piece:
                fixes["leading zero"] += 1
            if known_ids is not None and canon not in known_ids:
                fixes["dangling (kept)"] += 1
            if canon in out:
                fixes["duplicate removed"] += 1
            else:
                out.append(canon)
    return tuple(out), fixes


def evidence_report(conversations: Sequence[Conversation]) -> dict[str, int]:
    """How many evidence ids were fixed, by kind, plus the question counts that recall is computed over."""
    total: Counter = Counter()
    for c in conversations:
        total.update(c.fixes)
    questions = [q for c in conversations for q in c.questions]
    total["questions"] = len(questions)
    total["questions without evidence"] = sum(1 for q in questions if not q.evidence)
    total["scored questions (categories 1-4)"] = sum(1 for q in questions if q.scored)
    return dict(total)


# --- loading ----------------------------------------------------------------------------------------
def load_locomo(path: str | Path | None = None, conversations: Iterable[str] | None = None) -> list[Conversation]:
    """Conversations from a folder of per-conversation files, one such file, or the public single-file list.

    ``path`` defaults to `find_locomo` (``$MAGISTRAL_LOCOMO``, then ``../shared/locomo``). ``conversations``
    keeps only those sample ids (file stems for per-conversation files, e.g. ``["26", "30"]``), in the order given.
    """
    p = Path(path).expanduser() if path is not None else default_path()
    if not p.exists():
        raise LocomoFormatError(f"LoCoMo path {p} does not exist. Fix: pass the folder of per-conversation "
                                f"JSON files or the single-file locomo10.json, or set {LOCOMO_ENV}.")
    files = sorted(p.glob("*.json"), key=_numeric_first) if p.is_dir() else [p]
    if not files:
        raise LocomoFormatError(f"{p} holds no .json file. Fix: point at the LoCoMo folder or file.")
    out: list[Conversation] = []
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LocomoFormatError(f"{f} is not valid JSON ({exc}). Fix: point at LoCoMo JSON files.") from None
        if isinstance(data, list):
            for i, item in enumerate(data):
                sid = str(item.get("sample_id", i)) if isinstance(item, dict) else str(i)
                out.append(parse_conversation(item, sid, where=f"{f} item {i}"))
        else:
            out.append(parse_conversation(data, f.stem, where=str(f)))
    if conversations is not None:
        wanted = [str(c) for c in conversations]
        by_id = {c.sample_id: c for c in out}
        missing = [w for w in wanted if w not in by_id]
        if missing:
            raise LocomoFormatError(f"conversation(s) {missing} not in {p}. Fix: choose among {sorted(by_id)}.")
        out = [by_id[w] for w in wanted]
    return out


def parse_conversation(data: Any, sample_id: str, where: str = "<data>") -> Conversation:
    """One conversation from its JSON object (flat or with a nested ``conversation``); errors name the gap."""
    if not isinstance(data, Mapping):
        raise LocomoFormatError(f"{where}: expected a JSON object per conversation, got {type(data).__name__}. "
                                "Fix: use a LoCoMo file (an object with speaker_a, session_N and qa).")
    dialogue = data.get("conversation", data)
    if not isinstance(dialogue, Mapping):
        raise LocomoFormatError(f"{where}: 'conversation' is a {type(dialogue).__name__}, expected an object.")
    missing = [k for k in ("speaker_a", "speaker_b") if k not in dialogue]
    sessions = sorted(int(m.group(1)) for k in dialogue if (m := _SESSION_KEY.fullmatch(k)))
    if not sessions:
        missing.append("session_1 (a list of turns)")
    if "qa" not in data:
        missing.append("qa (the questions)")
    if missing:
        raise LocomoFormatError(f"{where} is not LoCoMo-shaped: missing {', '.join(missing)}. Fix: pass a "
                                "LoCoMo conversation file or the public locomo10.json list.")
    turns: list[Turn] = []
    for s in sessions:
        raw_turns = dialogue[f"session_{s}"]
        if not isinstance(raw_turns, list):
            raise LocomoFormatError(f"{where}: session_{s} should be a list of turns.")
        date = str(dialogue.get(f"session_{s}_date_time", ""))
        for j, t in enumerate(raw_turns):
            lacking = [k for k in ("speaker", "dia_id", "text") if not isinstance(t, Mapping) or k not in t]
            if lacking:
                raise LocomoFormatError(f"{where}: turn {j} of session_{s} lacks {', '.join(lacking)}. Fix: each "
                                        "turn needs speaker, dia_id and text.")
            turns.append(Turn(dia_id=str(t["dia_id"]).strip(), speaker=str(t["speaker"]), text=str(t["text"]),
                              session=s, date=date, image=str(t.get("blip_caption") or "")))
    known = {t.dia_id for t in turns}
    fixes: Counter = Counter()
    questions: list[Question] = []
    for j, q in enumerate(data["qa"]):
        if not isinstance(q, Mapping) or "question" not in q or "category" not in q:
            raise LocomoFormatError(f"{where}: qa[{j}] needs 'question' and 'category'.")
        raw = q.get("evidence") or []
        ev, f = normalise_evidence(raw, known)
        fixes.update(f)
        answer = q.get("answer", q.get("adversarial_answer", ""))
        questions.append(Question(question=str(q["question"]), answer=str(answer), category=int(q["category"]),
                                  evidence=ev, raw_evidence=tuple(str(r) for r in raw)))
    return Conversation(sample_id=sample_id, speaker_a=str(dialogue["speaker_a"]),
                        speaker_b=str(dialogue["speaker_b"]), turns=turns, questions=questions, fixes=fixes)


def _numeric_first(p: Path) -> tuple[int, str]:
    return (int(p.stem), p.stem) if p.stem.isdigit() else (1 << 30, p.stem)


# --- metric -----------------------------------------------------------------------------------------
def score_question(question: Question, retrieved_sources: Sequence[Iterable[str]],
                   ks: Sequence[int] = KS) -> dict[int, bool]:
    """Hit at each k: does any of the first k retrieved memories' provenance contain an evidence id?"""
    evidence = set(question.evidence)
    first_hit = next((i for i, src in enumerate(retrieved_sources) if evidence & set(src)), None)
    return {k: first_hit is not None and first_hit < k for k in ks}


def summarise(rows: Sequence[Mapping[str, Any]], ks: Sequence[int] = KS) -> dict[str, Any]:
    """Recall overall, per category and per conversation from rows of ``{conversation, category, hit@k…}``."""
    def block(sub: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        n = len(sub)
        out: dict[str, Any] = {f"recall@{k}": (sum(bool(r[f"hit@{k}"]) for r in sub) / n if n else None) for k in ks}
        out["questions"] = n
        return out

    per_category = {CATEGORY_NAMES[c]: block([r for r in rows if r["category"] == c])
                    for c in SCORED_CATEGORIES if any(r["category"] == c for r in rows)}
    convs = list(dict.fromkeys(r["conversation"] for r in rows))
    per_conv = {c: block([r for r in rows if r["conversation"] == c]) for c in convs}
    return {"overall": block(rows), "per_category": per_category, "per_conversation": per_conv}
