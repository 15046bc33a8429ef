"""`Table`: a pandas DataFrame that displays readably in JupyterLab, unchanged as data.

Why: pandas' default HTML right-aligns text and cuts it at 50 characters with "…", prints ISO timestamps
with milliseconds and a time zone (wrapping over two lines) and shows full UUIDs and unrounded floats.
A researcher reading a cube wants whole sentences left-aligned, one-line times, short ids and scores to
three decimals. Only the display changes: the frame keeps every full value, so ``table["id"]``,
``len(table)`` and any pandas operation work as on a plain DataFrame.

    t = Table(memory.items())
    t                      # readable HTML in the notebook
    t["id"].iat[0]         # still the full id
"""
from __future__ import annotations

from typing import Any

import pandas as pd

ID_CHARS = 8  # enough to tell the memories of one cube apart; the full id stays in the data
FLOAT_DIGITS = 3
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # UTC, as the cube stores it
_ID_COLUMNS = ("id",)
_TIME_COLUMNS = ("created", "updated", "time", "timestamp")
PROSE_COLUMNS = ("text", "user", "answer", "memory", "question")  # wrapped; every other text column is not


class Table(pd.DataFrame):
    """A DataFrame whose notebook display is readable (see module docstring); slices stay `Table`s."""

    @property
    def _constructor(self) -> type:
        return Table

    def to_readable_html(self) -> str:
        """The HTML the notebook shows: text left-aligned and whole, short ids, one-line times, rounded
        floats."""
        return readable_html(self)

    def _repr_html_(self) -> str:  # type: ignore[override]
        return self.to_readable_html()


def readable_html(df: pd.DataFrame) -> str:
    """`df` as an HTML table for reading (see module docstring); pandas' own escaping applies."""
    shown = df.copy()
    for col in shown.columns:
        name = str(col)
        if name in _ID_COLUMNS:
            shown[col] = [_short_id(v) for v in shown[col]]
        elif name in _TIME_COLUMNS:
            shown[col] = [readable_time(v) for v in shown[col]]
    numeric = [c for c in shown.columns if pd.api.types.is_numeric_dtype(shown[c])
               and not pd.api.types.is_bool_dtype(shown[c])]
    styler = shown.style.format(precision=FLOAT_DIGITS, escape="html", na_rep="")
    text_cols = [c for c in shown.columns if c not in numeric]
    if text_cols:  # short labels (kind, source, session, times, ids) on one line; sentences wrap
        styler = styler.set_properties(subset=text_cols, **{"text-align": "left", "white-space": "nowrap"})
    prose = [c for c in text_cols if str(c) in PROSE_COLUMNS]
    if prose:
        styler = styler.set_properties(subset=prose, **{"white-space": "pre-wrap", "min-width": "16em"})
    if numeric:
        styler = styler.set_properties(subset=numeric, **{"text-align": "right"})
    # each header aligned like its values (JupyterLab right-aligns every cell by default)
    styler = styler.set_table_styles(
        [{"selector": f"th.col_heading.col{n}", "props": f"text-align: {'right' if c in numeric else 'left'};"}
         for n, c in enumerate(shown.columns)] + [{"selector": "th.index_name", "props": "text-align: left;"}])
    if isinstance(df.index, pd.RangeIndex):
        styler = styler.hide(axis="index")
    if df.empty:
        return styler.to_html() + "<div style='text-align:left'><i>(no rows)</i></div>"
    return styler.to_html()


def _short_id(value: Any) -> str:
    text = str(value)
    return text[:ID_CHARS] + "…" if len(text) > ID_CHARS + 1 and "-" in text else text


def readable_time(value: Any) -> str:
    """An ISO time as ``YYYY-MM-DD HH:MM:SS`` (UTC, as stored), without microseconds and offset."""
    if value is None or value == "" or (isinstance(value, float) and pd.isna(value)):
        return ""
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        return str(value)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp.strftime(TIME_FORMAT)
