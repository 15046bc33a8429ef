"""Is an extracted memory grounded in the user's message? A rule written on labelled extractor outputs.

An item is grounded when what it names comes from what the user said: every name and number in it appears
in the user's message, and most of its content words do too (after light normalisation: case, plurals and
verb endings, "the user" for "I"). Anything else — words from the assistant's reply, the extraction
prompt, or nowhere — means the extractor made it up, and the item is rejected.

The rule and its thresholds were written on one half of `tests/data/grounding_labels.jsonl` (real outputs
of the embedded extractor, labelled by hand); `bench/grounding_eval.py` reports precision and recall on
the other half, and `tests/test_grounding.py` holds the rule to them.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

MIN_CONTENT_SHARE = 0.75  # of the item's content words, the share that must occur in the user's message

# Words that carry no fact of their own, plus the words the extraction rewrites "I" into.
STOPWORDS = frozenset("""
a an the and or but if then so of to in on at by for with from about as into over after before under up down
out off is am are was were be been being do does did done have has had having will would shall should can
could may might must i me my mine myself you your yours we our ours us he him his she her hers it its they
them their theirs this that these those there here what which who whom whose when where why how not no nor
very just also too than now still yet all any some each every both more most other such only own same
user users user's person people someone their's s t d ll m re ve y o
""".split())

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)?", re.U)


@dataclass
class Verdict:
    """The grounding decision for one item, with the words that were not found in the user's message."""

    grounded: bool
    content_share: float
    missing_names: list[str] = field(default_factory=list)
    missing_words: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        if self.grounded:
            return "grounded in the user's message"
        parts = []
        if self.missing_names:
            parts.append("names/numbers the user did not say: " + ", ".join(self.missing_names[:6]))
        if self.missing_words:
            parts.append(f"only {self.content_share:.0%} of its words are the user's (missing: "
                         + ", ".join(self.missing_words[:6]) + ")")
        return "; ".join(parts) or "no content words"


def _fold(text: str) -> str:
    text = unicodedata.normalize("NFKD", text)
    return "".join(c for c in text if not unicodedata.combining(c)).lower().replace("’", "'")


def _stem(word: str) -> str:
    """A crude stem: enough to match plurals, possessives and -ing/-ed forms of the same word."""
    word = word.split("'")[0]
    for suffix in ("ing", "ed", "es", "s", "ly"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def words(text: str) -> list[str]:
    return _WORD.findall(_fold(text))


def _is_name(raw: str, first: bool) -> bool:
    return any(c.isdigit() for c in raw) or (raw[:1].isupper() and not first and raw.lower() not in STOPWORDS)


def check(item: str, user_text: str) -> Verdict:
    """Grounding verdict for `item` against the user's message `user_text`."""
    source_words = words(user_text)
    source = set(source_words) | {_stem(w) for w in source_words}
    source_prefixes = {w[:5] for w in source_words if len(w) >= 6}
    raw_tokens = _WORD.findall(item.replace("’", "'"))
    missing_names, content, missing = [], [], []
    for n, raw in enumerate(raw_tokens):
        w = _fold(raw)
        if w in STOPWORDS:
            continue
        found = w in source or _stem(w) in source or (len(w) >= 6 and w[:5] in source_prefixes)
        if _is_name(raw, n == 0 or raw_tokens[n - 1] in ".!?"):
            if not found:
                missing_names.append(raw)
            continue
        content.append(w)
        if not found:
            missing.append(raw)
    share = 1.0 if not content else 1 - len(missing) / len(content)
    has_substance = bool(content) or any(_fold(t) not in STOPWORDS for t in raw_tokens)
    grounded = has_substance and not missing_names and share >= MIN_CONTENT_SHARE
    return Verdict(grounded, share, missing_names, missing)
