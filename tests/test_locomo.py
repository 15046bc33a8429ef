"""LoCoMo: loading (both file forms, bad files), evidence normalisation, the recall metric on a hand-made
conversation, provenance under scoring-only context, ingestion through the real memory layer, the retrieval
primitives, and the notebook executed with papermill."""
from __future__ import annotations

import json

import pytest

from magistral_kit import KitConfig
from magistral_kit.evaluation import locomo_eval as le
from magistral_kit.evaluation import locomo as locomo_mod
from magistral_kit.evaluation.locomo import (LocomoFormatError, Question, evidence_report, load_locomo,
                                             normalise_evidence, parse_conversation, score_question, summarise)
from magistral_kit.evaluation.synthetic import conversation as generated_conversation, open_locomo, write_locomo
from magistral_kit.memory.retrieval import LexicalIndex, RetrievalOptions, fuse, index_text, lexical_text, rerank

SECRET = "GOLD-ANNOTATION-NEVER-INGESTED"


def tiny_conversation() -> dict:
    """Two sessions, facts only one turn holds, gold annotations that must never reach a cube."""
    return {
        "speaker_a": "Ana", "speaker_b": "Ben",
        "session_1_date_time": "1:00 pm on 8 May, 2023",
        "session_1": [
            {"speaker": "Ana", "dia_id": "D1:1", "text": "My sister Maria moved to Lisbon to study marine biology."},
            {"speaker": "Ben", "dia_id": "D1:2", "text": "That's lovely, good for her!"},
            {"speaker": "Ana", "dia_id": "D1:3", "text": "I adopted a grey kitten called Pixel last weekend."},
        ],
        "session_2_date_time": "9:00 am on 20 June, 2023",
        "session_2": [
            {"speaker": "Ben", "dia_id": "D2:1", "text": "I finally ran the Berlin marathon in under four hours."},
            {"speaker": "Ana", "dia_id": "D2:2", "text": "Amazing! Was the weather okay?"},
        ],
        "session_1_observation": {"Ana": [[SECRET, "D1:1"]]},
        "session_1_summary": SECRET,
        "events_session_1": {"Ana": [SECRET], "date": "8 May, 2023"},
        "qa": [
            {"question": "Where did Maria move to?", "answer": "Lisbon", "evidence": ["D1:1"], "category": 4},
            {"question": "What is the name of Ana's kitten?", "answer": "Pixel", "evidence": ["D1:03"],
             "category": 4},
            {"question": "Which marathon did Ben run?", "answer": "Berlin", "evidence": ["D2:1; D1:2"],
             "category": 1},
            {"question": "What did Ana say about Paris?", "adversarial_answer": "x", "evidence": ["D1:1"],
             "category": 5},
            {"question": "Is Ana kind?", "answer": "yes", "evidence": [], "category": 3},
        ],
    }


@pytest.fixture()
def generated(tmp_path):
    """The project's own LoCoMo-format set: what tests use, so a clone needs nothing beside it."""
    return write_locomo(tmp_path / "generated", conversations=3, seed=0)


# --- loading ------------------------------------------------------------------------------------------
@pytest.mark.locomo
def test_shared_folder_loads_all_ten_with_the_known_counts(locomo_path):
    convs = load_locomo(locomo_path)
    assert [c.sample_id for c in convs] == ["26", "30", "41", "42", "43", "44", "47", "48", "49", "50"]
    report = evidence_report(convs)
    assert report["questions"] == 1986 and report["scored questions (categories 1-4)"] == 1536
    assert report["questions without evidence"] == 4
    assert report["split ';'"] == 1 and report["split whitespace"] == 3 and report["leading zero"] == 1
    assert report["stray colon"] == 1 and report["dropped unparseable"] == 1 and report["dangling (kept)"] == 2
    assert sum(len(c.turns) for c in convs) == 5882


