"""The memory cube: API, durability (SQLite record, killed processes, garbled files), dense-index rebuilds,
locks, read-only views that follow a writer, kinds and status filters, errors that name the fix."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from magistral_kit.memory.cube import (
    KINDS, CubeCorruptError, CubeError, CubeFormatError, CubeLockedError, DimensionMismatchError, Hit, Memory,
    ReadOnlyCubeError, open_memory, reembed,
)
from magistral_kit.memory.record import DB_FILE, Record

REPO = Path(__file__).resolve().parents[1]

# A child process with a cheap, deterministic 384-dim embedder under the name 'embedded' (the cube records
# it as such, so the parent can open it with the real one: only presence of memories is checked there).
CHILD_PRELUDE = textwrap.dedent("""
    import hashlib, os, sys, time
    import numpy as np
    sys.path.insert(0, {repo!r})
    import magistral_kit.memory.embedding as E

    class Stub:
        name, dimension = "embedded", 384
        def encode(self, texts, batch_size=64):
            out = np.stack([np.frombuffer(hashlib.sha512(t.encode()).digest() * 6, dtype=np.uint8)[:384]
                            .astype(np.float32) + 1 for t in texts]) if texts else np.zeros((0, 384), np.float32)
            return out / np.linalg.norm(out, axis=1, keepdims=True)
    E.get_embedder = lambda name="embedded": Stub()
    import magistral_kit.memory.cube as M
    M.get_embedder = E.get_embedder
""")


def child(code: str, **fmt) -> subprocess.Popen:
    src = CHILD_PRELUDE.format(repo=str(REPO)) + textwrap.dedent(code).format(**fmt)
    return subprocess.Popen([sys.executable, "-c", src], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=str(REPO))


def wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = 180) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return line.strip()
        if not line and proc.poll() is not None:
            raise AssertionError(f"child exited {proc.returncode}: {proc.stderr.read()[-3000:]}")
    raise AssertionError(f"no {prefix!r} line within {timeout}s")


def stored_ids(path: Path) -> set[str]:
    """What a fresh reader of the SQLite file sees (no kit code involved)."""
    con = sqlite3.connect(f"file:{path / DB_FILE}?mode=ro", uri=True)
    try:
        return {r[0] for r in con.execute("SELECT id FROM memories")}
    finally:
        con.close()


@pytest.fixture()
def cube(tmp_path):
    mem = open_memory(tmp_path / "cube")
    yield mem
    mem.close()


def facts(mem: Memory) -> dict[str, str]:
    return {
        "ana": mem.add("The user's sister is called Ana and lives in Lisbon.", source=["s1-t1"],
                       kind="extracted", meta={"speaker": "user", "session": "s1"}),
        "bike": mem.add("The user rides a red bicycle to work every morning.", source=["s1-t2"], kind="episodic"),
        "tea": mem.add("The user prefers green tea over coffee.", source=["s1-t3", "s1-t4"]),
    }


# --- API ---------------------------------------------------------------------------------------------


def test_add_search_get_update_delete_roundtrip(cube):
    ids = facts(cube)
    assert len(cube) == 3
    hits = cube.search("Who is the user's sister?", top_k=2)
    assert [type(h) for h in hits] == [Hit, Hit]
    assert hits[0].id == ids["ana"] and hits[0].source == ["s1-t1"] and hits[0].kind == "extracted"
    assert hits[0].meta == {"speaker": "user", "session": "s1"}
    assert -1.0 <= hits[1].score < hits[0].score <= 1.0
    assert hits[0].created.endswith("+00:00")
    cube.update(ids["tea"], "The user now drinks black coffee every day.")
    got = cube.get(ids["tea"])
    assert got.text.startswith("The user now drinks") and got.source == ["s1-t3", "s1-t4"]
    row = cube.items().set_index("id").loc[ids["tea"]]
    assert row["updated"] > row["created"]
    assert cube.search("coffee", top_k=1)[0].id == ids["tea"]
    cube.delete(ids["bike"])
    assert len(cube) == 2 and all(h.id != ids["bike"] for h in cube.search("bicycle", top_k=5))
    with pytest.raises(KeyError, match="no memory with id"):
        cube.get(ids["bike"])


def test_writes_and_reads_go_through_memos_text_memory(cube, monkeypatch):
    """MemOS is the API: add/update/delete/get call GeneralTextMemory, whose vector DB is the kit's backend."""
    tm = cube.text_memory
    calls: list[str] = []
    for name in ("add", "update", "delete", "get"):
        real = getattr(tm, name)
        monkeypatch.setattr(tm, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k))
    mid = cube.add("The user collects stamps.")
    cube.update(mid, meta={"key": "hobby"})
    cube.get(mid)
    cube.delete(mid)
    assert calls == ["add", "update", "get", "delete"]
    # and MemOS's own calls reach the kit's storage: durable, searchable, visible to the kit
    from memos.memories.textual.item import TextualMemoryItem

    item = TextualMemoryItem(memory="Added by plain MemOS code: the user owns a kayak.")
    tm.add([item])
    assert item.id in stored_ids(cube.path)
    hit = cube.get(item.id)
    assert hit.kind == "ingested" and hit.text.startswith("Added by plain MemOS")
    assert tm.get_all()[0].memory.startswith("Added by plain MemOS")
    assert cube.search("kayak", 1)[0].id == item.id


