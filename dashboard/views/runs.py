"""Runs: your stored results and the ones shared with you; filter, reopen (no recomputation), share by link, export
as HTML or zip, make private, delete.

"Shared with you" means: runs of other people that you opened by their link (a run's link is a capability: anyone
holding it may open the run unless its owner made it private). Every action works on run ids captured when the
table was drawn, never on row positions, and the store checks that the acting user owns what they change."""

from __future__ import annotations

import hashlib
import time

import streamlit as st

import accel
from dashboard.display import readable_table
from dashboard.runview import export_buttons, owner_label, render_run
from dashboard.session_store import get_store
from dashboard.state import damaged_runs
from dashboard.ui import escape_md, guard, share_link


def _delete(run_ids: tuple[str, ...]) -> None:
    """Delete button callback: exactly the runs that were ticked when the button was drawn."""
    store = get_store()
    done, msgs = 0, []
    for rid in run_ids:
        try:
            done += bool(store.delete(rid))
        except accel.BadInput as e:
            msgs.append(str(e))
    st.session_state.pop("_runs_last", None)  # the list changes because of this user's own action
    gone = len(run_ids) - done - len(msgs)
    text = f"Deleted {done} run(s)."
    if gone:
        text += f" {gone} had already been deleted."
    st.session_state["_runs_notice"] = " ".join([text, *msgs])


def _set_private(run_ids: tuple[str, ...], private: bool) -> None:
    """Privacy button callback for the ticked runs (only the viewer's own are offered)."""
    store = get_store()
    msgs = []
    for rid in run_ids:
        try:
            store.set_private(rid, private)
        except accel.BadInput as e:
            msgs.append(str(e))
    what = "private (only you can open them)" if private else "shared by link"
    st.session_state["_runs_notice"] = " ".join([f"{len(run_ids) - len(msgs)} run(s) are now {what}.", *msgs])


st.title("Runs")
store = get_store()
if not store.available:
    st.error(f"The run store is unavailable, so no runs can be listed: {escape_md(store.problem)}")
    st.info(
        "Every page still computes results; they are kept in this browser session only (not saved, no links). "
        "An administrator can run `convlens store check` and `convlens store rebuild` on the server."
    )
    kept = store.memory.list()
    if kept:
        st.subheader("This session's results (not saved)")
        st.dataframe(
            [{"title": r.title, "method": r.method, "model": r.model, "kind": r.kind} for r in kept],
            hide_index=True,
            width="stretch",
        )
    st.stop()

notice = st.session_state.pop("_runs_notice", None)
if notice:
    st.info(escape_md(notice))
if store.notice:
    st.info(escape_md(store.notice))

runs: list = []
method = model = None
limit = 0
with guard("Runs"):
    n_runs = store.count()
    st.caption(
        f"{n_runs} run(s): yours and the ones shared with you (runs of others you opened by their link). "
        "Every result has a link that reopens it exactly; it opens for anyone who has it unless you make it private."
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

bad_files = damaged_runs()
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
        "backend": str(r.summary.get("backend")) if r.summary.get("backend") is not None else None,
        "title": r.title,
        "owner": owner_label(store, r.owner),
        "private": r.private,
        "status": "; ".join(
            x
            for x in (
                f"damaged row: {r.damaged}" if r.damaged else "",
                "damaged files" if r.id in bad_files else "",
                "files missing" if not (r.folder / "manifest.json").is_file() else "",
            )
            if x
        )
        or "ok",
        "link": share_link(r.id),
    }
    for r in runs
]
ids = [r.id for r in runs]
# The table's key follows the exact list it shows, so a selection (row positions) is only ever read against the
# list it was made on: when a run lands or goes away, the table is new and the old ticks are dropped.
digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
last = st.session_state.get("_runs_last")
event = st.dataframe(
    readable_table(rows),
    hide_index=True,
    width="stretch",
    height=320,
    on_select="rerun",
    selection_mode="multi-row",
    key=f"runs_table_{digest}",
    column_config={
        "link": st.column_config.LinkColumn("link", display_text="open"),
        "private": st.column_config.CheckboxColumn("private", help="only its owner can open it"),
    },
)
positions = list(event.selection.rows) if event and event.selection else []
picked = [ids[i] for i in positions if isinstance(i, int) and 0 <= i < len(ids)]
filters = (method, model, limit)
if last and last[0] != digest and last[1] and last[2] == filters:
    st.info(
        "The list changed since you ticked runs (a run was added or removed), so the selection was cleared."
    )
st.session_state["_runs_last"] = (digest, tuple(picked), filters)
st.caption(
    f"{len(picked)} selected" if picked else "Select rows to open, export, make private or delete them."
)

if picked:
    by_id = {r.id: r for r in runs}
    mine = tuple(i for i in picked if by_id[i].owner == store.user)
    export_buttons(store, picked, key="runs", prefix=f"Export {len(picked)} as")
    b1, b2, b3 = st.columns(3)
    b1.button(
        f"Delete {len(mine)}" if mine else "Delete",
        key="runs_delete",
        on_click=_delete,
        args=(mine,),
        disabled=not mine,
        help="only your own runs can be deleted" if len(mine) < len(picked) else None,
    )
    n = f" {len(mine)}" if mine else ""
    b2.button(
        f"Make{n} private", key="runs_private", on_click=_set_private, args=(mine, True), disabled=not mine
    )
    b3.button(
        f"Share{n} by link", key="runs_public", on_click=_set_private, args=(mine, False), disabled=not mine
    )
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
                try:
                    picture = r.rendered()
                    if picture is not None:
                        st.image(picture, width="stretch")
                except accel.BadInput:
                    st.caption("damaged picture")
                st.caption(f"[{escape_md(r.method)}]({share_link(r.id)}) · {escape_md(r.model)}")