def test_public_single_file_form_gives_the_same_conversations(tmp_path, generated):
    flat = [json.loads((generated / f"{i}.json").read_text()) for i in ("g2", "g1")]
    public = []
    for sid, d in zip(("conv-30", "conv-26"), flat):
        dialogue = {k: v for k, v in d.items() if k == "speaker_a" or k == "speaker_b"
                    or (k.startswith("session_") and not k.endswith(("_observation", "_summary")))}
        public.append({"sample_id": sid, "conversation": dialogue, "qa": d["qa"]})
    path = tmp_path / "locomo10.json"
    path.write_text(json.dumps(public))
    from_file = load_locomo(path)
    from_folder = load_locomo(generated, conversations=["g2", "g1"])
    assert [c.sample_id for c in from_file] == ["conv-30", "conv-26"]
    for a, b in zip(from_file, from_folder):
        assert a.turns == b.turns and a.questions == b.questions
    assert [c.sample_id for c in load_locomo(path, ["conv-26"])] == ["conv-26"]


def test_only_dialogue_is_read_never_annotations():
    conv = parse_conversation(tiny_conversation(), "tiny")
    assert sorted(conv.sessions) == [1, 2] and len(conv.turns) == 5
    items = le.raw_items(conv, context_turns=2)
    assert SECRET not in json.dumps(items)
    assert conv.turns[0].date == "1:00 pm on 8 May, 2023" and conv.turns[3].date == "9:00 am on 20 June, 2023"


@pytest.mark.parametrize("data, named", [
    ({"speaker_a": "A", "session_1": [], "qa": []}, "speaker_b"),
    ({"speaker_a": "A", "speaker_b": "B", "qa": []}, "session_1"),
    ({"speaker_a": "A", "speaker_b": "B", "session_1": []}, "qa"),
    ({"conversation": {"speaker_a": "A", "speaker_b": "B"}, "qa": []}, "session_1"),
    ({"speaker_a": "A", "speaker_b": "B", "session_1": [{"speaker": "A", "text": "hi"}], "qa": []}, "dia_id"),
    ([1, 2], "expected a JSON object"),
])
def test_a_file_that_is_not_locomo_names_what_is_missing(tmp_path, data, named):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(LocomoFormatError, match=named) as err:
        load_locomo(path)
    assert "Fix" in str(err.value) or "expected" in str(err.value)


def test_unreadable_or_missing_paths_say_so(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(LocomoFormatError, match="not valid JSON"):
        load_locomo(tmp_path)
    with pytest.raises(LocomoFormatError, match="does not exist"):
        load_locomo(tmp_path / "nowhere")
    with pytest.raises(LocomoFormatError, match=r"\['99'\] not in"):
        load_locomo(write_locomo(tmp_path / "g"), conversations=["99"])


def test_where_the_data_comes_from(tmp_path, monkeypatch, generated):
    """A given path, else $MAGISTRAL_LOCOMO, else ../shared/locomo if present; without any, a clear error."""
    monkeypatch.setattr(locomo_mod, "shared_path", lambda: tmp_path / "no-shared")
    monkeypatch.delenv(locomo_mod.LOCOMO_ENV, raising=False)
    assert locomo_mod.find_locomo() is None
    with pytest.raises(LocomoFormatError, match="no LoCoMo data found.*MAGISTRAL_LOCOMO.*synthetic"):
        load_locomo()
    monkeypatch.setenv(locomo_mod.LOCOMO_ENV, str(generated))
    assert [c.sample_id for c in load_locomo()] == ["g1", "g2", "g3"]
    monkeypatch.delenv(locomo_mod.LOCOMO_ENV)
    monkeypatch.setattr(locomo_mod, "shared_path", lambda: generated)
    assert locomo_mod.find_locomo() == generated


def test_generated_set_is_locomo_shaped_and_seeded(tmp_path):
    a = write_locomo(tmp_path / "a", conversations=2, seed=7)
    b = write_locomo(tmp_path / "b", conversations=2, seed=7)
    assert [f.read_text() for f in sorted(a.glob("*.json"))] == [f.read_text() for f in sorted(b.glob("*.json"))]
    assert generated_conversation(1) != generated_conversation(2)
    convs = load_locomo(a)
    report = evidence_report(convs)
    assert report["questions without evidence"] == 0 and report["scored questions (categories 1-4)"] == 12
    for c in convs:
        assert {q.category for q in c.questions} == {1, 2, 3, 4, 5}
        assert all(set(q.evidence) <= c.turn_ids for q in c.questions)  # every evidence id names a real turn
        assert len(c.sessions) == 3 and all(c.turn(q.evidence[0]).text for q in c.questions)


def test_without_data_the_pipeline_runs_on_the_generated_set_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(locomo_mod, "shared_path", lambda: tmp_path / "no-shared")
    monkeypatch.delenv(locomo_mod.LOCOMO_ENV, raising=False)
    monkeypatch.setenv("MAGISTRAL_KIT_TMP", str(tmp_path / "tmp"))
    convs, source = open_locomo(None, ["30"])
    assert "GENERATED" in source and [c.sample_id for c in convs] == ["g1", "g2", "g3"]
    run = le.run(convs, "raw", RetrievalOptions(), cube_root=tmp_path / "cubes", progress=False)
    assert run.summary["overall"]["questions"] == 18
    assert run.summary["overall"]["recall@5"] >= 0.8, run.summary  # facts between fillers: easy, but not trivial
    convs, source = open_locomo(tmp_path / "tmp" / "locomo-generated", ["g2"])
    assert source.startswith("LoCoMo from") and [c.sample_id for c in convs] == ["g2"]


# --- evidence -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, expected, fix", [
    (["D8:6; D9:17"], ("D8:6", "D9:17"), "split ';'"),
    (["D9:1 D4:4 D4:6"], ("D9:1", "D4:4", "D4:6"), "split whitespace"),
    (["D30:05"], ("D30:5",), "leading zero"),
    (["D:11:26"], ("D11:26",), "stray colon"),
    (["D1:18", "D", "D1:20"], ("D1:18", "D1:20"), "dropped unparseable"),
    (["D4:5", "D4:5", "D5:5"], ("D4:5", "D5:5"), "duplicate removed"),
    (["D1:1"], ("D1:1",), None),
])
def test_evidence_normalisation(raw, expected, fix):
    ids, fixes = normalise_evidence(raw)
    assert ids == expected
    assert (dict(fixes) == {fix: fixes[fix]} and fixes[fix] >= 1) if fix else not fixes


