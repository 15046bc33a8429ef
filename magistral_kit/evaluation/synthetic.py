"""A small LoCoMo-format data set the project generates itself (seeded), for tests and for notebook 03
when no LoCoMo copy is found.

Why: LoCoMo cannot ship with the repository, and a clone must run its tests and notebooks with nothing
beside it. The generated conversations have LoCoMo's exact file shape (``speaker_a``, ``session_N`` turns with
``dia_id``, ``session_N_date_time``, ``qa`` with ``evidence`` and ``category``) and the same kinds of questions:
single-hop (one turn), multi-hop (two turns), temporal (the session date), open-domain (an inference from a
turn) and adversarial (never scored). Facts sit between filler turns, so retrieval has something to miss.
They are not LoCoMo: recall on them says the pipeline works, not how good the memory is.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from magistral_kit.config import tmp_dir

NAMES = ["Ana", "Ben", "Chloe", "Dario", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kira", "Luca"]
CITIES = ["Lisbon", "Porto", "Berlin", "Oslo", "Naples", "Krakow", "Ghent", "Seville", "Tallinn", "Lyon"]
PETS = [("dog", "Biscuit"), ("cat", "Pixel"), ("parrot", "Mango"), ("rabbit", "Clover"), ("turtle", "Sheldon")]
JOBS = ["a nurse", "a carpenter", "a data analyst", "a pastry chef", "a bus driver", "a librarian"]
HOBBIES = [("surfing", "the beach"), ("rock climbing", "the mountains"), ("pottery", "a ceramics studio"),
           ("birdwatching", "the wetlands"), ("chess", "the chess club")]
STUDIES = ["marine biology", "architecture", "medieval history", "robotics", "music theory"]
FILLER = ["That sounds lovely!", "How was your week?", "Ha, I know what you mean.", "Tell me more about it.",
          "I've been so busy lately.", "Really? That's great news.", "Same here, honestly.",
          "Let's catch up again soon.", "Oh wow, I didn't expect that.", "What are you up to this weekend?"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October"]


def conversation(seed: int, sessions: int = 3, filler_per_fact: int = 2) -> dict[str, Any]:
    """One LoCoMo-shaped conversation (flat form), fully determined by `seed`."""
    rng = random.Random(seed)
    a, b = rng.sample(NAMES, 2)
    city, sister_city = rng.sample(CITIES, 2)
    (pet, pet_name), job, (hobby, place), study = (rng.choice(PETS), rng.choice(JOBS), rng.choice(HOBBIES),
                                                   rng.choice(STUDIES))
    sister = rng.choice([n for n in NAMES if n not in (a, b)])
    facts = [  # (speaker, text, question, answer, category)
        (a, f"I adopted a {pet} called {pet_name} last weekend.", f"What is the name of {a}'s {pet}?", pet_name, 4),
        (b, f"I started working as {job} a month ago.", f"What does {b} work as?", job, 4),
        (a, f"My sister {sister} moved to {sister_city} to study {study}.", f"Where did {a}'s sister move to?",
         sister_city, 4),
        (b, f"I spend every free morning {hobby} near {place}.", f"Would {b} enjoy a trip to {place}?",
         "Likely yes", 3),
        (a, f"We finally moved into our new flat in {city}.", f"When did {a} move to {city}?", None, 2),
    ]
    data: dict[str, Any] = {"speaker_a": a, "speaker_b": b}
    qa: list[dict[str, Any]] = []
    where: dict[int, str] = {}
    per_session = -(-len(facts) // sessions)
    turn_of_fact = 0
    for s in range(1, sessions + 1):
        day, month = rng.randint(1, 28), MONTHS[(seed + s) % len(MONTHS)]
        date = f"{rng.randint(1, 11)}:{rng.choice(['00', '15', '30'])} pm on {day} {month}, 2023"
        data[f"session_{s}_date_time"] = date
        turns: list[dict[str, str]] = []
        for _ in range(per_session):
            for _ in range(filler_per_fact):
                turns.append({"speaker": b if len(turns) % 2 else a, "text": rng.choice(FILLER)})
            if turn_of_fact < len(facts):
                speaker, text, question, answer, category = facts[turn_of_fact]
                turns.append({"speaker": speaker, "text": text})
                where[turn_of_fact] = f"D{s}:{len(turns)}"
                qa.append({"question": question, "answer": answer or f"{day} {month} 2023",
                           "evidence": [where[turn_of_fact]], "category": category})
                turn_of_fact += 1
        for j, t in enumerate(turns, start=1):
            t["dia_id"] = f"D{s}:{j}"
        data[f"session_{s}"] = turns
    qa.append({"question": f"Which city did {a}'s sister move to, and what does she study there?",
               "answer": f"{sister_city}, {study}", "evidence": [where[2], where[0]], "category": 1})
    qa.append({"question": f"What is the name of {b}'s {pet}?", "adversarial_answer": pet_name,
               "evidence": [where[0]], "category": 5})
    data["qa"] = qa
    return data


def write_locomo(folder: str | Path | None = None, conversations: int = 3, seed: int = 0) -> Path:
    """Write `conversations` generated conversations as ``<id>.json`` files into `folder` (default
    ``tmp/locomo-generated``) and return the folder. Same seed, same files."""
    folder = Path(folder) if folder is not None else tmp_dir() / "locomo-generated"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(conversations):
        (folder / f"g{i + 1}.json").write_text(json.dumps(conversation(seed * 1000 + i), indent=1))
    return folder


def open_locomo(path: str | Path | None = None, conversations: list[str] | None = None,
                generated: int = 3) -> tuple[list, str]:
    """(conversations, where they came from): the given path, else `find_locomo`, else a generated set.

    With no data found, every generated conversation is used (the `conversations` filter names LoCoMo ids),
    and the returned text says so.
    """
    from magistral_kit.evaluation.locomo import find_locomo, load_locomo

    found = Path(path).expanduser() if path is not None else find_locomo()
    if found is not None:
        return load_locomo(found, conversations), f"LoCoMo from {found}"
    folder = write_locomo(conversations=generated)
    return (load_locomo(folder),
            f"no LoCoMo data found (pass LOCOMO, or set $MAGISTRAL_LOCOMO): using {generated} GENERATED "
            f"LoCoMo-format conversations from {folder} (magistral_kit.evaluation.synthetic). Their recall checks "
            "the pipeline, not the memory's quality")
