"""Explain a dataset: a labelled folder, a .zip of class folders or a packaged set; every image's prediction beside
its true class, the mistakes, a confusion matrix and the chosen methods' maps for each, stored and shareable."""

from __future__ import annotations

import hashlib
import json

import streamlit as st

import accel
from accel.jobs.labelled import EXPLAIN, MAX_METHODS, explain_labelled, to_result
from dashboard import jobs
from dashboard.datasetview import METHOD, dataset_view
from dashboard.pagekit import largest_dataset, methods_on, unavailable
from dashboard.session_store import public_text
from dashboard.sidebar import require_ctx
from dashboard.ui import escape_md, link_line, unset
from dashboard.widgets import dataset_choice, dataset_from_link, dataset_to_link

SLOT = "ds"
MAX_IMAGES = 500

st.title("Explain a dataset")
st.caption(
    "Predictions against the true classes (from the dataset, or the names of a folder's class subfolders), the "
    "mistakes first, a confusion matrix, and the chosen methods' maps for every image. Runs in the background "
    "with progress and Stop; stored and shareable like every run."
)
c = require_ctx(need_image=False)
if not c.net.has_head:
    st.warning(f"{c.model} has no classifier head: pick a classifier in the sidebar to compare predictions.")
    st.stop()
specs = methods_on("compare")
blocked = unavailable(c, specs, "ds")
names = [s.name for s in specs if s.name not in blocked]
if not names:
    st.stop()
q = st.query_params
if not st.session_state.get("_ds_link_applied"):  # ?dataset=...&limit=...&methods=...&explain=... once
    st.session_state["_ds_link_applied"] = True
    dataset_from_link(q, c.net, "ds", MAX_IMAGES)
    linked = [m for m in (q.get("methods") or "").split(",") if m in names][:MAX_METHODS]
    if linked:
        st.session_state["ds_methods"] = linked
    if q.get("explain") in EXPLAIN:
        st.session_state["ds_explain"] = q["explain"]
with st.form("ds_form"):
    left, right = st.columns(2)
    source = dataset_choice(left, c.net, "Dataset", "ds_source", default=largest_dataset(c.net))
    limit = int(
        left.number_input("Images (first N)", 1, MAX_IMAGES, key="ds_limit", **unset("ds_limit", value=40))
    )
    wanted = [n for n in ("gradcam", "saliency") if n in names] or names[:1]
    methods = right.multiselect(
        "Methods", names, max_selections=MAX_METHODS, key="ds_methods", **unset("ds_methods", default=wanted)
    )
    explain = right.radio(
        "Maps explain",
        EXPLAIN,
        horizontal=True,
        key="ds_explain",
        help="the predicted class, or the true one",
    )
    go = st.form_submit_button("Explain the dataset", type="primary")
# the form's state in the URL (an uploaded folder stays out of it: it is this session's own)
dataset_to_link(q, c.net, source, limit)
q["methods"], q["explain"] = ",".join(methods), explain

if go:
    params = {"dataset": source, "limit": limit, "methods": list(methods), "explain": explain}
    key = hashlib.sha256(
        json.dumps([c.net.weights_hash(), METHOD, params], sort_keys=True).encode()
    ).hexdigest()
    hit = c.store.lookup(key)
    if hit is not None:  # the same request ran before: answer from the store
        st.session_state.setdefault("_slot_runs", {})[SLOT] = hit
        jobs.jobs().pop(SLOT, None)
    elif not methods:
        st.warning("choose at least one method")
    else:
        store, model, borrow, backend = c.store, c.model, c.borrow_net, c.backend

        def work(j: jobs.Job) -> tuple[str | None, accel.Result | None]:
            with borrow() as net:
                ds = accel.datasets.get(source, limit)
                r = explain_labelled(net, ds, methods, explain=explain, backend=backend, observer=j.observer)
                res = to_result(r, net)
            rid = store.put(
                res,
                model=model,
                method=METHOD,
                params=params,
                image_key=None,
                key=None if r.stopped else key,
                title=f"dataset · {model} · {len(r.ids)} images" + (" (stopped)" if r.stopped else ""),
            )
            return rid, res

        jobs.start_job(SLOT, jobs.Job(METHOD, work, user=jobs.current_user(), heavy=True, stoppable=True))

job = jobs.jobs().get(SLOT)
if job is not None and job.running:
    jobs.panel(SLOT)
else:
    if job is not None and job.state == "error":
        st.error(escape_md(public_text(f"dataset: {job.error}"), strict=True))
    rid, res = jobs.result_of(SLOT)
    if res is not None:
        dataset_view(res, "dsv")
        if rid:
            link_line(rid)
