"""LoCoMo through the product's memory layer: ingest each conversation into a fresh cube, ask its questions.

Why a separate module from `locomo`: loading and the metric need nothing heavy; this part opens cubes
(`magistral_kit.memory.cube`), embeds, and optionally runs the extractor model.

Two ingestion modes (`ingest`):

* ``raw``: each dialogue turn is one memory — its text, provenance ``[dia_id]``, meta ``speaker``, ``date``
  (the session's), ``session``; with ``context_turns`` > 0 also ``context`` (preceding turns of the session),
  which `retrieval.index_text` embeds for scoring only: the provenance stays the one turn.
* ``extract``: MemOS extraction (`extraction.extract`) over each session with the loaded model; each extracted
  memory's provenance is the session turns it restates, found by embedding similarity (`align_sources`), so a
  memory only "holds" the turns it matches, never its whole session.

`evaluate` asks every scored question (categories 1–4 with evidence) and returns one row per question with
what was retrieved, so misses can be shown in full (`misses_html`).
"""
from __future__ import annotations

import html
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from magistral_kit.config import tmp_dir
from magistral_kit.evaluation.locomo import (CATEGORY_NAMES, KS, REFERENCE_BASELINE, Conversation, Turn, score_question,
                     summarise)
from magistral_kit.evaluation.synthetic import open_locomo  # noqa: F401  (notebook 03's data cell)
from magistral_kit.memory.retrieval import RetrievalOptions

LLM = Callable[[list[dict], int], str]
ALIGN_MIN_SIMILARITY = 0.35
ALIGN_MARGIN = 0.08
ALIGN_MAX_TURNS = 3


def turn_line(t: Turn) -> str:
    """A turn as one line ``Speaker: text`` (what the context and the extractor see)."""
    return f"{t.speaker}: {t.text}"


# --- raw --------------------------------------------------------------------------------------------
def raw_items(conv: Conversation, context_turns: int = 0) -> list[dict[str, Any]]:
    """One `Memory.add_many` item per dialogue turn; provenance is exactly that turn's id."""
    items = []
    for i, t in enumerate(conv.turns):
        meta: dict[str, Any] = {"speaker": t.speaker, "date": t.date, "session": t.session, "dia_id": t.dia_id}
        if context_turns:
            before = [u for u in conv.turns[max(0, i - context_turns):i] if u.session == t.session]
            meta["context"] = [turn_line(u) for u in before]
        items.append({"text": t.text, "source": [t.dia_id], "kind": "episodic", "meta": meta})
    return items


# --- extract ----------------------------------------------------------------------------------------
def session_messages(conv: Conversation, turns: Sequence[Turn]) -> list[dict[str, str]]:
    """A session as chat messages: speaker A is the user, speaker B the assistant, names kept in the text."""
    return [{"role": "user" if t.speaker == conv.speaker_a else "assistant", "content": turn_line(t)}
            for t in turns]


def align_sources(texts: Sequence[str], turns: Sequence[Turn], encode: Callable[[list[str]], np.ndarray],
                  min_similarity: float = ALIGN_MIN_SIMILARITY, margin: float = ALIGN_MARGIN,
                  max_turns: int = ALIGN_MAX_TURNS) -> list[list[str]]:
    """Provenance of each extracted text: the turns it restates.

    A turn counts when its cosine with the text is ≥ ``min_similarity`` and within ``margin`` of the best
    turn (at most ``max_turns``). A text matching no turn that well (a hallucination, the prompt's example
    copied) gets no provenance: it cannot be credited with any evidence.
    """
    if not texts or not turns:
        return [[] for _ in texts]
    sims = encode(list(texts)) @ encode([turn_line(t) for t in turns]).T
    out = []
    for row in sims:
        order = np.argsort(-row)[:max_turns]
        best = float(row[order[0]])
        out.append([turns[j].dia_id for j in order if row[j] >= min_similarity and row[j] >= best - margin])
    return out


@dataclass
class ExtractStats:
    """How extraction went over a conversation (the honest numbers next to raw)."""

    sessions: int = 0
    memories: int = 0
    unaligned: int = 0
    rejected: int = 0  # items not grounded in the session's lines (memory.grounding)
    paths: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def extract_items(conv: Conversation, llm: LLM, encode: Callable[[list[str]], np.ndarray],
                  max_new_tokens: int = 256, progress: bool = True) -> tuple[list[dict[str, Any]], ExtractStats]:
    """MemOS extraction per session, each memory aligned to the turns it restates."""
    from magistral_kit.memory.extraction import extract

    stats = ExtractStats()
    items: list[dict[str, Any]] = []
    started = time.perf_counter()
    for s, turns in _bar(conv.sessions.items(), progress, f"extract {conv.sample_id}", len(conv.sessions)):
        # the session's lines are the source the items must be grounded in (extraction.extract)
        result = extract("\n".join(turn_line(t) for t in turns), llm, max_new_tokens)
        stats.sessions += 1
        stats.paths[result.path] = stats.paths.get(result.path, 0) + 1
        stats.rejected += len(result.rejected)
        texts = [i.text for i in result.items]
        for item, source in zip(result.items, align_sources(texts, turns, encode)):
            stats.unaligned += not source
            items.append({"text": item.text, "source": source, "kind": "extracted",
                          "meta": {**item.meta(), "date": turns[0].date, "session": s}})
    stats.memories = len(items)
    stats.seconds = time.perf_counter() - started
    return items, stats


