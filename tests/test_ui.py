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
    from types import SimpleNamespace

    said = [SimpleNamespace(user=f"message {n}", answer=f"answer {n}", reply=True, retrieved=[]) for n in range(3)]
    html = ui.conversation_html(said)
    assert "flex-direction:column-reverse" in html and "overflow-y:auto" in html
    assert html.index("message 0") < html.index("answer 0") < html.index("message 2") < html.index("answer 2")
    if not chat.turns:
        chat.send("I keep bees on my roof.")
    assert "jp-RenderedHTMLCommon" in ui.diagnostics_html(chat.turns)
    assert "jp-RenderedHTMLCommon" in ui.memory_list_html(chat.memory)
    timings = chat.turns[-1].timings.to_html()
    assert timings.count("<th style") == timings.count("<td style") == len(chat.turns[-1].timings.steps) + 1  # name over value


def test_enter_sends_the_text_that_reaches_the_kernel_after_the_enter_event(chat):
    """Enter = the frontend's 'submit' message, which can overtake the last keystrokes (ipywidgets holds
    state updates back while earlier ones are unanswered). In a kernel (a running event loop) the panel
    waits SUBMIT_SETTLE_S for them, so the message sent is the text in the box, not a prefix of it."""
    import asyncio

    panel = ui.chat_panel(chat)
    panel.widget()
    box = panel._w["input"]
    assert box.continuous_update is True
    turns = len(chat.turns)

    async def type_enter_then_last_keystrokes():
        box.value = "My neighbour's dog is called Pix"
        box._handle_string_msg(None, {"event": "submit"}, None)  # what pressing Enter sends
        box._handle_string_msg(None, {"event": "submit"}, None)  # a second Enter: still one send
        box.value = "My neighbour's dog is called Pixel."  # the held-back keystrokes arrive
        assert len(chat.turns) == turns  # nothing sent yet
        await asyncio.sleep(ui.SUBMIT_SETTLE_S + 0.1)

    asyncio.run(type_enter_then_last_keystrokes())
    assert len(chat.turns) == turns + 1 and chat.turns[-1].user == "My neighbour's dog is called Pixel."
    assert box.value == "" and "Pixel." in panel._w["conversation"].value


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
