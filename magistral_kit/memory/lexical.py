"""The lexical index: SQLite FTS5 with its own ``bm25()`` ranking (porter stemming), no hand-written BM25.

It lives in the cube's SQLite file beside the durable record, so a memory and its lexical entry are written in
ONE transaction (no index out of step after a crash) and a read-only view in another process sees new
memories as soon as they are committed. Used standalone (``LexicalIndex()``), it holds a private in-memory
database, which is what the retrieval tests and small experiments use.

Scores are ``-bm25()`` (FTS5 returns lower-is-better), i.e. positive, higher is better, zero for documents
that share no word with the query (those are absent from the result).
"""
from __future__ import annotations

import re
import sqlite3
from typing import Iterable

# Words that carry no retrieval signal in chat memories; dropped from QUERIES only (the index keeps every
# word, FTS5's idf already discounts common ones).
STOP = frozenset("""a an and are as at be been but by did do does for from had has have he her hers him his how i
if in into is it its me my of on or our she so that the their them they this to was we were what when where which
who whom whose why will with would you your yours about after before can could just like really so very too also
oh yeah hey wow thanks thank yes no not there here then than been being am im i'm it's that's""".split())
_WORD = re.compile(r"[a-z0-9]+")


def query_terms(query: str) -> list[str]:
    """The query's words, lower-cased, stop words, single characters (the "s" of "Ana's") and duplicates
    removed, in order. Every kept word must be scored in every memory that holds it, so a near-universal
    word costs time at scale and carries no signal."""
    out: list[str] = []
    for tok in _WORD.findall(query.lower()):
        if len(tok) > 1 and tok not in STOP and tok not in out:
            out.append(tok)
    return out


def _porter(word: str) -> str:
    """The stem FTS5's porter tokenizer stores for `word` (asked of SQLite itself, cached)."""
    stem = _STEMS.get(word)
    if stem is None:
        con = _stemmer()
        con.execute("DELETE FROM s")
        con.execute("INSERT INTO s(x) VALUES (?)", (word,))
        row = con.execute("SELECT term FROM s_vocab").fetchone()
        stem = _STEMS[word] = row[0] if row else word
    return stem


_STEMS: dict[str, str] = {}
_STEMMER: list[sqlite3.Connection] = []


def _stemmer() -> sqlite3.Connection:
    if not _STEMMER:
        con = sqlite3.connect(":memory:", check_same_thread=False)
        con.execute("CREATE VIRTUAL TABLE s USING fts5(x, tokenize='porter unicode61')")
        con.execute("CREATE VIRTUAL TABLE s_vocab USING fts5vocab(s, 'row')")
        _STEMMER.append(con)
    return _STEMMER[0]


def match_expression(query: str) -> str | None:
    """An FTS5 MATCH expression: any of the query's words (each quoted, so no word is read as an operator)."""
    terms = query_terms(query)
    return " OR ".join(f'"{t}"' for t in terms) if terms else None


