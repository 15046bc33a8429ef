"""Superseding on a plain cube: same first-person frame + near in embedding space = the older one archived
(MemOS status/history), never deleted; different people or predicates never match."""
import pytest

from magistral_kit.memory.cube import open_memory
from magistral_kit.memory.superseding import apply, chain, find_superseded, frames
from magistral_kit.notebook.inspector import history_table, memory_table


@pytest.mark.parametrize("a,b,same", [
    ("I live in Lisbon, near the river.", "Big news: I live in Porto now, we moved last month.", True),
    ("My favourite tea is jasmine.", "My favourite tea is now rooibos.", True),
    ("My friend Ana moved to Lisbon last year.", "My friend Bruno moved to Oslo last year.", False),
    ("I have a dog.", "I have a cat.", False),
    ("My gym locker code is 4719.", "My flight number is FI 455.", False),
])
def test_frames(a, b, same):
    assert bool(frames(a) & frames(b)) == same


def test_newer_fact_archives_older_and_the_chain_is_shown(tmp_path):
    mem = open_memory(tmp_path / "c")
    try:
        old = mem.add("I live in Lisbon, near the river.", kind="episodic")
        other = mem.add("My favourite tea is jasmine.", kind="episodic")
        child = mem.add("The user lives in Lisbon.", kind="extracted", meta={"derived_from": old})
        mem.update(old, meta={"evolve_to": [child]})
        new_text = "Big news: I live in Porto now, we moved last month."
        new = mem.add(new_text, kind="episodic")
        found = find_superseded(mem, new, new_text, min_score=0.3)
        assert [f.old_id for f in found] == [old] and found[0].update_type == "conflict"
        assert sorted(apply(mem, found)) == sorted([old, child])
        assert mem.get(old).meta["status"] == "archived" and mem.get(child).meta["superseded_by"] == new
        assert mem.get(other).meta.get("status") != "archived"
        hist = mem.get(new).meta["history"]
        assert hist[0]["archived_memory_id"] == old and hist[0]["memory"] == "I live in Lisbon, near the river."
        assert [h.id for h in mem.search("Where do I live?", top_k=5)] == [new, other]
        assert old in [h.id for h in mem.search("Where do I live?", top_k=5, include_archived=True)]
        assert [h.id for h in chain(mem, new)] == [new, old]
        table = history_table(mem, new)
        assert list(table["status"]) == ["activated", "archived"] and table["replaced_because"][1] == "conflict"
        assert set(memory_table(mem)["status"]) == {"activated", "archived"}
        assert len(mem) == 4
    finally:
        mem.close()
