"""What the notebooks run when a researcher has not brought their own data: a default conversation, a set
of demo memories, and the few steps around them (reset a cube, send or ingest many messages with a progress
bar, check that a fact of one session was retrieved in the next).

Why a module: the notebooks hold no logic. Every step a notebook cell takes that is more than one kit call
lives here, tested, and named for what it shows.

    demo.reset_cube(config)                          # start the demo cube empty
    turns = demo.send_many(chat, messages)           # a bar over the turns
    demo.fact_recall(turn, "Porto", session_1_turns) # was a session-1 memory about Porto retrieved?
"""
from __future__ import annotations

import html
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from magistral_kit.config import KitConfig

# A first session that states facts, and a question for the second session that needs one of them.
SESSION_1 = [
    "Hi! My name is Lena and I live in Porto, close to the river.",
    "My sister Ana works as a marine biologist in Lisbon.",
    "I play the cello in an amateur orchestra every Thursday.",
]
SESSION_2_QUESTION = "Which city do I live in?"
FACT_KEYWORD = "Porto"

# Demo memories for the inspector: three short "sessions" about different topics, so the map has structure.
DEMO_SESSIONS: dict[str, list[str]] = {
    "demo-home": [
        "Lena lives in Porto, close to the Douro river.",
        "Lena's flat has a small balcony with tomato plants.",
        "Lena moved to Porto from Braga in 2019.",
        "Lena's neighbour Rui fixes bicycles in his garage.",
        "Lena takes the tram to work most mornings.",
        "Lena's favourite cafe serves pastel de nata at 8 am.",
        "Lena prefers rainy days for reading at home.",
        "Lena's landlord raised the rent this spring.",
        "Lena keeps a cat called Miso.",
        "Miso the cat sleeps on the bookshelf.",
        "Lena wants to repaint the kitchen yellow.",
        "Lena's building has no lift; she lives on the fourth floor.",
    ],
    "demo-family": [
        "Lena's sister Ana is a marine biologist in Lisbon.",
        "Ana studies octopus behaviour at the aquarium.",
        "Lena's mother teaches mathematics at a secondary school.",
        "Lena's father retired from the railway company.",
        "The family meets in Braga for Christmas.",
        "Ana's birthday is on the 3rd of March.",
        "Lena's grandmother makes the best caldo verde.",
        "Ana is learning to dive in cold water.",
        "Lena's cousin Tiago is getting married in June.",
        "Lena's parents celebrate 35 years of marriage this year.",
        "Ana sends Lena photos of jellyfish.",
        "Lena calls her mother every Sunday evening.",
    ],
    "demo-music": [
        "Lena plays the cello in an amateur orchestra.",
        "The orchestra rehearses every Thursday evening.",
        "Lena's cello was built in 1962 in Mittenwald.",
        "The next concert programme includes Dvořák's ninth symphony.",
        "Lena practises scales for thirty minutes before work.",
        "Lena's cello teacher is strict about bow hold.",
        "The orchestra's conductor is a retired oboist.",
        "Lena dreams of playing the Elgar cello concerto.",
        "Lena bought new strings for the autumn season.",
        "The orchestra plays a charity concert in December.",
        "Lena listens to Jacqueline du Pré recordings on the tram.",
        "Lena's stand partner is a chemistry student.",
    ],
}


def demo_items(n: int | None = None) -> list[dict]:
    """The demo memories as `Memory.add_many` items, interleaved across sessions, at most `n` of them.

    Each item's provenance is a made-up turn id of its session (``demo-home-t3``), so the inspector's map
    can colour by session exactly as it does for a real chat's memories.
    """
    rows: list[dict] = []
    longest = max(len(v) for v in DEMO_SESSIONS.values())
    for i in range(longest):
        for session, texts in DEMO_SESSIONS.items():
            if i < len(texts):
                rows.append({"text": texts[i], "source": [f"{session}-t{i + 1}"], "kind": "manual",
                             "meta": {"session": session}})
    return rows[:n] if n is not None else rows


# --- cubes --------------------------------------------------------------------------------------------
def cube_path(cube: str | Path) -> Path:
    """The folder of a cube name (a bare name lives under data/cubes/, like `KitConfig.cube_dir`)."""
    return KitConfig(cube_dir=str(cube)).cube_path


def reset_cube(cube: KitConfig | str | Path, enabled: bool = True) -> Path:
    """Delete a cube so the notebook starts it empty (refused when another process holds it open).

    Only folders that are kit cubes (`memory.cube.is_cube`) or empty are removed: a typo cannot delete a folder
    of something else. `enabled=False` does nothing (a notebook's ``RESET`` parameter passes through).
    """
    from magistral_kit.memory.cube import is_cube, open_memory

    path = cube.cube_path if isinstance(cube, KitConfig) else cube_path(cube)
    if not enabled or not path.exists():
        return path
    if not is_cube(path) and any(path.iterdir()):
        raise ValueError(f"{path} is not a memory cube (no memories.sqlite); refusing to delete it. Fix: pick "
                         "another cube name, or remove the folder yourself")
    if is_cube(path):
        open_memory(path).close()  # closes this process's open instance; raises if another process holds it
    shutil.rmtree(path)
    return path


