"""The chat panel: its HTML pieces work without widgets; the widget builds headless and a send refreshes it."""
from __future__ import annotations

import builtins

import pytest

from magistral_kit.notebook import panel as ui
from magistral_kit.chat.session import open_chat
from magistral_kit.config import KitConfig


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    config = KitConfig(cube_dir=str(tmp_path_factory.mktemp("cubes") / "panel"), temperature=0.0,
                       max_new_tokens=16, extraction_max_new_tokens=16)
    c = open_chat(config, progress=False)
    yield c
    c.close()


def test_empty_panel_pieces_say_what_will_appear():
    assert "no messages yet" in ui.conversation_html([])
    assert "diagnostics of the latest turn" in ui.diagnostics_html([])
    assert "memory off" in ui.memory_list_html(None)


def test_an_empty_new_cube_is_not_memory_off(tmp_path):
    """A new cube has 0 memories (falsy length): the chat's summary still shows it as the cube in use."""
    config = KitConfig(cube_dir=str(tmp_path / "empty"), temperature=0.0, max_new_tokens=8)
    with open_chat(config, progress=False) as chat:
        summary = chat._repr_html_()
    assert "memory off" not in summary and str(tmp_path / "empty") in summary and "0 memories" in summary


def test_conversation_keeps_the_newest_message_in_view_and_tables_keep_lab_styling(chat):
    """The scroll box is a reversed flex column (the browser pins it to the bottom, no script needed);
    the diagnostics and the memory list carry JupyterLab's rendered-HTML class (its table styling)."""
    if not chat.turns:
        chat.send("I keep bees on my roof.")
    html = ui.conversation_html(chat.turns)
    assert "flex-direction:column-reverse" in html and "overflow-y:auto" in html
    assert html.index(chat.turns[-1].user) > html.index(chat.turns[0].user)  # oldest first inside the box
    assert "jp-RenderedHTMLCommon" in ui.diagnostics_html(chat.turns)
    assert "jp-RenderedHTMLCommon" in ui.memory_list_html(chat.memory)
    timings = chat.turns[-1].timings.to_html()
    assert timings.count("<th") == timings.count("<td") == len(chat.turns[-1].timings.steps) + 1  # name over value


def test_enter_in_the_text_box_sends_the_current_text(chat):
    """Enter = the frontend's 'submit' message. The box updates the kernel's value as it is typed
    (continuous_update), so by the time 'submit' arrives the value is the text in the box."""
    panel = ui.chat_panel(chat)
    panel.widget()
    box = panel._w["input"]
    assert box.continuous_update is True
    turns = len(chat.turns)
    box.value = "My neighbour's dog is called Pixel."
    box._handle_string_msg(None, {"event": "submit"}, None)  # what pressing Enter sends
    assert len(chat.turns) == turns + 1 and chat.turns[-1].user == "My neighbour's dog is called Pixel."
    assert box.value == "" and "Pixel" in panel._w["conversation"].value


def test_panel_builds_headless_and_sends_refresh_conversation_diagnostics_and_memories(chat):
    panel = ui.chat_panel(chat, memory_rows=3)
    root = panel.widget()
    w = panel._w
    assert root.children[0] is w["conversation"] and "no messages yet" in w["conversation"].value
    before = len(chat.memory)
    # programmatic send: the same call a headless run makes
    turn = panel.send("My bicycle is green and I ride it to work.")
    assert "My bicycle is green" in w["conversation"].value
    assert turn.id in w["diagnostics"].value and "retrieved" in w["diagnostics"].value
    assert len(chat.memory) > before and f"{len(chat.memory)} in the cube" in w["memories"].value
    # typing into the box and pressing Send
    w["input"].value = "What colour is my bicycle?"
    w["button"].click()
    assert panel.error is None and w["input"].value == "" and not w["button"].disabled
    assert len(chat.turns) == 2 and "What colour is my bicycle?" in w["conversation"].value
    assert chat.turns[-1].id in w["diagnostics"].value
    assert chat.turns[-1].answer and ui.conversation_html(chat.turns).count("assistant") == 2
    bundle = panel._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "ChatPanel(2 turns" in bundle["text/plain"]


def test_send_button_reports_errors_in_the_panel_and_keeps_the_text(chat):
    panel = ui.chat_panel(chat)
    panel.widget()
    turns = len(chat.turns)
    panel._w["input"].value = "   "
    panel._w["button"].click()
    assert "type a message first" in panel._w["status"].value and len(chat.turns) == turns
    too_long = "memory " * 12_000  # more tokens than the model's 8,192 window: send() raises
    panel._w["input"].value = too_long
    panel._w["button"].click()
    assert "⚠" in panel._w["status"].value and panel.error
    assert "PromptTooLongError" in panel.error and len(chat.turns) == turns
    assert panel._w["input"].value == too_long.strip() and not panel._w["button"].disabled


def test_panel_works_without_ipywidgets(chat, monkeypatch):
    real_import = builtins.__import__

    def no_widgets(name, *args, **kwargs):
        if name == "ipywidgets" or name.startswith("ipywidgets."):
            raise ImportError("No module named 'ipywidgets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_widgets)
    panel = ui.chat_panel(chat)
    with pytest.raises(ImportError):
        panel.widget()
    bundle = panel._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}
    assert "memories" in bundle["text/html"] and "diagnostics" not in bundle["text/plain"]
