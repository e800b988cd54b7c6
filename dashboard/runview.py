"""Reopening a stored run exactly as it was computed (no recomputation): the `?run=<id>` view and the Runs page.

Every string a user supplied (titles, upload names, model labels, parameters) is shown as literal text; exports are
built only when their button is pressed (deferred downloads), for runs the viewer may open."""

from __future__ import annotations

import functools
import html
import io
import json
import time
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import streamlit as st
from PIL import Image

import accel

from .conceptview import concept_view, is_concept_run, labels_for
from .datasetview import dataset_view, is_dataset_run
from .display import loss_figure, meta_line, show_result
from .evalview import eval_view, is_eval_run
from .jobs import loss_curve_of
from .session_store import SessionStore, get_store, public_text
from .state import load_run
from .ui import escape_md, guard, share_link


def _export_bytes(store: SessionStore, run_ids: tuple[str, ...], kind: str) -> bytes:
    """The export of `run_ids` for the store's user, built when the download is clicked; a failure (a run deleted
    or made private meanwhile) becomes a small file saying so instead of an error."""
    try:
        return store.export_html(run_ids) if kind == "html" else store.export_zip(run_ids)
    except accel.BadInput as e:
        msg = f"convlens could not export these runs: {e}"
        if kind == "html":
            return f"<!doctype html><meta charset='utf-8'><p>{html.escape(msg)}</p>".encode()
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("ERROR.txt", msg + "\n")
        return buf.getvalue()


def export_buttons(store: SessionStore, run_ids: Sequence[str], *, key: str, prefix: str = "Export") -> None:
    """HTML and zip download buttons whose files are built only when clicked (never on a rerun)."""
    ids = tuple(run_ids)
    name = f"convlens-{ids[0]}" if len(ids) == 1 else "convlens-runs"
    formats = (("HTML", "html", "text/html"), ("zip", "zip", "application/zip"))
    for col, (label, fmt, mime) in zip(st.columns(len(formats)), formats):
        col.download_button(
            f"{prefix} {label}",
            functools.partial(_export_bytes, store, ids, fmt),
            file_name=f"{name}.{fmt}",
            mime=mime,
            key=f"{key}_{fmt}",
            on_click="ignore",
        )


def _set_private(run_id: str, private: bool) -> None:
    """Button callback: change who may open one of the user's runs (the store checks ownership)."""
    try:
        get_store().set_private(run_id, private)
        st.session_state["_run_notice"] = (
            "The run is private now: only you can open it."
            if private
            else "The run opens for anyone with its link."
        )
    except accel.BadInput as e:
        st.session_state["_run_notice"] = f"Could not change who may open the run: {e}"


def owner_label(store: SessionStore, owner: str) -> str:
    """'you' for the viewer's own runs, else the owner's name."""
    return "you" if owner == store.user else owner


def public_params(value: Any) -> Any:
    """A run's parameters fit to show whoever opens its link: every string through `public_text`, so an upload
    folder, a session's scratch file or any other server path is never shown (the store keeps the real value)."""
    if isinstance(value, str):
        return public_text(value)
    if isinstance(value, dict):
        return {k: public_params(v) for k, v in value.items()}
    if isinstance(value, list):
        return [public_params(v) for v in value]
    return value


def render_run(run_id: str, *, key: str = "run") -> None:
    """Title, provenance, the result as stored, its parameters, privacy controls (owner only) and exports."""
    store = get_store()
    run, res = load_run(run_id)
    notice = st.session_state.pop("_run_notice", None)
    if notice:
        st.info(escape_md(notice))
    st.subheader(escape_md(run.title or f"{run.method} on {run.model}"))
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.created))
    saved = store.is_saved(run.id)
    access = "private" if run.private else "anyone with the link can open it"
    link = f"[shareable link]({share_link(run.id)})" if saved else "not saved (the run store is unavailable)"
    st.caption(
        f"run `{run.id}` · {escape_md(run.method)} · {escape_md(run.model)} · {when} · "
        f"by {escape_md(owner_label(store, run.owner))} · {access} · {link}"
    )
    if run.damaged:
        st.warning(f"This run's index row is damaged ({escape_md(run.damaged)}); its stored files are shown.")
    if is_dataset_run(res, run.method):  # a dataset explanation: its own view (table, confusion, maps)
        dataset_view(res, f"{key}_ds")
        if saved:
            export_buttons(store, [run.id], key=key)
        return
    if is_eval_run(res, run.method):  # an evaluation: its tables and plots per metric family
        eval_view(res, f"{key}_ev")
        if saved:
            export_buttons(store, [run.id], key=key)
        return
    if is_concept_run(res, run.method):  # TCAV or a discovery: bars, table, concepts (dashboard.conceptview)
        concept_view(res, run.method, f"{key}_con", labels_for(run.model))
        if saved:
            export_buttons(store, [run.id], key=key)
        return
    cols = st.columns([3, 2])
    with cols[0]:
        if res.kind == "map" and res.image is not None:
            alpha = st.slider("overlay opacity", 0.0, 1.0, 0.5, 0.05, key=f"{key}_alpha")
            a, b = st.columns(2)
            a.image(res.image, caption="input", width="stretch")
            with b:
                show_result(res, alpha=alpha, key=f"{key}_res")
        else:
            show_result(res, key=f"{key}_res")
            extra = res.extras.get("image")
            if res.kind == "points" and isinstance(extra, Image.Image):
                st.image(extra, caption="image grid", width="stretch" if extra.width >= 700 else "content")
            if res.image is not None:
                st.image(res.image, caption="input", width=200)
        losses = loss_curve_of(res)
        if losses:
            st.plotly_chart(loss_figure(losses), key=f"{key}_loss")
    with cols[1]:
        st.markdown("**Parameters**")
        st.json(public_params(json.loads(json.dumps(run.params, default=str))), expanded=True)
        line = meta_line(res.meta)
        if line:
            st.markdown(f"**Measured**: {escape_md(public_text(line))}")
        scalars = {
            k: (v.item() if isinstance(v, np.generic) else v)
            for k, v in res.meta.items()
            if isinstance(v, (int, float, str, bool, np.generic)) and k not in ("method", "model")
        }
        if scalars:
            with st.expander("all metadata"):
                st.json(json.loads(json.dumps(scalars, default=str)))
        if saved and run.owner == store.user:
            label, suffix, why = (
                ("Share by link again", "share", "anyone who has the link can open it")
                if run.private
                else ("Make private", "private", "only you can open it; its link stops working for others")
            )
            st.button(
                label, key=f"{key}_{suffix}", on_click=_set_private, args=(run.id, not run.private), help=why
            )
        if saved:
            export_buttons(store, [run.id], key=key)


def show_shared_run(run_id: str) -> None:
    """The page a `?run=<id>` link opens: the stored run, read from the store only. Opening someone else's run by
    its link lists it on the viewer's Runs page (shared with them)."""
    st.title("Shared run")
    with guard("Run"):
        store = get_store()
        if not store.available and store.is_saved(str(run_id)):
            st.error(
                f"The run store is unavailable, so shared runs cannot be opened: {escape_md(store.problem)}"
            )
        else:
            render_run(str(run_id), key="shared")
            store.mark_seen(str(run_id))
    if st.button("Close and go back", key="close_shared"):
        del st.query_params["run"]
        st.rerun()