# --- cubes ------------------------------------------------------------------------------------------
def fresh_cube_dir(root: str | Path | None = None) -> Path:
    """A new empty folder for one cube, under ``tmp/locomo`` by default (never reused)."""
    base = Path(root) if root is not None else tmp_dir() / "locomo"
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="cube-", dir=base))


def ingest(conv: Conversation, mode: str = "raw", options: RetrievalOptions | None = None,
           cube_dir: str | Path | None = None, llm: LLM | None = None, max_new_tokens: int = 256,
           embedder: str = "embedded", progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """(open Memory, info) for ``conv`` ingested into a fresh cube in ``mode`` 'raw' or 'extract'."""
    from magistral_kit.memory.cube import open_memory

    if mode not in ("raw", "extract"):
        raise ValueError(f"mode {mode!r} is unknown. Fix: use 'raw' or 'extract'.")
    if mode == "extract" and llm is None:
        raise ValueError("extract mode needs llm= (messages, max_new_tokens) -> text. Fix: pass "
                         "locomo_eval.model_llm(load_model(config), config).")
    options = options or RetrievalOptions()
    mem = open_memory(cube_dir or fresh_cube_dir(), embedder=embedder, retrieval=options)
    if len(mem):
        raise ValueError(f"cube {mem.path} is not empty ({len(mem)} memories). Fix: pass a new folder.")
    started = time.perf_counter()
    info: dict[str, Any] = {"conversation": conv.sample_id, "mode": mode, "cube": str(mem.path)}
    if mode == "raw":
        items = raw_items(conv, options.context_turns)
    else:
        items, stats = extract_items(conv, llm, mem.embed, max_new_tokens, progress)
        info["extraction"] = stats.__dict__
    batch = 128
    for start in _bar(range(0, len(items), batch), progress, f"ingest {conv.sample_id}",
                      -(-len(items) // batch)):
        mem.add_many(items[start:start + batch])
    info.update(memories=len(mem), seconds=round(time.perf_counter() - started, 2))
    return mem, info


def extractor(mode: str, config: Any) -> LLM | None:
    """The extractor callable ``extract`` mode needs (loads `config`'s model, cached); None for ``raw``."""
    if mode != "extract":
        return None
    from magistral_kit.model.loading import load_model

    return model_llm(load_model(config), config)


def model_llm(lm: Any, config: Any) -> LLM:
    """The loaded model as the extractor's callable (greedy, like the chat's extractor)."""
    from magistral_kit.model.generation import generate_reply

    greedy = config.replace(temperature=0.0)
    return lambda messages, max_new_tokens: generate_reply(lm, messages, greedy, max_new_tokens=max_new_tokens).raw


# --- questions --------------------------------------------------------------------------------------
def evaluate(conv: Conversation, mem: Any, ks: Sequence[int] = KS, progress: bool = True) -> list[dict[str, Any]]:
    """One row per scored question: category, hit@k, evidence and the top max(ks) retrieved memories."""
    rows = []
    qs = conv.scored_questions()
    for q in _bar(qs, progress, f"questions {conv.sample_id}", len(qs)):
        hits = mem.search(q.question, max(ks))
        rows.append({"conversation": conv.sample_id, "category": q.category, "question": q.question,
                     "answer": q.answer, "evidence": list(q.evidence),
                     **{f"hit@{k}": v for k, v in score_question(q, [h.source for h in hits], ks).items()},
                     "retrieved": [{"source": list(h.source), "speaker": h.meta.get("speaker", ""),
                                    "text": h.text, "score": round(float(h.score), 4)} for h in hits]})
    return rows


@dataclass
class Run:
    """Rows and summary of one evaluation over some conversations."""

    mode: str
    options: RetrievalOptions
    rows: list[dict[str, Any]]
    ingestion: list[dict[str, Any]]
    seconds: float

    @property
    def summary(self) -> dict[str, Any]:
        return summarise(self.rows)


def run(conversations: Sequence[Conversation], mode: str = "raw", options: RetrievalOptions | None = None,
        llm: LLM | None = None, max_new_tokens: int = 256, embedder: str = "embedded",
        cube_root: str | Path | None = None, keep_cubes: bool = False, progress: bool = True) -> Run:
    """Ingest each conversation into its own fresh cube, ask its questions, close (and delete) the cube."""
    options = options or RetrievalOptions()
    rows: list[dict[str, Any]] = []
    ingestion = []
    started = time.perf_counter()
    for conv in conversations:
        mem, info = ingest(conv, mode, options, fresh_cube_dir(cube_root), llm, max_new_tokens, embedder,
                           progress)
        try:
            rows.extend(evaluate(conv, mem, progress=progress))
        finally:
            mem.close()
            if not keep_cubes:
                shutil.rmtree(mem.path, ignore_errors=True)
        ingestion.append(info)
    return Run(mode, options, rows, ingestion, round(time.perf_counter() - started, 2))


def baseline_options() -> RetrievalOptions:
    """The reference baseline: plain cosine over ``Speaker: text`` (its reference figures: `REFERENCE_BASELINE`)."""
    return RetrievalOptions.plain().replace(speaker_in_text=True)


# --- display ----------------------------------------------------------------------------------------
def category_table(summary: dict[str, Any], baseline: dict[str, Any] | None = None) -> "Any":
    """Per-category recall as a DataFrame (plus the overall row), with baseline r@5 beside it when given."""
    import pandas as pd

    recs = []
    for name, block in [*summary["per_category"].items(), ("overall", summary["overall"])]:
        rec = {"category": name, "questions": block["questions"],
               **{f"recall@{k}": round(block[f"recall@{k}"], 3) for k in KS}}
        if baseline is not None:
            ref = baseline["overall"] if name == "overall" else baseline["per_category"].get(name)
            rec["baseline recall@5"] = round(ref["recall@5"], 3) if ref else None
        recs.append(rec)
    return pd.DataFrame(recs).set_index("category")


def bar_chart(summary: dict[str, Any], baseline: dict[str, Any] | None = None, k: int = 5) -> "Any":
    """Plotly bars of recall@k per category and overall: this run vs the baseline (measured or reference)."""
    import plotly.graph_objects as go

    names = [*summary["per_category"], "overall"]
    ours = [(summary["overall"] if n == "overall" else summary["per_category"][n])[f"recall@{k}"] for n in names]
    if baseline is not None:
        base = [(baseline["overall"] if n == "overall" else baseline["per_category"].get(n, {})).get(f"recall@{k}")
                for n in names]
        base_label = "baseline (measured)"
    else:
        ref = REFERENCE_BASELINE["per_category_recall@5"]
        base = [REFERENCE_BASELINE["recall@5"] if n == "overall" else ref.get(n) for n in names]
        base_label = "baseline (reference, r@5)"
    fig = go.Figure([go.Bar(name=base_label, x=names, y=base), go.Bar(name="this run", x=names, y=ours)])
    fig.update_layout(barmode="group", yaxis_title=f"recall@{k}", yaxis_range=[0, 1],
                      title=f"LoCoMo recall@{k} by category", height=380)
    return fig


def misses(rows: Sequence[dict[str, Any]], k: int = 5, n: int = 3) -> list[dict[str, Any]]:
    """The first ``n`` questions missed at k, one per category where possible."""
    missed = [r for r in rows if not r[f"hit@{k}"]]
    picked, seen = [], set()
    for r in missed:
        if r["category"] not in seen:
            picked.append(r)
            seen.add(r["category"])
    picked += [r for r in missed if r not in picked]
    return picked[:n]


def misses_html(rows: Sequence[dict[str, Any]], conversations: Sequence[Conversation], k: int = 5,
                n: int = 3) -> str:
    """Each miss in full: the question, its evidence turns' text, and what was retrieved instead."""
    by_id = {c.sample_id: c for c in conversations}
    blocks = []
    for r in misses(rows, k, n):
        conv = by_id[r["conversation"]]
        ev = "".join(f"<li><code>{e}</code> {html.escape(_turn_text(conv, e))}</li>" for e in r["evidence"])
        got = "".join(f"<li><code>{', '.join(h['source']) or '—'}</code> ({h['score']:.3f}) "
                      f"{html.escape(h.get('speaker') or '')}{': ' if h.get('speaker') else ''}"
                      f"{html.escape(h['text'][:200])}</li>" for h in r["retrieved"][:k])
        blocks.append(f"<div style='margin-bottom:1em'><b>[{CATEGORY_NAMES[r['category']]}, conversation "
                      f"{r['conversation']}]</b> {html.escape(r['question'])} — <i>answer:</i> "
                      f"{html.escape(r['answer'])}<br>evidence:<ul>{ev}</ul>retrieved top {k}:<ol>{got}</ol></div>")
    return "".join(blocks) or "<i>no misses</i>"


def _turn_text(conv: Conversation, dia_id: str) -> str:
    t = conv.turn(dia_id)
    return f"{t.speaker} ({t.date}): {t.text}" if t else "(no such turn in the dialogue)"


def _bar(it: Any, progress: bool, desc: str, total: int | None = None) -> Any:
    if not progress:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, total=total, leave=False)