def build_demo_cube(cube: str | Path = "inspector-demo", n: int | None = None, reset: bool = True,
                    batch_size: int = 8, progress: bool = True) -> Any:
    """A small cube of demo memories (three sessions), ingested with a progress bar; returns the open Memory."""
    from magistral_kit.memory.cube import open_memory

    if reset:
        reset_cube(cube)
    memory = open_memory(cube_path(cube))
    if len(memory) == 0:
        ingest(memory, demo_items(n), batch_size=batch_size, progress=progress)
    return memory


def open_if_present(cube: str | Path, read_only: bool = True) -> Any | None:
    """Open a cube read-only (works beside a running chat) if it exists; None when there is none."""
    from magistral_kit.memory.cube import is_cube, open_memory

    path = cube_path(cube)
    if not is_cube(path):
        return None
    return open_memory(path, read_only=read_only)


# --- many messages with a progress bar ----------------------------------------------------------------
def ingest(memory: Any, items: Iterable[dict | str], batch_size: int = 32, progress: bool = True,
           desc: str = "ingesting memories") -> list[str]:
    """Store many memories in batches (one durable journal operation each) behind a progress bar."""
    from tqdm.auto import tqdm

    rows = [{"text": it} if isinstance(it, str) else dict(it) for it in items]
    ids: list[str] = []
    with tqdm(total=len(rows), desc=desc, unit="memory", disable=not progress or not rows) as bar:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            ids += memory.add_many(chunk)
            bar.update(len(chunk))
    return ids


def send_many(chat: Any, messages: Sequence[str], progress: bool = True) -> list[Any]:
    """Send several messages as turns of one conversation, a progress bar over them; returns the Turns."""
    from tqdm.auto import tqdm

    turns = []
    for text in tqdm(list(messages), desc="turns", unit="turn", disable=not progress or not messages):
        turns.append(chat.send(text))
    return turns


# --- did memory carry across sessions? ---------------------------------------------------------------
@dataclass
class FactRecall:
    """Whether a turn retrieved a memory that came from earlier turns and contains a fact keyword."""

    keyword: str
    earlier_turns: list[str]
    matches: list[Any] = field(default_factory=list)  # memory.Hit
    retrieved: int = 0

    @property
    def found(self) -> bool:
        return bool(self.matches)

    @property
    def best_score(self) -> float | None:
        return max((h.score for h in self.matches), default=None)

    def to_html(self) -> str:
        verdict = ("<b style='color:#070'>yes</b>" if self.found else "<b style='color:#b00'>no</b>")
        rows = "".join(f"<li>{h.score:.3f} — {html.escape(h.text)} <span style='color:#666'>(from "
                       f"{html.escape(', '.join(h.source))})</span></li>" for h in self.matches)
        return (f"<div>memory from the earlier session containing <code>{html.escape(self.keyword)}</code> "
                f"retrieved: {verdict} ({len(self.matches)} of {self.retrieved} retrieved)"
                f"<ul>{rows}</ul></div>")

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        return f"FactRecall({self.keyword!r}, found={self.found}, matches={len(self.matches)}/{self.retrieved})"


def fact_recall(turn: Any, keyword: str, earlier: Iterable[Any]) -> FactRecall:
    """Check `turn.retrieved` for a memory whose provenance is one of the `earlier` turns (Turn objects or
    turn ids) and whose text contains `keyword` (case-insensitive)."""
    ids = [t if isinstance(t, str) else t.id for t in earlier]
    wanted = set(ids)
    key = keyword.casefold()
    matches = [h for h in turn.retrieved if wanted & set(h.source) and key in h.text.casefold()]
    return FactRecall(keyword, ids, matches, len(turn.retrieved))


def turns_table(turns: Sequence[Any]) -> Any:
    """One row per turn: what was asked, answered, retrieved, stored, and the seconds per step."""
    from magistral_kit.notebook.tables import Table

    rows = []
    for t in turns:
        row = {"turn": t.id, "user": t.user, "answer": t.answer, "retrieved": len(t.retrieved),
               "stored": len(t.stored_ids),
               "extraction": t.extraction.path if t.extraction is not None else "off",
               "seconds": round(t.timings.total, 2)}
        row.update({f"{k} s": round(v, 2) for k, v in t.timings.steps.items()})
        rows.append(row)
    return Table(rows)


def versions() -> Any:
    """The versions that decide a run's numbers (Python, torch, transformers, MemOS, qdrant, the kit) as a
    one-row table, for the imports cell of every notebook."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import pandas as pd

    row = {"python": platform.python_version()}
    for dist in ("magistral-kit", "torch", "transformers", "MemoryOS", "qdrant-client", "plotly"):
        try:
            row[dist] = version(dist)
        except PackageNotFoundError:
            row[dist] = "(not installed)"
    from magistral_kit.notebook.tables import Table

    return Table([row], index=["version"])


class Stopwatch:
    """``with Stopwatch() as t: ...`` then ``t.seconds`` — the time a notebook records for a step."""

    def __enter__(self) -> "Stopwatch":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start

    def __repr__(self) -> str:
        return f"{self.seconds:.2f} s"
