"""The notebooks as a researcher sees them: JupyterLab in headless Chromium (Playwright driving Debian's
/usr/bin/chromium; no `playwright install`).

A private JupyterLab (127.0.0.1, a token, a free port) serves copies of notebooks 01 and 02 with test cube
names injected (papermill's parameter cell), so a researcher's cubes are never touched. Notebook 01 is run
with Run > Run All Cells, then a message is typed into the chat panel and sent with **Enter**; notebook 02
is run and its embedding map hovered. Screenshots go to tmp/browser/.

This test FAILS (never skips) when Chromium is missing: its message prints the command that installs it.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from magistral_kit.config import REPO_ROOT, tmp_dir

from lab_browser import (INSTALL_HINT, NOTEBOOK, bad_outputs, browser_page, find_chromium, lab_server,
                         open_notebook, run_all, wait_all_ran, write_settings)

pytestmark = pytest.mark.slow

SHOTS = tmp_dir() / "browser"
RUN_TIMEOUT_MS = 360_000  # one notebook's Run All on 2 shared CPU cores
TURN_TIMEOUT_MS = 180_000
PARAMETERS = {
    "01_memory_chat": {"CUBE": "test-browser-demo", "RESET": True},
    "02_memory_inspector": {"CUBE": "test-browser-inspector", "MAIN_CUBE": "test-browser-demo",
                            "MAP_HTML": "test_browser_memory_map.html"},
}
MESSAGE = "My brother Tomás flies seaplanes from Faro every summer."


def _prepare(work: Path) -> None:
    """Copies of notebooks 01 and 02 with the test's parameters injected (as papermill would)."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    work.mkdir(parents=True)
    for name, params in PARAMETERS.items():
        nb = load_notebook_node(str(REPO_ROOT / "notebooks" / f"{name}.ipynb"))
        nb = parameterize_notebook(nb, params, kernel_name="python3", language="python")
        nbformat.write(nb, work / f"{name}.ipynb")


@pytest.fixture(scope="module")
def page():
    """A page in headless Chromium on a private JupyterLab (light theme first)."""
    if find_chromium() is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.fail("playwright is not installed. Fix: pip install playwright==1.65.2 (no `playwright "
                    "install` needed: the test drives the system Chromium)", pytrace=False)
    work = SHOTS / "work"
    shutil.rmtree(work, ignore_errors=True)
    _prepare(work)
    with lab_server(work, theme="light") as lab, browser_page(SHOTS / "profile") as pg:
        pg.lab = lab
        yield pg


def _panel_state(page) -> dict:
    return page.eval_on_selector(f"{NOTEBOOK} .mk-chat-panel", """p => {
        const msgs = [...p.querySelectorAll('.mk-message')];
        // textContent: the memory list sits in a collapsed accordion section (innerText would be empty)
        const m = (p.querySelector('.mk-memories') || {}).textContent || '';
        return {messages: msgs.length, last: msgs.length ? msgs[msgs.length - 1].innerText : '',
                diagnostics: (p.querySelector('.mk-diagnostics') || {}).textContent || '',
                memories: m, count: parseInt((m.match(/(\\d+) in the cube/) || [0, -1])[1])};
    }""")


