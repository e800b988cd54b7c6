"""Runs: every stored result; filter, reopen (no recomputation), share by link, export as HTML or zip, delete."""

from __future__ import annotations

import time

import streamlit as st

from dashboard.common import get_store, guard, share_link
from dashboard.runview import render_run

st.title("Runs")
store = get_store()
st.caption(
    f"Run store: `{store.root}` · {store.count()} run(s). Every result has a link that reopens it exactly."
)
facets = store.facets()
f1, f2, f3 = st.columns([2, 2, 1])
method = f1.selectbox("Method", ["(all)", *facets["method"]], key="runs_method")
model = f2.selectbox("Model", ["(all)", *facets["model"]], key="runs_model")
limit = int(f3.number_input("Show", 10, 5000, 200, step=50, key="runs_limit"))
runs = store.list(
    method=None if method == "(all)" else method, model=None if model == "(all)" else model, limit=limit
)
if not runs:
    st.info("No stored runs yet: results from every page are saved here automatically.")
    st.stop()

rows = [
    {
        "id": r.id,
        "when": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created)),
        "method": r.method,
        "model": r.model,
        "kind": r.kind,
        "wall s": round(float(r.summary["wall_s"]), 3)
        if isinstance(r.summary.get("wall_s"), (int, float))
        else None,
        "backend": r.summary.get("backend"),
        "title": r.title,
        "link": share_link(r.id),
    }
    for r in runs
]
event = st.dataframe(
    rows,
    hide_index=True,
    width="stretch",
    height=320,
    on_select="rerun",
    selection_mode="multi-row",
    key="runs_table",
    column_config={"link": st.column_config.LinkColumn("link", display_text="open")},
)
picked = [rows[i]["id"] for i in event.selection.rows] if event and event.selection else []
st.caption(f"{len(picked)} selected" if picked else "Select rows to open, export or delete them.")
if picked:
    b1, b2, b3 = st.columns(3)
    with guard("Export"):
        b1.download_button(
            f"Export {len(picked)} as HTML",
            store.export_html(picked),
            file_name="convlens-runs.html",
            mime="text/html",
            on_click="ignore",
            key="runs_html",
        )
        b2.download_button(
            f"Export {len(picked)} as zip",
            store.export_zip(picked),
            file_name="convlens-runs.zip",
            mime="application/zip",
            on_click="ignore",
            key="runs_zip",
        )
    if b3.button(f"Delete {len(picked)}", key="runs_delete"):
        for rid in picked:
            store.delete(rid)
        st.rerun()
    st.divider()
    with guard("Run"):
        render_run(picked[0], key="runs_view")
else:
    recent = [r for r in runs[:12] if r.rendered_path is not None]
    if recent:
        st.subheader("Recent")
        cols = st.columns(6)
        for i, r in enumerate(recent):
            with cols[i % 6]:
                st.image(str(r.rendered_path), width="stretch")
                st.caption(f"[{r.method}]({share_link(r.id)}) · {r.model}")