def test_kinds_status_filters_and_meta_update(cube):
    assert KINDS == ("episodic", "episodic-question", "extracted", "manual", "ingested")
    q = cube.add("Where did I put my keys?", kind="episodic-question")
    said = cube.add("I put my keys in the blue bowl.", kind="episodic")
    fact = cube.add("The user's keys are in the blue bowl.", kind="extracted", meta={"derived_from": said})
    old = cube.add("The user's keys are in the drawer.", kind="raw")  # cubes before kinds: read as episodic
    assert cube.get(old).kind == "episodic"
    found = {h.id for h in cube.search("keys", 10)}
    assert q not in found and {said, fact, old} <= found  # questions are not retrieved by default
    assert [h.id for h in cube.search("keys", 10, kinds=["episodic-question"])] == [q]
    assert {h.id for h in cube.search("keys", 10, kinds=["extracted"])} == {fact}
    cube.update(old, meta={"status": "archived", "evolve_to": [fact]})
    assert old not in {h.id for h in cube.search("keys drawer", 10)}
    arch = [h for h in cube.search("keys drawer", 10, include_archived=True) if h.id == old][0]
    assert arch.meta == {"status": "archived", "evolve_to": [fact]} and arch.text.endswith("drawer.")
    md = cube.text_memory.get(old).metadata  # MemOS's own fields carry the status and the link
    assert md.status == "archived" and md.evolve_to == [fact]
    assert cube.items().set_index("id").loc[old, "status"] == "archived"
    with pytest.raises(ValueError, match="not among"):
        cube.search("keys", kinds=["nonsense"])
    with pytest.raises(ValueError, match="text= or meta="):
        cube.update(fact)


def test_items_vectors_embed_and_html(cube):
    ids = facts(cube)
    df = cube.items()
    assert list(df.columns[:7]) == ["id", "text", "kind", "status", "source", "created", "updated"]
    assert {"speaker", "session"} <= set(df.columns) and set(df["id"]) == set(ids.values())
    vid, mat = cube.vectors()
    assert mat.shape == (3, 384) and set(vid) == set(ids.values())
    assert np.allclose(np.linalg.norm(mat, axis=1), 1.0, atol=1e-5)
    q = cube.embed(["sister"])
    assert q.shape == (1, 384)
    html = cube._repr_html_()
    assert "3</b> memories" in html and "384 dims" in html and str(cube.path) in html and "qdrant-edge" in html
    assert "sister" in cube.search("sister", 1)[0]._repr_html_()


def test_bad_items_are_refused_before_anything_is_written_odd_meta_is_kept(cube):
    facts(cube)
    for bad in ([{"text": ""}], [{"text": "x", "kind": "nonsense"}], [{"text": "x", "source": [3]}],
                [{"text": "x", "colour": "red"}], [{"text": "x", "meta": {"f": object()}}],
                [{"text": "fine"}, {"text": "  "}]):
        with pytest.raises((ValueError, TypeError)):
            cube.add_many(bad)
    assert len(cube) == 3
    assert cube.add_many([]) == []
    odd = cube.add("Meta that MemOS's item model would reject.", meta={"tags": "one", "key": 5, "status": 7})
    assert cube.get(odd).meta == {"tags": "one", "key": 5, "status": 7}


def test_reopen_same_path_in_process_reuses_instance_and_close_is_idempotent(tmp_path):
    a = open_memory(tmp_path / "c")
    a.add("The user is learning Portuguese.")
    b = open_memory(tmp_path / "c")  # a re-run notebook cell
    assert b is a and "reused" in b.notes[-1]
    a.close()
    a.close()
    with pytest.raises(CubeError, match="closed"):
        a.search("x")
    c = open_memory(tmp_path / "c")
    assert c is not a and len(c) == 1 and not any("rebuilt" in n for n in c.notes)  # closed in step: no scan
    c.close()