def test_chat_notebook_runs_in_lab_and_enter_sends_from_the_panel(page):
    open_notebook(page, page.lab, "01_memory_chat.ipynb")
    run_all(page)
    wait_all_ran(page, RUN_TIMEOUT_MS, shot=SHOTS / "01-timeout.png")
    page.screenshot(path=str(SHOTS / "01-after-run-all.png"))
    assert bad_outputs(page) == [], f"error/stderr output areas in notebook 01: {bad_outputs(page)}"
    assert page.locator(f"{NOTEBOOK} .mk-results").count() == 1  # the results cell rendered its table

    panel = page.locator(f"{NOTEBOOK} .mk-chat-panel")
    panel.scroll_into_view_if_needed()
    before = _panel_state(page)
    box = panel.locator("input[type='text']")
    box.click()
    box.press_sequentially(MESSAGE, delay=5)
    box.press("Enter")
    # the turn is done when the user's message and an answer bubble were added and nothing is "writing…"
    page.wait_for_function(
        """([sel, n]) => { const p = document.querySelector(sel);
                           const msgs = p.querySelectorAll('.mk-message');
                           return msgs.length >= n + 2 && !p.innerText.includes('writing…')
                                  && !p.innerText.includes('thinking…'); }""",
        arg=[f"{NOTEBOOK} .mk-chat-panel", before["messages"]], timeout=TURN_TIMEOUT_MS, polling=500)
    panel.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "01-panel-after-enter.png"))
    after = _panel_state(page)
    assert "type a message first" not in page.locator(f"{NOTEBOOK} .mk-chat-panel").inner_text()
    texts = panel.locator(".mk-message").all_inner_texts()
    assert MESSAGE in texts[-2], f"Enter did not send the text in the box: {texts[-2:]}"
    assert texts[-1].startswith("assistant") and len(texts[-1].split("\n", 1)[-1].strip()) > 0
    assert box.input_value() == ""
    # the newest message is inside the conversation's visible area (scrolled to the bottom)
    inside = page.eval_on_selector(f"{NOTEBOOK} .mk-chat-panel .mk-conversation", """c => {
        const box = c.getBoundingClientRect(); const msgs = c.querySelectorAll('.mk-message');
        const last = msgs[msgs.length - 1].getBoundingClientRect();
        return {box: [box.top, box.bottom], last: [last.top, last.bottom],
                scrollable: c.scrollHeight > c.clientHeight}; }""")
    assert inside["box"][0] - 1 <= inside["last"][0] and inside["last"][1] <= inside["box"][1] + 1, inside
    # diagnostics and memory list refreshed
    assert MESSAGE in after["diagnostics"] and MESSAGE not in before["diagnostics"]
    assert after["count"] > before["count"] >= 0, (before["memories"][:300], after["memories"][:300])
    assert bad_outputs(page) == []


def test_inspector_notebook_map_renders_and_hover_shows_a_memory(page):
    write_settings(Path(page.lab.root) / ".lab" / "settings", "dark")  # the second notebook in the dark theme
    open_notebook(page, page.lab, "02_memory_inspector.ipynb")
    assert page.eval_on_selector("body", "b => b.dataset.jpThemeLight") == "false"
    run_all(page)
    wait_all_ran(page, RUN_TIMEOUT_MS, shot=SHOTS / "02-timeout.png")
    page.screenshot(path=str(SHOTS / "02-after-run-all-dark.png"))
    assert bad_outputs(page) == [], f"error/stderr output areas in notebook 02: {bad_outputs(page)}"
    plot = page.locator(f"{NOTEBOOK} .js-plotly-plot").first
    plot.scroll_into_view_if_needed()
    points = plot.locator(".scatterlayer .trace .points path.point")
    assert points.count() >= 30  # 35 demo memories plus the query star
    from magistral_kit.notebook.demo import DEMO_SESSIONS

    texts = [t for ts in DEMO_SESSIONS.values() for t in ts]
    compact = lambda s: re.sub(r"\s+", "", s)  # noqa: E731 - hover text is wrapped over lines
    box = points.first.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    hover = plot.locator(".hoverlayer .hovertext")
    hover.wait_for(timeout=10_000)
    shown = compact(hover.first.text_content())
    page.screenshot(path=str(SHOTS / "02-map-hover-dark.png"))
    assert any(compact(t)[:40] in shown for t in texts), f"hover shows no memory text: {shown[:200]}"
    fill = hover.first.locator("path").first.evaluate("p => getComputedStyle(p).fill")
    assert fill in ("rgb(255, 255, 255)", "white"), f"hover box is {fill}, not the readable white"
