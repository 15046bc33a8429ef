"""The corpus of `memory_scale.py`: seeded memory texts, their real embeddings cached outside the repository.

Texts: a seeded generator of the statements a chat stores ("Priya's brother Tom moved to Kyoto in May 2023
and works as a nurse."): 24 templates over people, relations, places, jobs, pets, foods, hobbies, dates and
numbers, so that names and rare words repeat the way they do in a long conversation. Queries are questions
about a stored fact ("Where did Priya's brother Tom move?"), generated with another seed.

Vectors: the kit's real embedder (all-MiniLM-L6-v2), embedded once and cached under
``~/.cache/magistral-kit/memory_scale/`` (``$MAGISTRAL_KIT_CACHE`` overrides), with the embedding rate that
was measured when they were made. Embedding 1M texts on this machine's shared CPU would take hours (see the
rate in the results), so the 1M level uses ``derived`` vectors, clearly labelled in the results:
``normalize(v_a + 0.35 * v_b)`` for two real vectors a, b (seeded), with text "<text_a> (variant k)".

    python bench/scale_corpus.py --n 100000      # embeds and caches (resumable, in chunks)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SEED = 20261130

FIRST = ["Ana", "Caroline", "Melanie", "Tom", "Priya", "Kenji", "Lucas", "Fatima", "Olga", "Sam", "Noor", "Mateo",
         "Aisha", "Jonas", "Ingrid", "Ravi", "Chloe", "Tariq", "Elena", "Hiro", "Zanele", "Marek", "Lucia", "Omar",
         "Freya", "Diego", "Mei", "Arjun", "Sofia", "Kwame", "Lena", "Bruno", "Yara", "Ivan", "Nadia", "Pablo"]
REL = ["sister", "brother", "cousin", "mother", "father", "best friend", "colleague", "neighbour", "aunt",
       "uncle", "grandmother", "partner", "roommate", "manager", "daughter", "son"]
CITY = ["Lisbon", "Kyoto", "Porto", "Oslo", "Nairobi", "Lima", "Montreal", "Krakow", "Seville", "Hanoi",
        "Melbourne", "Dublin", "Cape Town", "Bergen", "Valencia", "Osaka", "Quito", "Tallinn", "Bologna",
        "Edinburgh", "Chennai", "Accra", "Leipzig", "Marseille"]
JOB = ["nurse", "software engineer", "teacher", "architect", "chef", "pharmacist", "carpenter", "lawyer",
       "journalist", "physiotherapist", "pilot", "librarian", "veterinarian", "accountant", "electrician",
       "photographer", "translator", "marine biologist"]
PET = ["dog", "cat", "rabbit", "parrot", "hamster", "tortoise", "goldfish", "ferret"]
PETNAME = ["Biscuit", "Miso", "Pepper", "Luna", "Rex", "Olive", "Mango", "Ziggy", "Nala", "Tofu", "Bean",
           "Pixel", "Maple", "Juniper", "Chai"]
FOOD = ["green tea", "black coffee", "spicy ramen", "dark chocolate", "sourdough bread", "mango lassi",
        "grilled sardines", "lentil soup", "pistachio ice cream", "kimchi", "falafel", "blueberry pancakes"]
HOBBY = ["pottery", "rock climbing", "watercolour painting", "sailing", "chess", "salsa dancing",
         "birdwatching", "knitting", "trail running", "playing the cello", "astronomy", "woodworking",
         "baking bread", "learning Portuguese", "photography", "gardening"]
MONTH = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
         "November", "December"]
THING = ["a red bicycle", "a vintage camera", "an old piano", "a blue kayak", "a small sailboat",
         "a second-hand van", "a telescope", "a sewing machine", "a greenhouse", "an electric scooter"]
EVENT = ["a half marathon", "a jazz concert", "a pottery exhibition", "a wedding", "a chess tournament",
         "a job interview", "a cooking class", "a family reunion", "a book launch", "a charity run"]

TEMPLATES = [
    "{p}'s {rel} {q} moved to {city} in {month} {year} and works as a {job}.",
    "The user's {rel} is called {q} and lives in {city}.",
    "{p} adopted a {pet} named {petname} in {month} {year}.",
    "{p} prefers {food} over {food2}, especially in the morning.",
    "{p} has been doing {hobby} every {weekday} for {n} years.",
    "{p} bought {thing} for {n}0 euros from a neighbour in {city}.",
    "{p} went to {event} in {city} on {n} {month} with their {rel}.",
    "{p} is allergic to {food} and avoids it at restaurants.",
    "{p}'s {rel} {q} started a new job as a {job} in {month}.",
    "{p} plans a trip to {city} in {month} {year} to visit their {rel}.",
    "{p} finished {event} in {city} and felt proud afterwards.",
    "{p} keeps {thing} in the garage and repairs it on weekends.",
    "{p} learned {hobby} from their {rel} {q} during the summer of {year}.",
    "{p}'s {pet} {petname} is {n} years old and loves the park.",
    "{p} was born in {city} in {year} and grew up with two {rel}s.",
    "{p} wants to become a {job} and is studying at night.",
    "{p} cooked {food} for {q}'s birthday on {n} {month}.",
    "{p} and {q} met at {event} in {city} in {year}.",
    "{p} sold {thing} in {month} because they moved to {city}.",
    "{p}'s favourite hobby is {hobby}; they joined a club in {city}.",
    "{p} broke their wrist doing {hobby} in {month} {year}.",
    "{p} volunteers at an animal shelter in {city} every {weekday}.",
    "{p}'s {rel} {q} is a {job} who lives near the harbour in {city}.",
    "{p} told {q} that they miss the {food} from {city}.",
]
WEEKDAY = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

QUESTIONS = {
    "moved to": "Where did {p}'s {rel} move to?",
    "is called": "What is the name of the user's {rel}?",
    "adopted": "What is the name of {p}'s {pet}?",
    "prefers": "What does {p} like to drink or eat in the morning?",
    "every": "How long has {p} been doing {hobby}?",
}


def _fill(rng: random.Random) -> dict[str, str]:
    p, q = rng.sample(FIRST, 2)
    f1, f2 = rng.sample(FOOD, 2)
    return {"p": p, "q": q, "rel": rng.choice(REL), "city": rng.choice(CITY), "job": rng.choice(JOB),
            "pet": rng.choice(PET), "petname": rng.choice(PETNAME), "food": f1, "food2": f2,
            "hobby": rng.choice(HOBBY), "month": rng.choice(MONTH), "year": str(rng.randint(1990, 2026)),
            "thing": rng.choice(THING), "event": rng.choice(EVENT), "weekday": rng.choice(WEEKDAY),
            "n": str(rng.randint(2, 29))}


def memory_texts(n: int, seed: int = SEED) -> list[str]:
    """`n` distinct memory texts, the same for the same (n, seed) prefix-wise: texts(m) == texts(n)[:m]."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        text = rng.choice(TEMPLATES).format(**_fill(rng))
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def queries(n: int, seed: int = SEED + 1) -> list[str]:
    """Questions in the corpus's vocabulary (who/where/what about people, pets, jobs, hobbies)."""
    rng = random.Random(seed)
    forms = ["Where does {p}'s {rel} live?", "What is the name of {p}'s {pet}?", "What job does {q} have?",
             "When did {p} move to {city}?", "What does {p} prefer to drink?", "Who did {p} meet at {event}?",
             "How long has {p} been doing {hobby}?", "What did {p} buy from a neighbour?",
             "Is {p} allergic to anything?", "Where was {p} born?", "What hobby did {p} learn from their {rel}?"]
    return [rng.choice(forms).format(**_fill(rng)) for _ in range(n)]