def test_dangling_ids_are_kept_and_counted():
    ids, fixes = normalise_evidence(["D10:19"], known_ids={"D10:1"})
    assert ids == ("D10:19",) and fixes["dangling (kept)"] == 1


# --- metric -------------------------------------------------------------------------------------------
def test_metric_on_a_hand_made_conversation():
    conv = parse_conversation(tiny_conversation(), "tiny")
    scored = conv.scored_questions()
    assert [q.question for q in scored] == ["Where did Maria move to?", "What is the name of Ana's kitten?",
                                             "Which marathon did Ben run?"]  # category 5 and no-evidence out
    assert scored[1].evidence == ("D1:3",) and scored[2].evidence == ("D2:1", "D1:2")
    # retrieved provenance per question (best first), chosen so each outcome is known
    retrieved = [[["D1:1"]], [["D2:2"], ["D1:1"], ["D1:2"], ["D2:1"], ["D1:3"]], [["D1:3"], ["D1:2", "D1:1"]]]
    rows = [{"conversation": "tiny", "category": q.category,
             **{f"hit@{k}": v for k, v in score_question(q, r).items()}} for q, r in zip(scored, retrieved)]
    assert [(r["hit@1"], r["hit@5"], r["hit@10"]) for r in rows] == [
        (True, True, True), (False, True, True), (False, True, True)]
    s = summarise(rows)
    assert s["overall"] == {"recall@1": pytest.approx(1 / 3), "recall@5": 1.0, "recall@10": 1.0, "questions": 3}
    assert s["per_category"]["single-hop"]["recall@1"] == 0.5 and s["per_category"]["multi-hop"]["questions"] == 1
    q = Question("q", "a", 4, ("D1:1",), ("D1:1",))
    assert score_question(q, [["D1:2"]] * 10) == {1: False, 5: False, 10: False}


# --- retrieval primitives -----------------------------------------------------------------------------
def test_lexical_index_add_remove_scores():
    idx = LexicalIndex()
    idx.add("a", "Caroline went to the pottery workshop")
    idx.add("b", "Melanie painted a sunrise over the lake")
    idx.add("c", "Pottery classes calm me down")
    s = idx.scores("When did Caroline go to pottery?")
    assert set(s) == {"a", "c"} and s["a"] > s["c"] > 0
    idx.remove("a")
    assert set(idx.scores("Caroline")) == set() and len(idx) == 2
    idx.add("c", "sunrise")  # replacing
    assert set(idx.scores("pottery")) == set()


