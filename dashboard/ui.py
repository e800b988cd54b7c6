"""Small pieces every page uses: user text made literal for Markdown (`escape_md`) and for Plotly labels
(`html_text`), the error guard, progress bars, shareable run links, and widget defaults that defer to deep links."""

from __future__ import annotations

import contextlib
import html
import logging
import re
import time
import traceback
from collections.abc import Iterator
from typing import Any

import streamlit as st

import accel

from .session_store import get_store, public_text

log = logging.getLogger("convlens.dashboard")

# ---------------------------------------------------------------------------------------------------- text

_MD_SPECIAL = re.compile(r"([\\`\[\]<>$])")
_MD_PUNCT = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation mark


def escape_md(text: Any, *, strict: bool = False) -> str:
    """User text (file names, titles, labels, parameters, messages that quote them) made safe for Streamlit's
    Markdown: no link, image, HTML, math, colour directive or autolink survives, so it shows as literal text.
    Whitespace is collapsed to single spaces (no headings, lists or tables from line breaks). Ordinary names stay
    readable in the escaped string; `strict` escapes every ASCII punctuation mark instead (emphasis and emoji
    shortcodes too), for text that comes from data: dataset labels, names inside uploads, progress messages. Pass
    server messages through `public_text` first, so they name no server path."""
    s = " ".join(str(text).split())
    if strict:
        return _MD_PUNCT.sub(r"\\\1", s)
    s = _MD_SPECIAL.sub(r"\\\1", s)
    s = re.sub(r":(?=//)", r"\\:", s)  # http://... autolinks
    s = re.sub(r"(?i)\b(www)\.", r"\1\\.", s)  # www.... autolinks
    s = s.replace("@", "\\@")  # e-mail autolinks
    return re.sub(r"^([#>+=|~*_-]|\d+[.)])", r"\\\1", s)  # block syntax at the start


def html_text(text: object) -> str:
    """`text` for Plotly labels and hover text (they understand a little HTML): escaped, so it shows literally."""
    return html.escape(str(text), quote=True)


# ---------------------------------------------------------------------------------------------------- errors


@contextlib.contextmanager
def guard(what: str = "", where: Any = None, record: list[str] | None = None) -> Iterator[None]:
    """Show any error raised inside as a message (BadInput as is, anything else as an internal error), never a
    traceback; the rest of the page keeps running. Messages are shown as literal text (they may quote a user's
    file name) without server paths. `record` also collects the messages."""
    box = where or st
    try:
        yield
    except accel.BadInput as e:
        msg = public_text(f"{what}: {e}" if what else str(e))
        box.error(escape_md(msg))
        if record is not None:
            record.append(msg)
    except Exception as e:  # noqa: BLE001 - the app must keep working whatever a method does
        log.error("dashboard error in %s:\n%s", what or "page", traceback.format_exc())
        msg = public_text(f"{what + ': ' if what else ''}internal error ({type(e).__name__}: {str(e)[:300]})")
        box.error(escape_md(msg))
        if record is not None:
            record.append(msg)


# ---------------------------------------------------------------------------------------------------- progress


class Progress:
    """An st.progress bar driven as a `progress(frac, msg)` callback (throttled to ~10 updates a second); `done()`
    removes it. Messages are shown as literal text."""

    def __init__(self, text: str = "") -> None:
        self.text = text
        self.bar = st.progress(0.0, text=escape_md(text, strict=True))
        self._last = 0.0

    def __call__(self, frac: float, msg: str = "") -> None:
        now = time.perf_counter()
        if now - self._last < 0.1 and frac < 1.0:
            return
        self._last = now
        text = escape_md(public_text(f"{self.text} {msg}".strip()), strict=True)
        self.bar.progress(min(1.0, max(0.0, float(frac))), text=text)

    def done(self) -> None:
        """Remove the bar."""
        self.bar.empty()


def st_progress(text: str = "") -> Progress:
    """A progress bar with `text` as its label, called as `bar(frac, msg)`."""
    return Progress(text)


# ---------------------------------------------------------------------------------------------------- links


def share_link(run_id: str) -> str:
    """An absolute link that reopens this run for anyone on the same server (falls back to `?run=<id>`)."""
    base = ""
    with contextlib.suppress(Exception):
        url = st.context.url
        if url:
            base = url.split("?")[0]
    return f"{base}?run={run_id}"


def link_line(run_id: str, cached: bool = False) -> None:
    """A caption with the shareable link of a run (or why it has none: the store was unavailable)."""
    why = get_store().memory.not_saved(run_id)
    if why is not None:
        st.caption(f"not saved or shared: {escape_md(why)}")
        return
    tag = " (answered from the store)" if cached else ""
    st.caption(f"run [`{run_id}`]({share_link(run_id)}){tag}")


def unset(key: str, **default: Any) -> dict[str, Any]:
    """A widget's default argument, only while its key is not already set (by a deep link) in session state:
    Streamlit warns when both are given."""
    return {} if key in st.session_state else default
