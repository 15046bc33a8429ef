"""Is an extracted memory grounded in the user's message? A rule written on labelled extractor outputs.

An item is grounded when what it names comes from what the user said: every name and number in it appears
in the user's message, and most of its content words do too (after light normalisation: case, plurals and
verb endings, "the user" for "I"). Anything else — words from the assistant's reply, the extraction
prompt, or nowhere — means the extractor made it up, and the item is rejected. So are items that state
nothing (a bare word, or cut mid-claim before any whole sentence), items using the extraction prompt's
own words ("memory", "summary", "fact") the user did not use, and a clause written in a loop that is not the
user's own. It checks words, not meaning: a changed relation or negation made of the user's words passes.

The rule and its thresholds were written on one half of `tests/data/grounding_labels.jsonl` (real outputs
of the embedded extractor, labelled by hand); `bench/grounding_eval.py` reports precision and recall on
the other half, and `tests/test_grounding.py` holds the rule to them.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

MIN_CONTENT_SHARE = 0.85  # of the item's content words, the share that must occur in the user's message
LOOP_REPEATS = 2  # a clause written twice or more is a generation loop
MIN_WORDS = 3  # fewer words state no fact ("19", "Lisbon")

# Words that carry no fact of their own, plus the words the extraction rewrites "I" into.
STOPWORDS = frozenset("""
a an the and or but if then so of to in on at by for with from about as into over after before under up down
out off is am are was were be been being do does did done have has had having will would shall should can
could may might must i me my mine myself you your yours we our ours us he him his she her hers it its they
them their theirs this that these those there here what which who whom whose when where why how not no nor
very just also too than now still yet all any some each every both more most other such only own same
user users user's person people someone their's s t d ll m re ve y o
el la los las un una unos unas de del al y o que en con por para su sus mi mis es son usuario usuaria
le les une des du et ou en au aux avec pour sur son sa ses mon ma mes est sont utilisateur utilisatrice
der die das den dem des ein eine einen einem und oder mit von zu im am ist sind sein seine mein meine nutzer
il lo gli uno di da con per e utente o os um uma do da dos das no na com seu sua meu minha
""".split())

# The extraction prompt's own vocabulary: in an item, but not in the user's message, it was copied from the
# prompt ("The user's memory is a long-term memory.", "This is a fact.", "The summary is").
PROMPT_WORDS = frozenset("""
memory memories summary fact facts message messages sentence json key tags value long-term longterm
usermemory longtermmemory extract
""".split())
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)?", re.U)
# people the user talks about: "my sister Ana …" is not a fact about the user
RELATIONS = frozenset("""
friend friends sister sisters brother brothers mother mom mum father dad dads parents parent son sons daughter
daughters wife husband partner boyfriend girlfriend boss manager colleague colleagues coworker neighbour
neighbor cousin aunt uncle grandmother grandma grandfather grandpa grandparents kid kids child children baby
family team teacher mentor roommate fiance fiancee nephew niece
""".split())
_USER_SUBJECT = re.compile(r"\b(the user|user's|users|i|i'm|my|me)\b", re.I)


@dataclass
class Verdict:
    """The grounding decision for one item, with the words that were not found in the user's message."""

    grounded: bool
    content_share: float
    missing_names: list[str] = field(default_factory=list)
    missing_words: list[str] = field(default_factory=list)
    other_person: str | None = None  # the message is about this person, the item about the user
    too_short: bool = False
    prompt_words: list[str] = field(default_factory=list)  # the extraction prompt's words the user did not use
    loop: str | None = None  # a clause the extractor repeated in a loop, not the user's own words

    @property
    def reason(self) -> str:
        if self.grounded:
            return "grounded in the user's message"
        parts = []
        if self.too_short:
            parts.append("states no fact (a word or number alone, or cut mid-claim)")
        if self.other_person:
            parts.append(f"says of the user what the message says of the user's {self.other_person}")
        if self.loop:
            parts.append(f"a generation loop ('{self.loop}' repeated), not the user's words")
        if self.prompt_words:
            parts.append("words of the extraction prompt, not the user's: " + ", ".join(self.prompt_words[:6]))
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
    source |= {w.replace("our", "or") for w in source_words if len(w) >= 6}  # favourite / favorite
    source_prefixes = {w[:5] for w in source_words if len(w) >= 6}
    raw_tokens = _WORD.findall(item.replace("’", "'"))
    missing_names, content, missing = [], [], []
    for n, raw in enumerate(raw_tokens):
        w = _fold(raw)
        if w in STOPWORDS:
            continue
        found = w in source or _stem(w) in source or (len(w) >= 6 and w.replace("our", "or") in source)
        if _is_name(raw, n == 0 or raw_tokens[n - 1] in ".!?"):  # names and numbers: the user's exact words
            if not found:
                missing_names.append(raw)
            continue
        found = found or (len(w) >= 6 and w[:5] in source_prefixes)
        content.append(w)
        if not found:
            missing.append(raw)
    share = 1.0 if not content else 1 - len(missing) / len(content)
    too_short = len(raw_tokens) < MIN_WORDS or not any(not w.isdigit() for w in content + [
        _fold(t) for t in raw_tokens if _is_name(t, False)])
    other = _other_person(item, raw_tokens, source_words, user_text)
    cut = bool(raw_tokens) and _fold(raw_tokens[-1]) in _DANGLING and not item.rstrip().endswith(("?", "!"))
    cut = cut or item.rstrip().endswith(("...", "…"))  # the extractor's own mark of a cut
    # cut after whole sentences (the 120-character value cap): the whole sentences still state their claim
    cut = cut and not re.search(r"\w[.!?]\s+\S", item)
    too_short = too_short or cut
    prompt = sorted({w for w in words(item.replace("-", "")) if w in PROMPT_WORDS} - set(words(user_text.replace("-", ""))))
    loop = _loop(item, user_text)
    grounded = (not too_short and not missing_names and share >= MIN_CONTENT_SHARE and other is None
                and not prompt and loop is None)
    return Verdict(grounded, share, missing_names, missing, other, too_short, prompt, loop)