def test_lexical_match_leaves_out_words_held_by_too_many_memories(monkeypatch):
    idx = LexicalIndex()
    idx.add_many([(f"m{i}", f"note {i} about the garden") for i in range(40)] + [("rare", "garden gnome Rufus")])
    assert set(idx.scores("garden Rufus")) == {f"m{i}" for i in range(40)} | {"rare"}  # small cube: every word
    monkeypatch.setattr(LexicalIndex, "COMMON_MIN", 10)
    monkeypatch.setattr(LexicalIndex, "COMMON_SHARE", 0.5)  # 'garden' (41 of 41) is over the share
    assert set(idx.scores("garden Rufus")) == {"rare"}
    monkeypatch.setattr(LexicalIndex, "COMMON_SHARE", 1.0)
    monkeypatch.setattr(LexicalIndex, "COMMON_MAX", 20)  # ... and over the absolute bound of a huge cube
    assert set(idx.scores("garden Rufus")) == {"rare"}
    monkeypatch.setattr(LexicalIndex, "COMMON_MAX", 100)
    assert len(idx.scores("garden Rufus")) == 41
    assert set(idx.scores("garden Rufus", ids=["m3", "rare", "nope"])) == {"m3", "rare"}  # only those asked


def test_fusion_and_rerank_bring_in_lexical_only_matches():
    dense = {"x": 0.6, "y": 0.5}
    assert fuse(dense, {"y": 4.0}, 0.5, "linear") == {"x": 0.6, "y": 1.0}
    rrf = fuse(dense, {"y": 4.0}, 1.0, "rrf")
    assert rrf["y"] > rrf["x"]
    idx = LexicalIndex()
    for i, t in {"x": "the weather was fine", "y": "we talked", "z": "the Berlin marathon was long"}.items():
        idx.add(i, t)
    opts = RetrievalOptions(lexical_weight=0.5, fusion="linear")
    ranked = rerank("Berlin marathon?", [("x", 0.6), ("y", 0.5)], 2, opts, idx)
    assert ranked[0][0] == "z"  # found by BM25 though not among the dense candidates
    assert rerank("Berlin marathon?", [("x", 0.6), ("y", 0.5)], 2, opts.replace(lexical_weight=0), idx) == \
        [("x", 0.6), ("y", 0.5)]


def test_every_retrieval_option_is_a_config_field_and_back():
    config_fields = {n for n in KitConfig.model_fields if n.startswith("retrieval_")}
    assert config_fields == {f"retrieval_{f}" for f in RetrievalOptions.__dataclass_fields__}
    assert all(KitConfig.model_fields[n].json_schema_extra["section"] == "retrieval" for n in config_fields)


def test_options_come_from_the_config_and_text_hooks():
    opts = RetrievalOptions.from_config(KitConfig(retrieval_lexical_weight=0, retrieval_context_turns=1))
    assert opts.lexical_weight == 0 and opts.context_turns == 1
    assert RetrievalOptions.from_config(KitConfig()) == RetrievalOptions()
    meta = {"speaker": "Ana", "date": "8 May", "context": ["Ben: one", "Ben: two"]}
    assert index_text("hi", meta, opts.replace(date_in_text=True)) == "Ben: two\n(8 May) Ana: hi"
    assert lexical_text("hi", meta, opts.replace(date_in_text=False)) == "Ana: hi"
    assert index_text("hi", {}, opts) == "hi"


# --- through the real memory layer --------------------------------------------------------------------
def test_raw_ingestion_through_the_memory_layer(tmp_path):
    conv = parse_conversation(tiny_conversation(), "tiny")
    opts = RetrievalOptions(context_turns=1)
    mem, info = le.ingest(conv, "raw", opts, tmp_path / "cube", progress=False)
    try:
        assert len(mem) == 5 and info["memories"] == 5
        items = mem.items()
        assert sorted(s for src in items["source"] for s in src) == sorted(t.dia_id for t in conv.turns)
        hit = mem.search("Where did Maria move to?", 1)[0]
        assert hit.source == ["D1:1"] and hit.kind == "episodic"  # "raw" is read as episodic (contract: KINDS)
        assert hit.meta["speaker"] == "Ana" and hit.meta["date"] == "1:00 pm on 8 May, 2023"
        assert hit.text == conv.turns[0].text
        rows = le.evaluate(conv, mem, progress=False)
        assert [r["hit@1"] for r in rows][:2] == [True, True] and all(r["hit@5"] for r in rows)
    finally:
        mem.close()