def test_two_hundred_adds_and_searches_in_a_row(cube):
    for i in range(200):
        cube.add(f"Memory number {i}: the user mentioned item {i * 7} on day {i % 30}.", source=[f"s1-t{i}"])
        assert len(cube.search(f"item {i * 7}", top_k=3)) == min(3, i + 1)
    assert len(cube) == 200 and len(stored_ids(cube.path)) == 200


# --- durability --------------------------------------------------------------------------------------


def test_durable_when_add_returns_without_close(tmp_path):
    path = tmp_path / "c"
    mem = open_memory(path)
    mid = mem.add("The user was born in Porto.", source=["s1-t1"])
    assert mid in stored_ids(path)  # another connection sees it: committed, no save() needed
    mem.close()
    with open_memory(path) as again:
        assert again.get(mid).text == "The user was born in Porto." and again.get(mid).source == ["s1-t1"]


def test_killed_mid_write_loop_loses_nothing_durable(tmp_path):
    """SIGKILL lands while a child adds 200-memory batches in a loop, in each of three rounds."""
    path = tmp_path / "c"
    durable_ids: list[str] = []
    for round_ in range(3):
        proc = child("""
            mem = M.open_memory({path!r})
            print("ready", len(mem), flush=True)
            i = 0
            while True:
                ids = mem.add_many([{{"text": f"fact {round_}-{{i}}-{{j}} " + "x" * 300, "source": [f"t{{i}}"]}}
                                    for j in range(200)])
                print("durable", ids[0], ids[-1], flush=True)   # add_many returned: must survive
                i += 1
        """, path=str(path), round_=round_)
        try:
            ready = wait_for_line(proc, "ready")
            assert int(ready.split()[1]) >= len(durable_ids)
            rng = np.random.default_rng(round_)
            for _ in range(int(rng.integers(2, 5))):
                durable_ids.extend(wait_for_line(proc, "durable").split()[1:])
            time.sleep(float(rng.uniform(0.0, 0.05)))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
        ids = stored_ids(path)
        assert set(durable_ids) <= ids and len(ids) % 200 == 0  # whole batches only
    with open_memory(path) as mem:
        assert set(durable_ids) <= set(mem.items()["id"])
        assert any("stale lock of process" in n for n in mem.notes), mem.notes
        assert mem._record.check() == "ok"
        assert mem.search("fact 2-0-5", 1)[0].text.startswith("fact ")
        assert mem.dense_index.count() == len(mem)


def test_damaged_or_missing_dense_index_is_rebuilt_from_the_record(tmp_path):
    path = tmp_path / "c"
    with open_memory(path) as mem:
        ids = facts(mem)
    for f in (path / "dense").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"\x00garbage" * 64)
    with open_memory(path) as mem:
        assert any("index rebuilt from the record" in n for n in mem.notes), mem.notes
        assert set(mem.items()["id"]) == set(ids.values())
        assert mem.search("sister", 1)[0].id == ids["ana"]
    shutil.rmtree(path / "dense")
    with open_memory(path) as mem:
        assert any("index rebuilt" in n for n in mem.notes), mem.notes
        assert mem.search("bicycle", 1)[0].id == ids["bike"]


def test_dense_index_out_of_step_is_detected_after_an_unclean_stop(tmp_path):
    path = tmp_path / "c"
    with open_memory(path) as mem:
        ids = facts(mem)
        # a stale point (an older write of one memory) in the index, then a stop without close()
        row = mem._record.get(ids["ana"])
        mem.dense_index.upsert([row.id], row.vector[None], [{"kind": row.kind, "status": row.status, "seq": 99}])
        mem._record.put_settings({"dense": {"kind": mem.dense_index.kind, "seq": 0, "clean": False}})
        mem._record.put_settings = lambda values: None  # what a killed process never writes
    with open_memory(path) as mem:
        assert any("out of step" in n and "1 stale" in n for n in mem.notes), mem.notes
        assert mem.search("sister", 1)[0].id == ids["ana"]