class LexicalIndex:
    """BM25 over FTS5. ``add``/``remove`` write through `conn` (the caller's transaction, if any)."""

    def __init__(self, conn: sqlite3.Connection | None = None, prefix: str = "lexical") -> None:
        self._private = self._own = conn is None
        self.conn = conn if conn is not None else sqlite3.connect(":memory:", check_same_thread=False)
        self.docs, self.fts = f"{prefix}_docs", prefix

    def create(self) -> None:
        """Create the tables (doc ids; FTS5 text with matching rowids; its vocabulary) if missing."""
        self.conn.execute(f"CREATE TABLE IF NOT EXISTS {self.docs} "
                          f"(rowid INTEGER PRIMARY KEY, doc_id TEXT UNIQUE NOT NULL)")
        self.conn.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS {self.fts} USING fts5(body, "
                          f"tokenize='porter unicode61')")
        self.conn.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS {self.fts}_vocab USING fts5vocab({self.fts}, 'row')")

    def _ensure(self) -> None:
        if self._own:
            self.create()
            self._own = False  # created once

    def add(self, doc_id: str, text: str) -> None:
        """Index a document; adding an existing id replaces it."""
        self.add_many([(doc_id, text)])

    def add_many(self, docs: Iterable[tuple[str, str]]) -> None:
        self._ensure()
        c = self.conn
        for doc_id, text in docs:
            row = c.execute(f"SELECT rowid FROM {self.docs} WHERE doc_id=?", (doc_id,)).fetchone()
            if row is None:
                rowid = c.execute(f"INSERT INTO {self.docs}(doc_id) VALUES (?)", (doc_id,)).lastrowid
            else:
                rowid = row[0]
                c.execute(f"DELETE FROM {self.fts} WHERE rowid=?", (rowid,))
            c.execute(f"INSERT INTO {self.fts}(rowid, body) VALUES (?, ?)", (rowid, text))

    def remove(self, doc_id: str) -> None:
        """Forget a document (no error if unknown, so a retried delete is harmless)."""
        self.remove_many([doc_id])

    def remove_many(self, doc_ids: Iterable[str]) -> None:
        self._ensure()
        c = self.conn
        for doc_id in doc_ids:
            row = c.execute(f"SELECT rowid FROM {self.docs} WHERE doc_id=?", (doc_id,)).fetchone()
            if row is not None:
                c.execute(f"DELETE FROM {self.fts} WHERE rowid=?", (row[0],))
                c.execute(f"DELETE FROM {self.docs} WHERE rowid=?", (row[0],))

    def clear(self) -> None:
        self._ensure()
        self.conn.execute(f"DELETE FROM {self.fts}")
        self.conn.execute(f"DELETE FROM {self.docs}")

    def text(self, doc_id: str) -> str | None:
        """The text indexed for `doc_id` (what BM25 matches against), or None."""
        self._ensure()
        row = self.conn.execute(f"SELECT f.body FROM {self.fts} f JOIN {self.docs} d ON d.rowid=f.rowid "
                                f"WHERE d.doc_id=?", (doc_id,)).fetchone()
        return row[0] if row else None

    def __len__(self) -> int:
        self._ensure()
        return int(self.conn.execute(f"SELECT count(*) FROM {self.docs}").fetchone()[0])

    def __contains__(self, doc_id: object) -> bool:
        self._ensure()
        return self.conn.execute(f"SELECT 1 FROM {self.docs} WHERE doc_id=?", (doc_id,)).fetchone() is not None

    def scores(self, query: str, limit: int | None = None, ids: Iterable[str] | None = None) -> dict[str, float]:
        """BM25 score of the documents sharing a word with `query`: the best `limit` of all documents (all of
        them when neither `limit` nor `ids` is given), plus, when `ids` is given, those of these ids that
        match. The match expression is computed once; `ids` are scored in one query restricted by rowid, so
        FTS5 scores only them, not every document holding a query word."""
        self._ensure()
        expr = self._match(query)
        if expr is None:
            return {}
        out: dict[str, float] = {}
        if limit is not None or ids is None:
            inner = f"SELECT rowid, rank AS s FROM {self.fts} WHERE {self.fts} MATCH ? ORDER BY rank"
            args: list = [expr]
            if limit is not None:
                inner += " LIMIT ?"
                args.append(int(limit))
            sql = f"SELECT d.doc_id, -t.s FROM ({inner}) t JOIN {self.docs} d ON d.rowid = t.rowid"
            out.update((doc_id, float(s)) for doc_id, s in self.conn.execute(sql, args))
        wanted = [i for i in ids if i not in out] if ids is not None else []
        for s in range(0, len(wanted), 500):
            part = wanted[s:s + 500]
            rowids = [r[0] for r in self.conn.execute(
                f"SELECT rowid FROM {self.docs} WHERE doc_id IN ({','.join('?' * len(part))})", part)]
            if not rowids:
                continue
            sql = (f"SELECT d.doc_id, -bm25({self.fts}) FROM {self.fts} JOIN {self.docs} d ON d.rowid = "
                   f"{self.fts}.rowid WHERE {self.fts} MATCH ? AND {self.fts}.rowid IN "
                   f"({','.join('?' * len(rowids))})")
            out.update((doc_id, float(s)) for doc_id, s in self.conn.execute(sql, [expr, *rowids]))
        return out

    # A word held by more than this share of the memories (and more than COMMON_MIN of them) is left out of
    # the match: its idf is below log(1 + 1/share) ≈ 3.5, and scoring it means a pass over that share of the
    # cube on every search (bench/memory_scale.py: FTS5 scores every document that holds a query word to rank
    # the best few). COMMON_MAX bounds that pass in a very large cube, whatever the share.
    COMMON_SHARE = 0.03
    COMMON_MIN = 2000
    COMMON_MAX = 10_000

    def _match(self, query: str) -> str | None:
        terms = query_terms(query)
        if not terms:
            return None
        n = len(self)
        if n > self.COMMON_MIN:
            stems = {t: self.conn.execute(f"SELECT doc FROM {self.fts}_vocab WHERE term=?",
                                          (_porter(t),)).fetchone() for t in terms}
            cap = min(self.COMMON_MAX, max(self.COMMON_MIN, self.COMMON_SHARE * n))
            kept = [t for t in terms if stems[t] is None or stems[t][0] <= cap]
            terms = kept
        return " OR ".join(f'"{t}"' for t in terms) if terms else None

    def close(self) -> None:
        """Close a private database (a shared connection belongs to its owner)."""
        if self._private:
            self.conn.close()