def test_context_for_scoring_never_widens_provenance(tmp_path):
    """Ben's 'That's lovely' is embedded with Ana's Lisbon turn as context: it may be FOUND by it, but it
    still names only its own turn, so retrieving it alone is not a hit for the Lisbon question."""
    conv = parse_conversation(tiny_conversation(), "tiny")
    items = le.raw_items(conv, context_turns=2)
    assert [i["source"] for i in items] == [[t.dia_id] for t in conv.turns]
    assert items[1]["meta"]["context"] == ["Ana: " + conv.turns[0].text]
    mem, _ = le.ingest(conv, "raw", RetrievalOptions(context_turns=2, lexical_weight=0), tmp_path / "c",
                       progress=False)
    try:
        hits = mem.search("Maria moved to Lisbon to study marine biology", 5)
        assert all(len(h.source) == 1 and h.source == [h.meta["dia_id"]] for h in hits)
        lovely = next(h for h in hits if h.source == ["D1:2"])
        assert "Lisbon" not in lovely.text
        q = conv.scored_questions()[0]
        assert score_question(q, [lovely.source])[1] is False
    finally:
        mem.close()


def test_extract_mode_aligns_each_memory_to_the_turns_it_restates(tmp_path):
    conv = parse_conversation(tiny_conversation(), "tiny")
    replies = {1: ["Ana's sister Maria moved to Lisbon to study marine biology.",
                   "The user enjoys quantum chromodynamics lectures."],
               2: ["Ben ran the Berlin marathon in under four hours."]}

    def fake_llm(messages, max_new_tokens):
        session = 1 if "Lisbon" in json.dumps(messages) else 2
        return json.dumps({"memory list": [{"key": "k", "memory_type": "UserMemory", "value": v, "tags": []}
                                           for v in replies[session]], "summary": "s"})

    mem, info = le.ingest(conv, "extract", RetrievalOptions(), tmp_path / "x", llm=fake_llm, progress=False)
    try:
        by_text = {t: s for t, s in zip(mem.items()["text"], mem.items()["source"])}
        assert list(by_text[replies[1][0]]) == ["D1:1"]
        assert replies[1][1] not in by_text  # said by no one in the session: rejected as ungrounded
        assert list(by_text[replies[2][0]]) == ["D2:1"]
        assert info["extraction"]["sessions"] == 2 and info["extraction"]["rejected"] == 1
    finally:
        mem.close()


# --- the notebook -------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.locomo
def test_notebook_runs_on_one_conversation_and_beats_the_baseline(locomo_path):
    from test_notebooks import execute  # the shared runner: one execution per session, failures name the cell

    from magistral_kit.notebook.results import read_results

    r = read_results(execute("03_locomo_eval"))
    assert r["data"] == f"LoCoMo from {locomo_path}"
    assert r["conversations"] == ["30"] and r["mode"] == "raw"
    assert r["overall"]["questions"] == 81 and r["baseline_overall"]["questions"] == 81
    assert r["overall"]["recall@5"] >= 0.55, r["overall"]
    assert r["overall"]["recall@5"] > r["baseline_overall"]["recall@5"] + 0.05
    assert set(r["per_category"]) == {"single-hop", "multi-hop", "temporal"}  # conversation 30: no open-domain


def test_only_find_locomo_looks_beside_the_repository():
    """The one place that may read outside the clone is `locomo.shared_path` (used when nothing else is given)."""
    from magistral_kit.config import REPO_ROOT

    code = [p for p in (REPO_ROOT / "magistral_kit").rglob("*.py")] + list((REPO_ROOT / "bench").glob("*.py"))
    outside = [str(p.relative_to(REPO_ROOT)) for p in code
               if "REPO_ROOT.parent" in p.read_text(encoding="utf-8") or "parents[2]" in p.read_text(encoding="utf-8")]
    assert outside == ["magistral_kit/evaluation/locomo.py"]
    assert locomo_mod.shared_path() == REPO_ROOT.parent / "shared" / "locomo"
