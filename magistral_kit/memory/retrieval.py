"""Retrieval improvements on top of dense cosine search, each switchable in `KitConfig` (section "retrieval").

Why: plain cosine between a question and a memory misses memories that share the question's rare words (names,
titles, places) but not its phrasing, and short turns ("Yes, last Friday!") whose meaning lives in the turn
before. Each option was measured on LoCoMo raw turns with all-MiniLM-L6-v2, settings chosen on the tuning
conversations and checked on the held-out ones: ``python bench/locomo_recall.py --ablation`` writes
``bench/results/locomo_ablation.json`` (the cumulative steps to the defaults; ``--ablation-steps 6,7`` measures
the alternatives that were not kept: RRF fusion, query rewriting), and the README's ablation table is
generated from it (``bench/report.py``).

The memory layer calls these hooks; nothing here touches a cube:

* `index_text(text, meta, options)` — the text that is EMBEDDED for a memory. It may prefix the speaker
  (``meta["speaker"]``) and date (``meta["date"]``) and prepend scoring-only context (``meta["context"]``:
  neighbouring turns). The stored memory text and its ``source`` (provenance) stay as given: context widens
  what a memory is *found by*, never what it claims to hold.
* `lexical_text(text, meta, options)` — the text the `LexicalIndex` (SQLite FTS5, `memory/lexical.py`) holds:
  `index_text` without the context.
* `query_text(query, options)` — the text embedded for a search (cheap rewriting, no LLM).
* `candidate_count(top_k, options)` — how many dense candidates to fetch before re-ranking.
* `rerank(query, candidates, top_k, options, lexical)` — the final order: fuses dense scores with
  `LexicalIndex` (BM25) scores. This is the hook ``Memory.search`` passes its candidates through.
* ``preset="memos"`` — none of the above: MemOS's own ``text_mem.search`` exactly as plain MemOS runs it (dense
  cosine over the stored vectors, query embedded as typed), scores restored by `memos_fixes`.

The table above was measured with the earlier hand-written BM25 (same Okapi formula, k1 1.2, b 0.75); the
FTS5 index stems with Porter where that one stripped a plural "s", so re-run bench/locomo_recall.py after a
change here.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from collections.abc import Mapping, Sequence
from typing import Any, Literal

# --- options ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrievalOptions:
    """The retrieval settings, read from `KitConfig` by `from_config` (one field per ``retrieval_*`` field).

    The defaults equal `KitConfig`'s (the best setting measured on the LoCoMo tuning conversations).
    """

    speaker_in_text: bool = True
    date_in_text: bool = True
    context_turns: int = 2
    lexical_weight: float = 0.3
    fusion: Literal["linear", "rrf"] = "linear"
    query_rewrite: bool = False
    candidates: int = 50
    preset: Literal["kit", "memos"] = "kit"

    @classmethod
    def from_config(cls, config: Any) -> "RetrievalOptions":
        """Options from a `KitConfig` (its ``retrieval_*`` fields); defaults where a field is absent."""
        return cls(**{f: getattr(config, f"retrieval_{f}") for f in cls.__dataclass_fields__
                      if hasattr(config, f"retrieval_{f}")})

    @classmethod
    def plain(cls) -> "RetrievalOptions":
        """Everything off: plain cosine over the memory text (the LoCoMo reference baseline without speaker)."""
        return cls(speaker_in_text=False, date_in_text=False, context_turns=0, lexical_weight=0.0,
                   query_rewrite=False)

    def replace(self, **changes: Any) -> "RetrievalOptions":
        return RetrievalOptions(**{**asdict(self), **changes})

    def describe(self) -> str:
        """A short label for tables and charts, e.g. ``speaker+ctx1+bm25(rrf,0.5)``."""
        parts = ["speaker" if self.speaker_in_text else "text"]
        if self.date_in_text:
            parts.append("date")
        if self.context_turns:
            parts.append(f"ctx{self.context_turns}")
        if self.lexical_weight:
            parts.append(f"bm25({self.fusion},{self.lexical_weight:g})")
        if self.query_rewrite:
            parts.append("rewrite")
        return "memos" if self.preset == "memos" else "+".join(parts)


# --- text hooks -------------------------------------------------------------------------------------
def lexical_text(text: str, meta: Mapping[str, Any] | None, options: RetrievalOptions) -> str:
    """What the `LexicalIndex` should hold for a memory: `index_text` WITHOUT the neighbouring context.

    BM25 over context-widened text finds the neighbour instead of the turn (recall@1 fell on the LoCoMo tuning
    conversations when tried), so context only ever enters the dense side.
    """
    return index_text(text, meta, replace(options, context_turns=0))


def index_text(text: str, meta: Mapping[str, Any] | None, options: RetrievalOptions) -> str:
    """What the memory layer embeds for a memory: ``[context…] (date) Speaker: text`` as the options say.

    ``meta["context"]`` is a list of already formatted neighbouring turns (oldest first); only the last
    ``options.context_turns`` are used. A memory without these meta keys is embedded as its text.
    """
    meta = meta or {}
    line = text
    if options.speaker_in_text and meta.get("speaker"):
        line = f"{meta['speaker']}: {line}"
    if options.date_in_text and meta.get("date"):
        line = f"({meta['date']}) {line}"
    context = list(meta.get("context") or [])[-options.context_turns:] if options.context_turns else []
    return "\n".join([*map(str, context), line])


_WH = re.compile(r"^\s*(what|when|where|who|whom|whose|which|why|how)\b(\s+(many|much|long|often|old))?"
                 r"(\s+(did|does|do|is|are|was|were|has|have|had|will|would|could|can|might))?\s+", re.I)


def query_text(query: str, options: RetrievalOptions) -> str:
    """The search text: with ``query_rewrite``, the question word and auxiliary are dropped so the query reads
    like the statement that answers it ("When did Caroline go to X?" → "Caroline go to X")."""
    if not options.query_rewrite:
        return query
    return _WH.sub("", query).rstrip(" ?") or query


def candidate_count(top_k: int, options: RetrievalOptions) -> int:
    """Dense candidates to fetch before `rerank` (re-ranking only reorders what the dense search found)."""
    return max(top_k, options.candidates) if options.lexical_weight else top_k


# --- lexical index: SQLite FTS5 bm25() (memory/lexical.py) ---------------------------------------------
from magistral_kit.memory.lexical import LexicalIndex, query_terms  # noqa: E402,F401 - re-exported


# --- fusion and the search hook ---------------------------------------------------------------------
RRF_K = 60


def fuse(dense: Mapping[str, float], lexical: Mapping[str, float], weight: float,
         method: Literal["rrf", "linear"] = "rrf") -> dict[str, float]:
    """One score per id of ``dense`` from dense and lexical scores.

    ``rrf``: reciprocal-rank fusion, ``1/(60+rank_dense) + weight/(60+rank_lexical)`` (ids without a lexical
    score get no lexical term) — robust to the two scales. ``linear``: ``cosine + weight * bm25/max_bm25``.
    """
    if not weight or not lexical:
        return dict(dense)
    if method == "linear":
        top = max((lexical.get(i, 0.0) for i in dense), default=0.0) or 1.0
        return {i: s + weight * lexical.get(i, 0.0) / top for i, s in dense.items()}
    if method != "rrf":
        raise ValueError(f"unknown fusion {method!r}. Fix: use 'rrf' or 'linear'.")
    dense_rank = {i: r for r, i in enumerate(sorted(dense, key=dense.__getitem__, reverse=True))}
    lex = sorted((i for i in dense if lexical.get(i, 0.0) > 0), key=lexical.__getitem__, reverse=True)
    lex_rank = {i: r for r, i in enumerate(lex)}
    return {i: 1.0 / (RRF_K + dense_rank[i]) + (weight / (RRF_K + lex_rank[i]) if i in lex_rank else 0.0)
            for i in dense}


def rerank(query: str, candidates: Sequence[tuple[str, float]], top_k: int, options: RetrievalOptions,
           lexical: "LexicalIndex | Mapping[str, float] | None" = None) -> list[tuple[str, float]]:
    """THE SEARCH HOOK. ``Memory.search`` calls it after its dense search.

    Args:
        query: the user's query as typed (not `query_text`'s rewrite: BM25 drops stop words itself).
        candidates: ``(memory id, cosine)`` for the `candidate_count(top_k, options)` nearest memories of
            ``query_text(query, options)``, any order.
        top_k: how many to return.
        options: the settings (`RetrievalOptions.from_config(config)`).
        lexical: the cube's `LexicalIndex` over `lexical_text` of every memory (NOT `index_text`: see
            `lexical_text`), or its BM25 scores for this query already computed (a mapping id → score: what
            `Memory.search` passes, restricted to the kinds and statuses asked for), or None (dense only).
    Returns:
        up to ``top_k`` ``(memory id, score)`` pairs, best first. Besides the candidates, ids may be among the
        ``options.candidates`` best BM25 matches that the dense search missed (scored with the lowest
        candidate cosine as their dense part): the caller looks those ids up in its store.
        With fusion the score is the fused one (RRF scores are small: ~0.01–0.03), else the cosine.
    """
    dense = {i: float(s) for i, s in candidates}
    scores = dense
    if options.lexical_weight and lexical is not None and len(lexical):
        lex = dict(lexical) if isinstance(lexical, Mapping) else lexical.scores(query)
        floor = min(dense.values(), default=0.0)
        for i in sorted(lex, key=lex.__getitem__, reverse=True)[:options.candidates]:
            dense.setdefault(i, floor)
        scores = fuse(dense, lex, options.lexical_weight, options.fusion)
    return sorted(scores.items(), key=lambda kv: kv[1], reverse=True)[:top_k]
