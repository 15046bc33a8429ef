"""The grounding rule: hand-made cases, and the hand-labelled real extractor outputs (tests/data/
grounding_labels.jsonl, guideline in tests/data/GROUNDING_LABELS.md) with the held-out half as the judge."""
import sys
from pathlib import Path

import pytest

from magistral_kit.memory.grounding import check

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from grounding_eval import LABELS, load, scores  # noqa: E402

MSG = "My sister Ana moved to Lisbon in May 2025 and works as a marine biologist."


@pytest.mark.parametrize("item", [
    "Ana moved to Lisbon in May 2025.",
    "The user's sister Ana works as a marine biologist.",
    "Ana, the user's sister, moved to Lisbon.",
    "The user's sister moved to Lisbon and works as a marine biologist.",
])
def test_faithful_rewordings_are_grounded(item):
    assert check(item, MSG).grounded, check(item, MSG).reason


@pytest.mark.parametrize("item,why", [
    ("Ana moved to Madrid in May 2025.", "Madrid"),                    # a place the user did not say
    ("Ana moved to Lisbon in June 2024.", "2024"),                     # a number the user did not say
    ("The user moved to Lisbon in May 2025.", "sister"),                # the sister's fact put on the user
    ("My sister works at a company called", "words"),                  # a fragment with a new claim
    ("UserMemory", "no fact"),                                         # the schema's own word
    ("2025", "no fact"),
    ("The user loves hiking with friends on weekends.", "words"),      # nowhere in the message
])
def test_fabrications_are_rejected_with_a_reason(item, why):
    verdict = check(item, MSG)
    assert not verdict.grounded and why in verdict.reason, verdict.reason


def test_other_languages_and_accents():
    msg = "Mi hermano Diego vive en Valparaíso y trabaja como carpintero."
    assert check("Diego vive en Valparaiso.", msg).grounded
    assert check("El hermano del usuario, Diego, trabaja como carpintero.", msg).grounded
    assert not check("Diego vive en Santiago.", msg).grounded


def test_the_labelled_set():
    rows = load()
    assert LABELS.exists() and len({(r["message"], r["item"]) for r in rows}) == len(rows)
    assert {r["split"] for r in rows} == {"train", "heldout"}
    assert all(isinstance(r["grounded"], bool) and r["item"] and r["message"] for r in rows)
    heldout = scores([r for r in rows if r["split"] == "heldout"])
    # what the rule must do on data it was not written on: keep mostly faithful items, catch fabrications
    assert heldout["precision"] >= 0.85, heldout
    assert heldout["ungrounded_caught"] >= 0.85, heldout
    assert heldout["recall"] >= 0.6, heldout