def cache_dir() -> Path:
    root = os.environ.get("MAGISTRAL_KIT_CACHE") or Path.home() / ".cache" / "magistral-kit"
    path = Path(root) / "memory_scale"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _key(seed: int) -> str:
    return hashlib.sha256(f"{SEED}-{seed}-{len(TEMPLATES)}-all-MiniLM-L6-v2".encode()).hexdigest()[:12]


CHUNK = 5000


def embed_cached(n: int, seed: int = SEED, progress: bool = True) -> tuple[list[str], np.ndarray, dict]:
    """Texts and unit-norm float32 vectors for the first `n` texts, embedded in chunks of 5,000 (resumable).

    Returns (texts, vectors, info) with info = texts embedded now, seconds spent now, and the rate measured
    over every chunk ever embedded for this cache (seconds per text, from the chunk files' records)."""
    texts = memory_texts(n, seed)
    folder = cache_dir() / _key(seed)
    folder.mkdir(exist_ok=True)
    log_path = folder / "chunks.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {}
    embedder = None
    parts = []
    done_now, secs_now = 0, 0.0
    for start in range(0, n, CHUNK):
        end = min(start + CHUNK, (start // CHUNK + 1) * CHUNK)
        f = folder / f"{start:08d}.npy"
        full_end = start + CHUNK
        if not f.exists():
            if embedder is None:
                sys.path.insert(0, str(REPO))
                from magistral_kit.memory.embedding import get_embedder

                embedder = get_embedder("embedded")
            chunk_texts = memory_texts(full_end, seed)[start:full_end]
            t = time.perf_counter()
            vecs = embedder.encode(chunk_texts, batch_size=128)
            dt = time.perf_counter() - t
            tmp = f.with_suffix(".tmp.npy")
            np.save(tmp, vecs.astype(np.float32))
            os.replace(tmp, f)
            log[f.name] = {"texts": len(chunk_texts), "seconds": round(dt, 2), "loadavg": os.getloadavg()}
            log_path.write_text(json.dumps(log, indent=1))
            done_now += len(chunk_texts)
            secs_now += dt
            if progress:
                print(f"embedded {full_end:,} ({len(chunk_texts) / dt:.0f} texts/s)", flush=True)
        parts.append(np.load(f, mmap_mode="r")[: end - start])
    vecs = np.ascontiguousarray(np.concatenate(parts)[:n]) if parts else np.zeros((0, 384), np.float32)
    total_t = sum(v["texts"] for v in log.values())
    total_s = sum(v["seconds"] for v in log.values())
    info = {"embedded_now": done_now, "seconds_now": round(secs_now, 1),
            "cached_texts": total_t, "cached_seconds": round(total_s, 1),
            "texts_per_second": round(total_t / total_s, 1) if total_s else None, "cache": str(folder)}
    return texts, vecs, info


def derived(texts: list[str], vecs: np.ndarray, n: int, seed: int = SEED + 2) -> tuple[list[str], np.ndarray]:
    """Grow a real corpus to `n` rows: row i >= len(texts) is normalize(v_a + 0.35 v_b), text '<a> (variant i)'.

    Used only where embedding n real texts would take hours here; the results say so."""
    base = len(texts)
    if n <= base:
        return texts[:n], vecs[:n]
    rng = np.random.default_rng(seed)
    extra = n - base
    a = rng.integers(0, base, extra)
    b = rng.integers(0, base, extra)
    out = np.empty((n, vecs.shape[1]), dtype=np.float32)
    out[:base] = vecs
    for s in range(0, extra, 100_000):
        sl = slice(s, min(extra, s + 100_000))
        mix = vecs[a[sl]] + 0.35 * vecs[b[sl]]
        mix /= np.linalg.norm(mix, axis=1, keepdims=True)
        out[base + sl.start: base + sl.stop] = mix
    all_texts = texts + [f"{texts[a[i]]} (variant {i})" for i in range(extra)]
    return all_texts, out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args()
    _, v, info = embed_cached(args.n)
    print(json.dumps({"shape": list(v.shape), **info}))
