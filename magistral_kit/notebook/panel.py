"""An optional ipywidgets chat panel: input box, send button, the conversation, the latest `Turn`'s
diagnostics, and the cube's newest memories, refreshed after each turn.

Why it is thin: widgets lose their state in headless runs (papermill, nbval, CI), so the panel owns no
behaviour of its own. `ChatPanel.send` is `Chat.send` plus re-rendering three HTML strings
(`conversation_html`, `Turn.to_html`, `memory_list_html`); every one of them is a plain function that works
without ipywidgets, and the headless notebooks call the same functions. Without ipywidgets installed the
panel still sends and renders as static HTML.

    panel = chat_panel(chat)
    panel                       # the widget in JupyterLab
    panel.send("Hi, I'm Lena")  # same as typing it and pressing Send
"""
from __future__ import annotations

import asyncio
import html
from typing import Any, Sequence

MEMORY_ROWS = 8
CONVERSATION_HEIGHT_PX = 420
SUBMIT_SETTLE_S = 0.4  # Enter/Send waits this long for the box's last keystrokes (see _request_submit)
# JupyterLab's own class for rendered HTML: tables inside the widget get the notebook's table styling and
# both themes' colours (a bare ipywidgets.HTML has neither).
_JP = "jp-RenderedHTMLCommon"
# Theme variables with light fallbacks, so bubbles read well in light and dark JupyterLab and in a static
# HTML export alike.
_USER_BG = "var(--jp-brand-color3, #e8f0fe)"
_BOT_BG = "var(--jp-layout-color2, #f1f3f4)"
_LIVE_BG = "var(--jp-warn-color3, #fff8e1)"
_MUTED = "var(--jp-ui-font-color2, #666)"


# --- plain HTML (no widgets) --------------------------------------------------------------------------
def conversation_html(turns: Sequence[Any], live: str | None = None,
                      height_px: int = CONVERSATION_HEIGHT_PX) -> str:
    """The conversation so far as chat bubbles (answers only; reasoning stays in the diagnostics).

    The scroll box is a reversed flex column, so the browser keeps it scrolled to the newest message
    (ipywidgets.HTML runs no script that could scroll it)."""
    parts = []
    for t in turns:
        parts.append(_bubble("you", t.user, _USER_BG, "right"))
        answer = t.answer or (t.reply.empty_reason() if t.reply else "")
        note = f" · {len(t.retrieved)} memories used" if t.retrieved else ""
        parts.append(_bubble(f"assistant{note}", answer, _BOT_BG, "left"))
    if live is not None:
        parts.append(_bubble("assistant (writing…)", live or "…", _LIVE_BG, "left"))
    if not parts:
        return f"<div class='mk-conversation' style='color:{_MUTED}'><i>no messages yet: type one below</i></div>"
    # line-height: ipywidgets.HTML sets a widget-row line height (28 px) that would double-space the text
    return (f"<div class='mk-conversation' style='display:flex;flex-direction:column-reverse;"
            f"max-height:{height_px}px;overflow-y:auto;padding-right:4px;line-height:1.45'><div>"
            + "".join(parts) + "</div></div>")


def _bubble(who: str, text: str, colour: str, side: str) -> str:
    return (f"<div class='mk-message' style='text-align:{side};margin:4px 0'><div style='display:inline-block;"
            f"max-width:80%;text-align:left;background:{colour};color:var(--jp-content-font-color1, #111);"
            f"border-radius:8px;padding:4px 8px'><div style='font-size:80%;color:{_MUTED}'>{html.escape(who)}"
            f"</div><div style='white-space:pre-wrap'>{html.escape(text)}</div></div></div>")


def memory_list_html(memory: Any, newest: int = MEMORY_ROWS) -> str:
    """The cube's newest memories (text, kind, provenance) and its total count."""
    if memory is None:
        return "<div><i>memory off</i></div>"
    from magistral_kit.notebook.inspector import memory_table

    table = memory_table(memory, newest=newest)
    rows = "".join(f"<tr><td style='text-align:left'>{html.escape(str(r.text))}</td>"
                   f"<td style='text-align:left'>{html.escape(str(r.kind))}</td>"
                   f"<td style='text-align:left'>{html.escape(str(r.source))}</td></tr>"
                   for r in table.itertuples())
    return (f"<div class='{_JP} mk-memories'><div><b>memories</b>: {len(memory)} in the cube (newest "
            f"{min(newest, len(memory))} shown)</div><table><thead><tr><th style='text-align:left'>memory</th>"
            f"<th style='text-align:left'>kind</th><th style='text-align:left'>from turn</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></div>")


def diagnostics_html(turns: Sequence[Any]) -> str:
    """The latest turn's diagnostics (retrieved memories, prompt, timings…), or a hint before the first."""
    if not turns:
        return f"<div style='color:{_MUTED}'><i>diagnostics of the latest turn appear here</i></div>"
    return f"<div class='{_JP} mk-diagnostics'>{turns[-1].to_html()}</div>"


