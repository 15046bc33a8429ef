"""The embedding map and heatmap on a real cube (embedded MiniLM), plus the demo and inspector helpers."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from magistral_kit.notebook import demo
from magistral_kit.notebook import inspector
from magistral_kit.notebook import maps as viz


@pytest.fixture(scope="module")
def memory(tmp_path_factory):
    from magistral_kit.memory.cube import open_memory

    mem = open_memory(tmp_path_factory.mktemp("cubes") / "viz")
    demo.ingest(mem, demo.demo_items(24), batch_size=10, progress=False)
    yield mem
    mem.close()


def test_pca_projection_is_deterministic_and_places_extra_rows():
    x = np.random.default_rng(1).normal(size=(12, 16)).astype(np.float32)
    a, qa, used = viz.project(x, "pca", extra=x[:1])
    b, qb, _ = viz.project(x.copy(), "pca", extra=x[:1])
    assert used == "pca" and a.shape == (12, 2)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(qa[0], a[0], atol=1e-5)  # the same vector lands on the same spot
    # first axis carries the most variance, as PCA must
    assert a[:, 0].var() >= a[:, 1].var()


def test_auto_picks_umap_with_enough_points_and_a_seed_makes_it_repeatable(memory):
    ids, vecs = memory.vectors()
    small, _, used_small = viz.project(vecs[: viz.UMAP_MIN_POINTS - 1], "auto")
    assert used_small == "pca"
    first, _, used = viz.project(vecs, "auto", seed=3)
    again, _, _ = viz.project(vecs, "auto", seed=3)
    assert used == "umap" and first.shape == (len(ids), 2)
    np.testing.assert_allclose(first, again, atol=1e-6)


def test_map_colours_by_session_shows_text_on_hover_and_links_the_query_to_its_hits(memory):
    query = "Who plays the cello?"
    m = viz.memory_map(memory, query=query, top_k=4, method="pca", progress=False)
    expected = memory.search(query, top_k=4)
    assert [h.id for h in m.hits] == [h.id for h in expected]
    assert [h.score for h in m.hits] == pytest.approx([h.score for h in expected])
    traces = m.figure.data
    sessions = {t.name for t in traces if t.mode == "markers" and t.name != "query"}
    assert sessions == {"demo-home", "demo-family", "demo-music"}
    lines = [t for t in traces if t.mode == "lines"]
    assert len(lines) == 4
    for line, hit in zip(lines, m.hits):  # each line ends on its hit's point
        row = m.points[m.points["id"] == hit.id].iloc[0]
        assert (line.x[1], line.y[1]) == pytest.approx((row["x"], row["y"]))
        assert (line.x[0], line.y[0]) == pytest.approx(m.query_xy)
    hover = " ".join(h for t in traces if t.mode == "markers" for h in (t.hovertext or []))
    assert "Lena" in hover and "demo-music-t1" in hover
    assert len(m.points) == len(memory) and m.summary()["sessions"] == 3


def test_colour_by_kind_and_source(memory):
    by_kind = viz.memory_map(memory, color_by="kind", method="pca", progress=False)
    assert [t.name for t in by_kind.figure.data] == ["manual"]
    by_source = viz.memory_map(memory, color_by="source", method="pca", progress=False)
    assert len(by_source.figure.data) == len(memory)  # every demo memory has its own turn id


def test_map_html_is_standalone_under_tmp(memory, tmp_path, monkeypatch):
    monkeypatch.setenv("MAGISTRAL_KIT_TMP", str(tmp_path))
    m = viz.memory_map(memory, query="cat", top_k=2, method="pca", progress=False)
    path = m.write_html("map.html")
    assert path == tmp_path / "maps" / "map.html"
    text = path.read_text()
    assert "<script src=" not in text and len(text) > 1_000_000  # plotly.js inlined: opens offline
    assert "Porto" in text and "demo-music" in text  # hover texts and legend are in the file


def test_heatmap_of_the_newest_memories(memory):
    fig = viz.similarity_heatmap(memory, newest=6, progress=False)
    z = np.array(fig.data[0].z)
    assert z.shape == (6, 6)
    np.testing.assert_allclose(np.diag(z), 1.0, atol=1e-5)
    np.testing.assert_allclose(z, z.T, atol=1e-6)
    newest = inspector.memory_table(memory, newest=6)["text"].tolist()[::-1]  # oldest first, like the map
    assert [label.split(". ", 1)[1].rstrip("…") for label in fig.data[0].y] == [t[:32] for t in newest]
    assert list(fig.data[0].x) == [str(n) for n in range(1, 7)]  # columns: the rows' numbers
    sims = viz.similarity_matrix(memory, newest_n=6, progress=False)
    assert list(sims.index) == inspector.memory_table(memory, newest=6)["id"].tolist()[::-1]


def test_plain_arrays_and_embedding_with_a_progress_bar(memory, capsys):
    texts = ["a cat on a shelf", "a cello in a case", "a cat sleeping"]
    pts = viz.gather(texts=texts, embed=memory.embed, progress=True)
    assert pts.vectors.shape == (3, memory.dimension)
    assert "embedding memories" in capsys.readouterr().err  # tqdm's plain bar, headless
    m = viz.memory_map(texts=texts, embed=memory.embed, query="kitten", top_k=2, progress=False)
    assert {h.text for h in m.hits} == {"a cat on a shelf", "a cat sleeping"}
    with pytest.raises(ValueError, match="line up"):
        viz.gather(texts=texts, vectors=np.zeros((2, 4)))
    with pytest.raises(ValueError, match="no vectors"):
        viz.gather(texts=texts)


def test_session_of_reads_provenance():
    assert viz.session_of(["s20261125110849abcd-t3"]) == "s20261125110849abcd"
    assert viz.session_of([]) == "(added by hand)"
    assert viz.session_of(["D1:3"]) == "D1:3"
    table = viz._normalise_items(pd.DataFrame({"id": ["a"], "text": ["x"], "source": [["demo-x-t2"]]}), None, None)
    assert table["session"].tolist() == ["demo-x"]


# --- demo + inspector ----------------------------------------------------------------------------------
def test_fact_recall_needs_both_provenance_and_keyword(memory):
    hits = memory.search("Where does Lena live?", top_k=3)
    porto = next(h for h in hits if "Porto" in h.text)

    class T:  # the Turn fields fact_recall reads
        retrieved = hits

    assert demo.fact_recall(T, "porto", porto.source).found
    assert not demo.fact_recall(T, "porto", ["other-session-t1"]).found
    assert not demo.fact_recall(T, "Madrid", porto.source).found


def test_reset_cube_refuses_a_folder_that_is_not_a_cube(tmp_path):
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "thesis.tex").write_text("...")
    with pytest.raises(ValueError, match="not a memory cube"):
        demo.reset_cube(str(folder))
    assert (folder / "thesis.tex").exists()
    assert demo.reset_cube(str(folder), enabled=False) == folder


def test_build_demo_cube_resets_and_edits_show_before_and_after(tmp_path):
    cube = str(tmp_path / "demo")
    mem = demo.build_demo_cube(cube, n=9, progress=False)
    assert len(mem) == 9
    mem = demo.build_demo_cube(cube, n=6, progress=False)  # reset: starts empty again
    assert len(mem) == 6 and set(inspector.kind_counts(mem)["kind"]) == {"manual"}
    target = inspector.find_id(mem, "balcony")
    edit = inspector.update_and_show(mem, target, "Lena grows chili peppers on her balcony.", query="chili peppers")
    assert edit.before["text"].startswith("Lena's flat") and edit.after["text"].startswith("Lena grows chili")
    assert edit.after["created"] == edit.before["created"] and edit.rank_after == 1
    gone = inspector.delete_and_show(mem, target)
    assert gone.after is None and gone.rank_before == 1 and gone.rank_after is None and len(mem) == 5
    table = inspector.memory_table(mem)
    assert target not in table["id"].tolist() and list(table.columns[:4]) == ["text", "kind", "status", "source"]
    mem.close()


def test_inspector_maps_a_cube_another_process_holds_open(tmp_path):
    """The inspector's workflow beside a running chat: another process holds the cube writable; here it is
    opened read-only (no lock), tabled and mapped."""
    import subprocess
    import sys

    from magistral_kit.memory.cube import CubeLockedError, open_memory

    path = tmp_path / "held"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\nfrom magistral_kit.notebook import demo\nfrom magistral_kit.memory.cube import open_memory\n"
         f"m = open_memory({str(path)!r})\ndemo.ingest(m, demo.demo_items(7), progress=False)\n"
         "print('ready', flush=True)\nsys.stdin.read()\nm.close()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(CubeLockedError):
            open_memory(path)
        mem = demo.open_if_present(str(path))
        assert mem.read_only and len(inspector.memory_table(mem)) == 7
        m = viz.memory_map(mem, query="Who is Ana?", top_k=3, method="pca", progress=False)
        assert len(m.points) == 7 and len(m.hits) == 3
        mem.close()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert holder.returncode == 0


def test_an_empty_cube_draws_an_empty_map_and_heatmap(tmp_path):
    from magistral_kit.memory.cube import open_memory

    with open_memory(tmp_path / "empty") as mem:
        m = viz.memory_map(mem, query="anything", progress=False)
        assert len(m.points) == 0 and m.hits == [] and m.method == "none"
        assert np.array(viz.similarity_heatmap(mem, progress=False).data[0].z).size == 0
        assert inspector.memory_table(mem).empty and inspector.search_table(mem, "x").empty


# --- what a researcher reads --------------------------------------------------------------------------
def test_tables_show_whole_left_aligned_text_short_ids_and_one_line_times(memory):
    from magistral_kit.notebook.tables import Table

    table = inspector.memory_table(memory)
    assert isinstance(table, Table) and isinstance(table.head(3), Table)  # slices keep the display
    html = table._repr_html_()
    long_text = max(table["text"], key=len)
    assert len(long_text) > 50 and long_text.replace("'", "&#39;") in html  # whole, not cut at 50 with "…"
    full_id = table["id"].iat[0]
    assert len(full_id) == 36 and full_id not in html and full_id[:8] + "…" in html  # short in the display…
    assert inspector.find_id(memory, table["text"].iat[0]) == full_id  # …full in the data
    created = str(table["created"].iat[0])
    assert "." in created and created not in html and created[:10] + " " + created[11:19] in html
    assert "text-align: left" in html
    escaped = Table({"text": ["<script>alert(1)</script>"]})._repr_html_()
    assert "<script>alert" not in escaped and "&lt;script&gt;" in escaped


def test_kind_counts_is_a_small_table_and_scores_are_rounded(memory):
    counts = inspector.kind_counts(memory)
    assert list(counts.columns) == ["kind", "memories"]
    assert counts.set_index("kind").loc["manual", "memories"] == len(memory)
    assert "(no rows)" in inspector.memory_table(None)._repr_html_()
    hits = inspector.search_table(memory, "Who plays the cello?", 3)
    score = hits["score"].iat[0]
    assert f"{score:.3f}" in hits._repr_html_() and str(score) != f"{score:.3f}"


def test_recorded_results_read_as_a_rounded_table_and_keep_exact_values():
    from magistral_kit.notebook.results import MIME, results_html

    html = results_html({"fact_score": 0.68969000311916, "paths": ["json", "raw"]})
    assert "0.69" in html and "0.68969" not in html and "<th" in html and "fact_score" in html
    from unittest import mock

    with mock.patch("IPython.display.display") as shown:
        from magistral_kit.notebook.results import record

        record(fact_score=0.68969000311916)
    bundle = shown.call_args.args[0]
    assert bundle[MIME]["fact_score"] == 0.68969000311916 and "text/html" in bundle


def test_map_hover_is_dark_on_light_and_the_standalone_file_fills_the_window(memory, tmp_path):
    m = viz.memory_map(memory, query="Who plays the cello?", method="pca", progress=False)
    label = m.figure.layout.hoverlabel
    assert label.bgcolor == "white" and label.font.color == "#222"
    assert m.figure.layout.width is None  # the notebook plot follows the cell's width
    text = m.write_html(tmp_path / "map.html").read_text()
    assert '"responsive": true' in text and "width:100%" in text and "height:96vh" in text
    assert m.figure.layout.height == 620  # the notebook's figure is unchanged by the file export