def test_dense_index_of_another_dimension_is_not_reused(tmp_path):
    from magistral_kit.memory.dense import EdgeIndex

    path = tmp_path / "c"
    with open_memory(path) as mem:
        ids = facts(mem)
    shutil.rmtree(path / "dense")
    other = EdgeIndex(path / "dense", 768)
    other.upsert(["11111111-1111-4111-8111-111111111111"], np.ones((1, 768), np.float32) / 768 ** .5,
                 [{"kind": "manual", "status": "activated", "seq": 1}])
    other.close()
    with open_memory(path) as mem:
        assert any("index rebuilt" in n for n in mem.notes), mem.notes
        assert mem.search("sister", 1)[0].id == ids["ana"] and mem.dense_index.count() == 3


def test_garbled_record_is_a_clear_error_and_nothing_is_overwritten(tmp_path):
    path = tmp_path / "c"
    with open_memory(path) as mem:
        facts(mem)
    db = path / DB_FILE
    data = bytearray(db.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # the schema page
    db.write_bytes(bytes(data))
    before = db.read_bytes()
    with pytest.raises(CubeCorruptError, match=r"memories.sqlite.*Fix: restore"):
        open_memory(path)
    assert db.read_bytes() == before
    with pytest.raises(CubeCorruptError):
        open_memory(path)  # the failed open released the lock: the second attempt reaches the same error


def test_torn_wal_tail_of_a_killed_writer_is_ignored_by_sqlite(tmp_path):
    path = tmp_path / "c"
    proc = child("""
        mem = M.open_memory({path!r})
        ids = mem.add_many([{{"text": f"kept {{i}}"}} for i in range(20)])
        print("durable", *ids, flush=True)
        time.sleep(600)
    """, path=str(path))
    try:
        ids = wait_for_line(proc, "durable").split()[1:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    wal = path / (DB_FILE + "-wal")
    assert wal.exists()
    with open(wal, "ab") as fh:
        fh.write(b"half a frame of a write that never committed" * 20)
    with open_memory(path) as mem:
        assert set(ids) == set(mem.items()["id"])
        assert any(f"stale lock of process {proc.pid}" in n for n in mem.notes), mem.notes


def test_dimension_mismatch_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "c"
    with open_memory(path) as mem:
        facts(mem)
        mem._record.put_settings({"dimension": 768})
    with pytest.raises(DimensionMismatchError, match=r"768-dim.*384-dim.*reembed"):
        open_memory(path)
    assert not (path / "cube.holder.json").exists()  # lock released on the failed open


def test_other_format_version_says_what_to_do(tmp_path):
    path = tmp_path / "c"
    with open_memory(path) as mem:
        facts(mem)
        mem._record.put_settings({"format_version": 3})
    with pytest.raises(CubeFormatError, match="format_version 3.*reads format_version 2.*upgrade"):
        open_memory(path)
    with pytest.raises(CubeFormatError, match="not a cube"):
        open_memory(tmp_path / "nothing-here", read_only=True)
    assert not (tmp_path / "nothing-here").exists()


# --- failures while running --------------------------------------------------------------------------


def test_nan_vector_is_refused_and_store_stays_usable(cube, monkeypatch):
    facts(cube)
    real = cube.embedder.encode
    monkeypatch.setattr(cube.embedder, "encode", lambda texts, **kw: np.full((len(texts), 384), np.nan, np.float32))
    with pytest.raises(ValueError, match="invalid vector"):
        cube.add("This one embeds to NaN.")
    monkeypatch.setattr(cube.embedder, "encode", real)
    assert len(cube) == 3 and len(cube.search("sister", 3)) == 3


def test_nan_reaching_the_record_fails_cleanly_nothing_partial(cube, monkeypatch):
    import magistral_kit.memory.cube as M

    facts(cube)
    monkeypatch.setattr(M, "_check_vectors", lambda recs, vecs, dim: None)  # force the NaN through
    real = cube.embedder.encode

    def half_nan(texts, **kw):
        out = real(texts)
        out[-1, :] = np.nan
        return out

    monkeypatch.setattr(cube.embedder, "encode", half_nan)
    with pytest.raises(CubeError, match="nothing was stored"):
        cube.add_many([{"text": "A good memory."}, {"text": "A NaN memory."}])
    monkeypatch.undo()
    assert len(cube) == 3 and len(stored_ids(cube.path)) == 3 and cube.dense_index.count() == 3
    cube.add("After the failure the user still adds memories.")
    assert len(cube) == 4


def test_failed_record_write_stores_nothing_of_the_batch(cube, monkeypatch):
    facts(cube)

    def disk_full(rows):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cube._record, "write", disk_full)
    with pytest.raises(CubeError, match="nothing was stored"):
        cube.add_many([{"text": "Batch item one about volcanoes."}, {"text": "Batch item two about lava."}])
    monkeypatch.undo()
    assert len(cube) == 3 and cube.dense_index.count() == 3
    assert all("volcano" not in h.text for h in cube.search("volcanoes lava", 5))


def test_dense_failure_after_commit_keeps_the_memory_and_rebuilds(cube, monkeypatch):
    facts(cube)
    dense = cube.dense_index

    def broken(*a, **k):
        raise RuntimeError("engine crashed mid-upsert")

    monkeypatch.setattr(dense, "upsert", broken)
    mid = cube.add("The user keeps bees on the roof.")
    assert any("index rebuilt from the record" in n and "engine crashed" in n for n in cube.notes), cube.notes
    assert mid in stored_ids(cube.path) and cube.dense_index is not dense
    assert cube.search("bees", 1)[0].id == mid and cube.dense_index.count() == 4


def test_failing_dense_search_is_rebuilt_and_retried(cube, monkeypatch):
    ids = facts(cube)
    monkeypatch.setattr(cube.dense_index, "search", lambda *a, **k: (_ for _ in ()).throw(
        ValueError("operands could not be broadcast together with shapes (4,) (3,)")))
    assert cube.search("sister", 1)[0].id == ids["ana"]
    assert any("search failed" in n and "broadcast" in n for n in cube.notes), cube.notes


def test_concurrent_adds_and_searches_go_through_one_lock(cube):
    facts(cube)
    errors: list[BaseException] = []

    def adder():
        try:
            for i in range(40):
                cube.add(f"Concurrent fact {i} about gardening.")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def searcher():
        try:
            for _ in range(60):
                cube.search("gardening", 3)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=adder), threading.Thread(target=searcher)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and len(cube) == 43