# --- the panel ----------------------------------------------------------------------------------------
class ChatPanel:
    """A chat panel over an open `Chat`. The widget is built on first display; `send` works without it."""

    def __init__(self, chat: Any, memory_rows: int = MEMORY_ROWS, stream: bool = True) -> None:
        self.chat = chat
        self.memory_rows = memory_rows
        self.stream = stream
        self.error: str | None = None
        self._live: str | None = None
        self._w: dict[str, Any] | None = None
        self._pending: Any = None  # a scheduled send (asyncio.TimerHandle), see _request_submit

    # --- logic (headless) ---------------------------------------------------------------------------
    @property
    def turns(self) -> list[Any]:
        return self.chat.turns

    def send(self, text: str) -> Any:
        """Send one message through the chat and refresh the panel; returns the `Turn`."""
        self._live = "" if self.stream and self._w is not None else None
        on_text = self._on_text if self._live is not None else None
        try:
            turn = self.chat.send(text, on_text=on_text)
        finally:
            self._live = None
        self.error = None
        turn.on_change.append(lambda _turn: self.refresh())  # a background extraction finishing (pending → done)
        self.refresh()
        return turn

    def _on_text(self, piece: str) -> None:
        self._live = (self._live or "") + piece
        if self._w is not None:
            self._w["conversation"].value = conversation_html(self.turns, live=self._live)

    def to_html(self) -> str:
        """The whole panel as static HTML (what a headless run or a non-widget frontend shows)."""
        return (f"<div class='{_JP}' style='border:1px solid var(--jp-border-color1, #ccc);padding:6px'>"
                + conversation_html(self.turns)
                + "<hr>" + diagnostics_html(self.turns) + "<hr>"
                + memory_list_html(self.chat.memory, self.memory_rows) + "</div>")

    # --- widgets ------------------------------------------------------------------------------------
    def widget(self) -> Any:
        """The ipywidgets panel (built once). Raises ImportError when ipywidgets is not installed."""
        if self._w is None:
            self._w = self._build()
        return self._w["root"]

    def _build(self) -> dict[str, Any]:
        import ipywidgets as W

        w: dict[str, Any] = {
            "conversation": W.HTML(conversation_html(self.turns)),
            # continuous_update: the box's text reaches the kernel as it is typed (with continuous_update=False
            # it is sent only after the Enter event, which then finds the previous text); see _request_submit
            "input": W.Text(placeholder="Type a message and press Enter or Send", continuous_update=True,
                            layout=W.Layout(flex="1 1 auto", width="auto")),
            "button": W.Button(description="Send", button_style="primary", icon="paper-plane"),
            "status": W.HTML(""),
            "diagnostics": W.HTML(diagnostics_html(self.turns)),
            "memories": W.HTML(memory_list_html(self.chat.memory, self.memory_rows)),
        }
        w["button"].on_click(lambda _b: self._request_submit())
        if hasattr(w["input"], "on_submit"):  # Enter in the box (deprecated in ipywidgets 8, still there)
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                w["input"].on_submit(lambda _t: self._request_submit())
        details = W.Accordion(children=[w["diagnostics"], w["memories"]],
                              titles=("latest turn: diagnostics", "memories"))
        details.selected_index = 0
        w["root"] = W.VBox([w["conversation"], W.HBox([w["input"], w["button"]]), w["status"], details],
                           layout=W.Layout(max_width="960px"))
        w["root"].add_class("mk-chat-panel")
        return w

    def _request_submit(self) -> None:
        """Enter or Send: send the box's text once the text has reached the kernel.

        Why the wait: the frontend holds back widget state while earlier updates are unanswered (ipywidgets'
        message throttling) but sends the Enter/click event at once, so the event can arrive before the
        last keystrokes. In a kernel the send is scheduled `SUBMIT_SETTLE_S` later on its event loop, which
        meanwhile applies the held-back text; without a running loop (tests, scripts) it sends at once."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._submit()
            return
        if self._pending is None:
            self._pending = loop.call_later(SUBMIT_SETTLE_S, self._run_pending)

    def _run_pending(self) -> None:
        self._pending = None
        self._submit()

    def _submit(self) -> None:
        """The Send button: take the input box's text, send it, report errors in the panel (not lost in a
        callback's void)."""
        w = self._w
        text = (w["input"].value or "").strip()
        if not text:
            w["status"].value = f"<span style='color:{_MUTED}'>type a message first</span>"
            return
        w["input"].value = ""
        w["button"].disabled = w["input"].disabled = True
        w["status"].value = (f"<span style='color:{_MUTED}'>thinking… (retrieve → generate → extract → store)"
                             "</span>")
        try:
            self.send(text)
            w["status"].value = ""
        except Exception as exc:  # noqa: BLE001 - show it in the panel, the callback has nowhere else
            self.error = f"{type(exc).__name__}: {exc}"
            w["status"].value = (f"<span style='color:var(--jp-error-color1, #b00)'>⚠ "
                                 f"{html.escape(self.error)}</span>")
            w["input"].value = text
        finally:
            w["button"].disabled = w["input"].disabled = False

    def refresh(self) -> None:
        """Re-render conversation, diagnostics and memory list from the chat (no-op without the widget)."""
        if self._w is None:
            return
        self._w["conversation"].value = conversation_html(self.turns)
        self._w["diagnostics"].value = diagnostics_html(self.turns)
        self._w["memories"].value = memory_list_html(self.chat.memory, self.memory_rows)

    # --- display ------------------------------------------------------------------------------------
    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict:
        bundle = {"text/plain": repr(self), "text/html": self.to_html()}
        try:
            widget = self.widget()
        except ImportError:
            return bundle
        data = widget._repr_mimebundle_() or {}
        return {**bundle, **data, "text/plain": repr(self)}

    def __repr__(self) -> str:
        n = len(self.chat.memory) if getattr(self.chat, "memory", None) is not None else 0
        return f"ChatPanel({len(self.turns)} turns, {n} memories)"


def chat_panel(chat: Any, memory_rows: int = MEMORY_ROWS, stream: bool = True) -> ChatPanel:
    """A chat panel over `chat` (display it in JupyterLab; `panel.send(text)` works headless too)."""
    return ChatPanel(chat, memory_rows=memory_rows, stream=stream)