def _expand(text: str) -> str:
    """English contractions written out, so that "I'm at a museum" and "I am at a museum" are the same words."""
    for short, full in (("'m", " am"), ("'re", " are"), ("'ve", " have"), ("'ll", " will"), ("n't", " not")):
        text = text.replace(short, full).replace(short.replace("'", "’"), full)
    return text


def _loop(item: str, user_text: str) -> str | None:
    """A clause written LOOP_REPEATS times or more ("I am a bird, I am a bird, …") that the user did not write
    word for word: the small extractor's degenerate loop, whose words may all be the user's."""
    clauses = [" ".join(words(_expand(c))) for c in re.split(r"[.,;:!?]+", item)]
    said = " ".join(words(_expand(user_text)))
    for c in set(clauses):
        if c and clauses.count(c) >= LOOP_REPEATS and c not in said:
            return c
    return None


# a statement ending on one of these was cut mid-claim ("The support group has made me")
_DANGLING = frozenset("the a an to of for with at in on and or but me my is was are called that so by from "
                      "as your their his her our".split())


def _other_person(item: str, item_tokens: list[str], source_words: list[str], user_text: str) -> str | None:
    """The relation ("sister") when the message is about someone the user knows but the item puts it on
    the user ("The user moved to Lisbon" from "My friend Ana moved to Lisbon")."""
    rel = next((w for prev, w in zip(source_words, source_words[1:]) if prev in ("my", "our") and w in RELATIONS),
               None)
    if rel is None or not _USER_SUBJECT.search(item):
        return None
    if any(w in ("i", "i'm", "i've", "i'd", "i'll") for w in source_words):
        return None  # the user also speaks of themselves: cannot tell whose fact it is
    item_words = {_fold(t) for t in item_tokens}
    raw = _WORD.findall(user_text)
    # the person's name, when the message gives it right after the relation ("my friend Ana")
    names = {_fold(b) for a, b in zip(raw, raw[1:]) if _fold(a) in RELATIONS and b[:1].isupper()}
    if item_words & (RELATIONS | names):
        return None
    return rel