# --- processes -----------------------------------------------------------------------------------------


def test_locked_by_other_process_names_pid_read_only_works_and_stale_lock_is_taken_over(tmp_path):
    path = tmp_path / "c"
    with open_memory(path) as mem:
        ids = facts(mem)
    proc = child("""
        mem = M.open_memory({path!r})
        mem.add("The holder process added this.")
        print("holding", flush=True)
        time.sleep(600)
    """, path=str(path))
    try:
        wait_for_line(proc, "holding")
        with pytest.raises(CubeLockedError) as err:
            open_memory(path)
        msg = str(err.value)
        assert f"process {proc.pid}" in msg and "read_only=True" in msg and "close" in msg
        with open_memory(path, read_only=True) as ro:
            assert len(ro) == 4 and set(ids.values()) <= set(ro.items()["id"])
            assert ro.search("sister", 1)[0].id == ids["ana"]
            with pytest.raises(ReadOnlyCubeError, match="read_only"):
                ro.add("nope")
            with pytest.raises(ReadOnlyCubeError):
                ro.save()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    with open_memory(path) as mem:
        assert any(f"stale lock of process {proc.pid}" in n for n in mem.notes), mem.notes
        assert len(mem) == 4


def test_read_only_view_in_another_process_follows_adds_and_deletes(tmp_path):
    path = tmp_path / "c"
    with open_memory(path) as mem:
        facts(mem)
    writer = subprocess.Popen(
        [sys.executable, "-c", CHILD_PRELUDE.format(repo=str(REPO)) + textwrap.dedent(f"""
            mem = M.open_memory({str(path)!r})
            print("holding", flush=True)
            for line in sys.stdin:
                if line.startswith("add"):
                    print("added", mem.add("Zanzibar trip planned for the spring."), flush=True)
                elif line.startswith("del"):
                    mem.delete(line.split()[1]); print("deleted", flush=True)
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO))
    try:
        wait_for_line(writer, "holding")
        with open_memory(path, read_only=True) as ro:
            assert len(ro) == 3
            writer.stdin.write("add\n")
            writer.stdin.flush()
            new = wait_for_line(writer, "added").split()[1]
            assert len(ro) == 4 and ro.get(new).text.startswith("Zanzibar")
            assert new in {h.id for h in ro.search("Zanzibar trip", 4)}
            writer.stdin.write(f"del {new}\n")
            writer.stdin.flush()
            wait_for_line(writer, "deleted")
            assert len(ro) == 3 and new not in {h.id for h in ro.search("Zanzibar trip", 4)}
    finally:
        writer.kill()
        writer.wait(30)


def test_reembed_copies_texts_provenance_and_times(tmp_path):
    src = tmp_path / "src"
    with open_memory(src) as mem:
        ids = facts(mem)
        before = mem.items().set_index("id")
    dst = reembed(src, tmp_path / "dst", embedder="embedded")
    try:
        after = dst.items().set_index("id")
        assert set(after.index) == set(ids.values())
        for col in ("text", "kind", "source", "created"):
            assert list(after.loc[before.index, col]) == list(before[col])
        assert dst.search("sister", 1)[0].id == ids["ana"]
    finally:
        dst.close()
    with pytest.raises(CubeError, match="not empty"):
        reembed(src, tmp_path / "dst", embedder="embedded")


# --- retrieval -----------------------------------------------------------------------------------------


def test_retrieval_hook_index_text_and_lexical_fusion(tmp_path):
    from magistral_kit.memory.retrieval import RetrievalOptions

    opts = RetrievalOptions(speaker_in_text=True, date_in_text=False, context_turns=1, lexical_weight=1.0,
                            fusion="rrf", query_rewrite=False, candidates=20)
    with open_memory(tmp_path / "c", retrieval=opts) as mem:
        mid = mem.add("I finally finished the Zyxwortle painting.", meta={"speaker": "Caroline"}, source=["D1:3"])
        for i in range(15):
            mem.add(f"Caroline talked about art class number {i} and painting techniques.",
                    meta={"speaker": "Caroline"})
        want = mem.embed(["Caroline: I finally finished the Zyxwortle painting."])[0]
        assert np.allclose(mem._record.get(mid).vector, want, atol=1e-5)  # speaker embedded, text as given
        assert mem.get(mid).text == "I finally finished the Zyxwortle painting."
        hit = mem.search("What is the Zyxwortle?", top_k=3)[0]
        assert hit.id == mid and hit.source == ["D1:3"] and hit.score < 0.1  # an RRF score
        ctx = mem.add("Yes, last Friday!", meta={"speaker": "Mel", "context": ["Caroline: Did you see Qwertop?"]})
        want = mem.embed(["Caroline: Did you see Qwertop?\nMel: Yes, last Friday!"])[0]
        assert np.allclose(mem._record.get(ctx).vector, want, atol=1e-5)  # context widens what is embedded
        lex = mem._record.lexical
        assert ctx in lex and "qwertop" not in lex.text(ctx).lower()  # ... not what BM25 holds
        assert mem.get(ctx).text == "Yes, last Friday!"
    assert Record(tmp_path / "c", 384, read_only=True).settings()["index_text"] == {
        "speaker_in_text": True, "date_in_text": False, "context_turns": 1}
    with open_memory(tmp_path / "plain") as plain:
        plain.add("Plain memory.")
        assert plain.retrieval is None and 0.5 < plain.search("Plain memory.", 1)[0].score <= 1.0001


def test_memos_preset_is_memos_own_search_with_scores(tmp_path):
    from magistral_kit.memory.retrieval import RetrievalOptions

    with open_memory(tmp_path / "c", retrieval=RetrievalOptions(preset="memos")) as mem:
        ids = facts(mem)
        hits = mem.search("Who is the user's sister?", 3)
        plain = mem.text_memory.search("Who is the user's sister?", 3)  # MemOS itself
        assert [h.id for h in hits] == [i.id for i in plain] and hits[0].id == ids["ana"]
        assert 1 >= hits[0].score > hits[1].score > hits[2].score >= -1


def test_qdrant_client_engine_and_url_errors(tmp_path):
    """The qdrant-client engine (the class a server URL uses) through the whole API; an unreachable server
    is a clear error. No Qdrant server runs here: the URL path against a live server is NOT tested."""
    with open_memory(tmp_path / "m", index="memory") as mem:
        ids = facts(mem)
        assert mem.dense_index.kind == "qdrant-local :memory:"
        assert mem.search("sister", 1)[0].id == ids["ana"]
        mem.update(ids["bike"], meta={"status": "archived"})
        assert ids["bike"] not in {h.id for h in mem.search("bicycle", 3)}
        assert {h.id for h in mem.search("bicycle", 3, kinds=["episodic"], include_archived=True)} == {ids["bike"]}
    with open_memory(tmp_path / "m", index="memory") as mem:  # rebuilt from the record on open
        assert mem.search("tea", 1)[0].id == ids["tea"]
    with pytest.raises(CubeError, match=r"Qdrant server at http://127.0.0.1:9.*Fix: start the server"):
        open_memory(tmp_path / "u", index="http://127.0.0.1:9")
    with pytest.raises(ValueError, match="not one of"):
        open_memory(tmp_path / "v", index="elasticsearch")
