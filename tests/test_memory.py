"""The memory cube: API, durability (journal, snapshots, killed processes), index rebuilds, locks, errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from magistral_kit.memory import durable
from magistral_kit.memory.cube import (
    CubeCorruptError, CubeError, CubeFormatError, CubeLockedError, DimensionMismatchError, Hit, Memory,
    ReadOnlyCubeError, open_memory, reembed, restore_previous,
)

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


@pytest.fixture()
def cube(tmp_path):
    mem = open_memory(tmp_path / "cube")
    yield mem
    mem.close()


def facts(mem: Memory) -> dict[str, str]:
    return {
        "ana": mem.add("The user's sister is called Ana and lives in Lisbon.", source=["s1-t1"],
                       kind="extracted", meta={"speaker": "user", "session": "s1"}),
        "bike": mem.add("The user rides a red bicycle to work every morning.", source=["s1-t2"], kind="raw"),
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


def test_items_vectors_embed_and_html(cube):
    ids = facts(cube)
    df = cube.items()
    assert list(df.columns[:6]) == ["id", "text", "kind", "source", "created", "updated"]
    assert {"speaker", "session"} <= set(df.columns) and set(df["id"]) == set(ids.values())
    vid, mat = cube.vectors()
    assert mat.shape == (3, 384) and set(vid) == set(ids.values())
    assert np.allclose(np.linalg.norm(mat, axis=1), 1.0, atol=1e-5)
    q = cube.embed(["sister"])
    assert q.shape == (1, 384)
    html = cube._repr_html_()
    assert "3</b> memories" in html and "384 dims" in html and str(cube.path) in html
    assert "sister" in cube.search("sister", 1)[0]._repr_html_()


def test_bad_items_are_refused_before_anything_is_written_odd_meta_is_kept(cube):
    facts(cube)
    for bad in ([{"text": ""}], [{"text": "x", "kind": "nonsense"}], [{"text": "x", "source": [3]}],
                [{"text": "x", "colour": "red"}], [{"text": "x", "meta": {"f": object()}}]):
        with pytest.raises((ValueError, TypeError)):
            cube.add_many(bad)
    assert len(cube) == 3
    assert cube.add_many([]) == []
    odd = cube.add("Meta that MemOS's item model would reject.", meta={"tags": "one", "key": 5})
    assert cube.get(odd).meta == {"tags": "one", "key": 5}


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
    assert c is not a and len(c) == 1
    c.close()


def test_two_hundred_adds_and_searches_in_a_row(cube):
    for i in range(200):
        cube.add(f"Memory number {i}: the user mentioned item {i * 7} on day {i % 30}.", source=[f"s1-t{i}"])
        assert len(cube.search(f"item {i * 7}", top_k=3)) == min(3, i + 1)
    assert len(cube) == 200
    cube.save()
    assert len(durable.load(cube.path, 384).records) == 200


# --- durability --------------------------------------------------------------------------------------


def test_durable_when_add_returns_without_save(tmp_path):
    path = tmp_path / "c"
    mem = open_memory(path)
    mid = mem.add("The user was born in Porto.", source=["s1-t1"])
    # no save, no close: what a killed kernel leaves behind
    loaded = durable.load(path, 384)
    assert mid in loaded.records and loaded.records[mid]["source"] == ["s1-t1"]
    mem.close()
    assert not (path / durable.SNAPSHOT).exists()
    with open_memory(path) as again:
        assert again.get(mid).text == "The user was born in Porto."


def test_save_is_atomic_keeps_previous_and_compacts_journal(cube):
    facts(cube)
    cube.save()
    assert (cube.path / durable.SNAPSHOT).exists() and not (cube.path / durable.PREV_SNAPSHOT).exists()
    assert (cube.path / durable.JOURNAL).stat().st_size == 0
    cube.add("The user adopted a cat named Miso.")
    cube.save()
    prev = json.loads((cube.path / durable.PREV_SNAPSHOT).read_text())
    cur = json.loads((cube.path / durable.SNAPSHOT).read_text())
    assert prev["count"] == 3 and cur["count"] == 4 and cur["seq"] > prev["seq"]
    assert not list(cube.path.glob("*.tmp"))


def test_killed_during_save_loop_loses_nothing_durable(tmp_path):
    """SIGKILL lands inside save() (a ~5 MB snapshot being written/renamed) in each of three rounds."""
    path = tmp_path / "c"
    durable_ids: list[str] = []
    for round_ in range(3):
        proc = child("""
            mem = M.open_memory({path!r})
            if len(mem) == 0:
                mem.add_many([{{"text": f"bulk memory {{i}} " + "y" * 200}} for i in range(2000)])
            print("ready", len(mem), flush=True)
            i = 0
            while True:
                mid = mem.add(f"fact {round_}-{{i}} " + "x" * 300, source=[f"s{round_}-t{{i}}"])
                print("durable", mid, flush=True)   # add returned: must survive
                print("saving", flush=True)
                mem.save()
                i += 1
        """, path=str(path), round_=round_)
        try:
            ready = wait_for_line(proc, "ready")
            assert int(ready.split()[1]) >= 2000 + len(durable_ids)
            rng = np.random.default_rng(round_)
            for _ in range(int(rng.integers(3, 8))):
                durable_ids.append(wait_for_line(proc, "durable").split()[1])
            wait_for_line(proc, "saving")
            time.sleep(float(rng.uniform(0.0, 0.03)))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
        loaded = durable.load(path, 384)  # what the next open sees (it must not raise)
        assert set(durable_ids) <= set(loaded.records)
    (path / "memories.json.tmp").write_bytes(b'{"format_version": 1, "items": [{"id": "half')
    with open_memory(path) as mem:
        assert any("removed memories.json.tmp" in n for n in mem.notes), mem.notes
        assert not (path / "memories.json.tmp").exists()
        assert set(durable_ids) <= set(mem.items()["id"]) and len(mem) >= 2000 + len(durable_ids)
        assert all(mem.get(i).text.startswith("fact ") and len(mem.get(i).source) == 1 for i in durable_ids)


def test_damaged_or_missing_index_is_rebuilt_from_durable_copy(tmp_path):
    path = tmp_path / "c"
    with open_memory(path) as mem:
        ids = facts(mem)
    sqlite = path / "qdrant" / "collection" / "memories" / "storage.sqlite"
    assert sqlite.exists()
    with open(sqlite, "r+b") as fh:
        fh.truncate(sqlite.stat().st_size // 2)
    with open_memory(path) as mem:
        assert any("index rebuilt from journal" in n for n in mem.notes), mem.notes
        assert set(mem.items()["id"]) == set(ids.values())
        assert mem.search("sister", 1)[0].id == ids["ana"]
    import shutil

    shutil.rmtree(path / "qdrant")
    with open_memory(path) as mem:
        assert any("index rebuilt" in n and "missing" in n for n in mem.notes), mem.notes
        assert mem.search("bicycle", 1)[0].id == ids["bike"]


def test_index_out_of_step_is_detected_and_rebuilt(tmp_path):
    """A crash between index write and journal write leaves the index ahead: found by sequence numbers."""
    path = tmp_path / "c"
    with open_memory(path) as mem:
        facts(mem)
        mem._text_mem.vector_db.add(mem._points([{**mem._records[next(iter(mem._records))], "seq": 99}]))
    with open_memory(path) as mem:
        assert any("out of step" in n and "1 stale" in n for n in mem.notes), mem.notes


def test_index_collection_of_another_dimension_is_not_reused(tmp_path):
    from qdrant_client import QdrantClient, models

    path = tmp_path / "c"
    with open_memory(path) as mem:
        ids = facts(mem)
    client = QdrantClient(path=str(path / "qdrant"))
    client.delete_collection("memories")
    client.create_collection("memories", vectors_config=models.VectorParams(size=768, distance=models.Distance.DOT))
    client.close()
    with open_memory(path) as mem:
        assert any("768-dim" in n and "index rebuilt" in n for n in mem.notes), mem.notes
        assert mem.text_memory.vector_db.client.get_collection("memories").config.params.vectors.size == 384
        assert mem.search("sister", 1)[0].id == ids["ana"]


def test_dimension_mismatch_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "c"
    with open_memory(path) as mem:
        facts(mem)
    info = json.loads((path / "cube.json").read_text())
    info["dimension"] = 768
    (path / "cube.json").write_text(json.dumps(info))
    with pytest.raises(DimensionMismatchError, match=r"768-dim.*384-dim.*reembed"):
        open_memory(path)
    assert not (path / durable.LOCK_FILE).read_text()  # lock released on the failed open


def test_other_format_version_says_what_to_do(tmp_path):
    path = tmp_path / "c"
    with open_memory(path) as mem:
        facts(mem)
    info = json.loads((path / "cube.json").read_text())
    info["format_version"] = 2
    (path / "cube.json").write_text(json.dumps(info))
    with pytest.raises(CubeFormatError, match="format_version 2.*reads format_version 1.*upgrade"):
        open_memory(path)
    (path / "cube.json").unlink()
    with pytest.raises(CubeFormatError, match="no cube.json"):
        open_memory(path)


def test_truncated_snapshot_is_a_clear_error_and_previous_restores_everything(tmp_path):
    path = tmp_path / "c"
    with open_memory(path) as mem:
        first = facts(mem)
        mem.save()
        later = mem.add("The user plans a trip to Japan in April.")
        mem.save()
        newest = mem.add("The user's favourite colour is teal.")
    snap = path / durable.SNAPSHOT
    snap.write_bytes(snap.read_bytes()[:500])
    with pytest.raises(CubeCorruptError) as err:
        open_memory(path)
    msg = str(err.value)
    assert "memories.json" in msg and "memories.prev.json is readable (3 memories" in msg
    assert "restore_previous" in msg
    blocker = durable.ProcessLock(path)
    blocker.acquire()
    with pytest.raises(CubeLockedError):
        restore_previous(path)
    blocker.release()
    note = restore_previous(path)
    assert "corrupt" in note and list(path.glob("memories.corrupt-*.json"))
    with open_memory(path) as mem:
        assert set(mem.items()["id"]) == {*first.values(), later, newest}


def test_torn_last_journal_line_is_skipped_and_said(tmp_path):
    path = tmp_path / "c"
    with open_memory(path) as mem:
        ids = facts(mem)
    with open(path / durable.JOURNAL, "ab") as fh:
        fh.write(b'{"seq":4,"op":"add","items":[{"id":"half')  # kernel killed mid-append
    with open_memory(path) as mem:
        assert any("torn last line" in n for n in mem.notes), mem.notes
        assert set(mem.items()["id"]) == set(ids.values())
        extra = mem.add("The user has two brothers.")
    with open_memory(path) as mem:  # the torn tail was cut before appending: the journal is clean again
        assert not any("torn" in n for n in mem.notes)
        assert extra in set(mem.items()["id"])


def test_damaged_middle_journal_line_is_a_clear_error(tmp_path):
    path = tmp_path / "c"
    with open_memory(path) as mem:
        facts(mem)
    lines = (path / durable.JOURNAL).read_bytes().split(b"\n")
    lines[1] = lines[1][:40]
    (path / durable.JOURNAL).write_bytes(b"\n".join(lines))
    with pytest.raises(CubeCorruptError, match=r"journal.jsonl line 2 is damaged.*truncate"):
        open_memory(path)


def test_missing_operations_are_detected(tmp_path):
    path = tmp_path / "c"
    with open_memory(path) as mem:
        facts(mem)
        mem.save()
        mem.add("The user likes jazz.")
    (path / durable.SNAPSHOT).unlink()
    (path / durable.PREV_JOURNAL).unlink()
    with pytest.raises(CubeCorruptError, match="operations are missing"):
        open_memory(path)


# --- failures while running --------------------------------------------------------------------------


def test_nan_vector_is_refused_and_store_stays_usable(cube, monkeypatch):
    facts(cube)
    real = cube.embedder.encode
    monkeypatch.setattr(cube.embedder, "encode", lambda texts, **kw: np.full((len(texts), 384), np.nan, np.float32))
    with pytest.raises(ValueError, match="invalid vector"):
        cube.add("This one embeds to NaN.")
    monkeypatch.setattr(cube.embedder, "encode", real)
    assert len(cube) == 3 and len(cube.search("sister", 3)) == 3


def test_nan_reaching_qdrant_fails_cleanly_nothing_partial(cube, monkeypatch):
    import magistral_kit.memory.cube as M

    facts(cube)
    journal_before = (cube.path / durable.JOURNAL).read_bytes()
    monkeypatch.setattr(M, "_check_vectors", lambda recs, dim: None)  # force the NaN through to qdrant
    real = cube.embedder.encode

    def half_nan(texts, **kw):
        out = real(texts)
        out[-1, :] = np.nan
        return out

    monkeypatch.setattr(cube.embedder, "encode", half_nan)
    with pytest.raises(CubeError, match="nothing was stored"):
        cube.add_many([{"text": "A good memory."}, {"text": "A NaN memory."}])
    monkeypatch.undo()
    assert len(cube) == 3 and (cube.path / durable.JOURNAL).read_bytes() == journal_before
    assert {h.text for h in cube.search("memory", 10)} == {r["text"] for r in cube._records.values()}
    cube.add("After the failure the user still adds memories.")
    assert len(cube) == 4


def _desync(vecdb) -> None:
    """The in-RAM state a failed local-mode upsert leaves: `deleted` one entry longer than the vectors."""
    col = vecdb.client._client.collections["memories"]
    col.deleted = np.append(col.deleted, 0)


def test_desynchronised_client_during_search_is_reopened_and_said(cube):
    ids = facts(cube)
    _desync(cube._text_mem.vector_db)
    assert cube.search("sister", 1)[0].id == ids["ana"]
    assert any("reopened qdrant client after failed search" in n for n in cube.notes), cube.notes
    storage = cube.text_memory.vector_db.client._client.collections["memories"].storage.storage
    assert storage.execute("PRAGMA synchronous").fetchone()[0] == 0  # index only: no per-point fsync


def test_failed_add_that_desynchronises_the_client_is_retried_after_reopen(cube, monkeypatch):
    facts(cube)
    vecdb = cube._text_mem.vector_db
    real_add = type(vecdb).add
    calls = []

    def failing_once(self, data):
        calls.append(1)
        if len(calls) == 1:
            _desync(self)  # what qdrant-client <= 1.18 did on a NaN / wrong-dimension vector
            raise ValueError("operands could not be broadcast together with shapes (4,) (3,)")
        return real_add(self, data)

    monkeypatch.setattr(type(vecdb), "add", failing_once)
    mid = cube.add("The user keeps bees on the roof.")
    monkeypatch.undo()
    assert any("reopened qdrant client after failed add" in n for n in cube.notes), cube.notes
    assert cube.search("bees", 1)[0].id == mid and len(cube) == 4 and len(calls) == 2


def test_failed_journal_write_stores_nothing_of_the_batch(cube, monkeypatch):
    facts(cube)

    def disk_full(op):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cube._journal, "append", disk_full)
    with pytest.raises(OSError):
        cube.add_many([{"text": "Batch item one about volcanoes."}, {"text": "Batch item two about lava."}])
    monkeypatch.undo()
    assert len(cube) == 3
    assert cube._text_mem.vector_db.count() == 3  # the index was put back in step
    assert all("volcano" not in h.text for h in cube.search("volcanoes lava", 5))


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
        assert dst.search("sister", 1)[0].id == ids["ana"] and (dst.path / durable.SNAPSHOT).exists()
    finally:
        dst.close()
    with pytest.raises(CubeError, match="not empty"):
        reembed(src, tmp_path / "dst", embedder="embedded")


# --- retrieval hook ------------------------------------------------------------------------------------


def test_retrieval_hook_index_text_and_lexical_fusion(tmp_path):
    from magistral_kit.memory.retrieval import RetrievalOptions

    opts = RetrievalOptions(speaker_in_text=True, date_in_text=False, context_turns=1, lexical_weight=1.0,
                            fusion="rrf", query_rewrite=False, candidates=20)
    with open_memory(tmp_path / "c", retrieval=opts) as mem:
        mid = mem.add("I finally finished the Zyxwortle painting.", meta={"speaker": "Caroline"}, source=["D1:3"])
        for i in range(15):
            mem.add(f"Caroline talked about art class number {i} and painting techniques.",
                    meta={"speaker": "Caroline"})
        _, mat = mem.vectors()
        want = mem.embed(["Caroline: I finally finished the Zyxwortle painting."])[0]
        assert np.allclose(mem._records[mid]["vector"], want, atol=1e-5)  # speaker embedded, text as given
        assert mem.get(mid).text == "I finally finished the Zyxwortle painting."
        hit = mem.search("What is the Zyxwortle?", top_k=3)[0]
        assert hit.id == mid and hit.source == ["D1:3"] and hit.score < 0.1  # an RRF score
        ctx = mem.add("Yes, last Friday!", meta={"speaker": "Mel", "context": ["Caroline: Did you see Qwertop?"]})
        want = mem.embed(["Caroline: Did you see Qwertop?\nMel: Yes, last Friday!"])[0]
        assert np.allclose(mem._records[ctx]["vector"], want, atol=1e-5)  # context widens what is embedded
        assert ctx in mem._lexical and "qwertop" not in mem._lexical._docs[ctx]  # ... not what BM25 holds
        assert mem.get(ctx).text == "Yes, last Friday!"
    assert json.loads((tmp_path / "c" / "cube.json").read_text())["index_text"] == {
        "speaker_in_text": True, "date_in_text": False, "context_turns": 1}
    with pytest.raises(CubeFormatError, match="not a cube"):
        open_memory(tmp_path / "nothing-here", read_only=True)
    assert not (tmp_path / "nothing-here").exists()
    with open_memory(tmp_path / "plain") as plain:
        plain.add("Plain memory.")
        assert plain.retrieval is None and 0.5 < plain.search("Plain memory.", 1)[0].score <= 1.0001
