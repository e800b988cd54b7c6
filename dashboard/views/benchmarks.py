"""Benchmarks: `convlens bench` reports from the run store, torch vs ONNX Runtime per workload and provider.

The quick bench is heavy work: it runs as a background job in the fair-use line (one per user, CONVLENS_HEAVY_SERVER
on the server), and when sign-in is required only administrators (CONVLENS_ADMINS) may start it."""

from __future__ import annotations

import time
from typing import Any

import plotly.graph_objects as go
import streamlit as st

from accel.runtime.pool import pool_info
from accel.runtime.session import sessions_started
from dashboard import jobs
from dashboard.auth import current_user, may_run_bench
from dashboard.display import readable_table
from dashboard.session_store import get_store
from dashboard.ui import escape_md

TIME_KEYS = ("median_s", "ms", "median_ms", "mean_ms", "time_ms", "seconds", "time_s", "wall_s")


def _label(r: dict) -> str:
    """A workload label from the row's identifying fields (workload, model, batch, layer)."""
    bits = [str(r.get("workload", r.get("name", "?")))]
    if r.get("model"):
        bits.append(str(r["model"]))
    if r.get("batch") is not None:
        bits.append(f"batch {r['batch']}")
    return " · ".join(bits)


def _rows(payload: Any, where: str = "") -> list[dict]:
    """Every measurement in a bench report: lists of rows with a time, and {"engines": {engine: stats}} blocks
    (named after where they sit in the report), flattened to rows with workload / engine / times."""
    out: list[dict] = []
    if isinstance(payload, list):
        for r in payload:
            if isinstance(r, dict) and any(k in r for k in TIME_KEYS):
                out.append({"workload": where or "?", **r})
            elif isinstance(r, (dict, list)):
                out += _rows(r, where)
    elif isinstance(payload, dict):
        engines = payload.get("engines")
        if isinstance(engines, dict):
            for eng, st_ in engines.items():
                if isinstance(st_, dict) and any(k in st_ for k in TIME_KEYS):
                    out.append({"workload": where or "?", "engine": eng, **st_})
        for k, v in payload.items():
            if k != "engines" and isinstance(v, (dict, list)):
                out += _rows(v, k if not where else f"{where}.{k}" if isinstance(v, dict) else k)
    return out


def _series(r: dict) -> str:
    b = str(r.get("engine", r.get("backend", r.get("runtime", "?"))))
    p = r.get("provider")
    return f"{b} ({p})" if p and str(p) not in b else b


def _figure(rows: list[dict], key: str, title: str, log: bool) -> go.Figure:
    labels = list(dict.fromkeys(_label(r) for r in rows if key in r))
    fig = go.Figure()
    for s in dict.fromkeys(_series(r) for r in rows if key in r):
        vals = {_label(r): r[key] for r in rows if _series(r) == s and key in r}
        fig.add_trace(go.Bar(name=s, x=labels, y=[vals.get(w) for w in labels]))
    fig.update_layout(
        barmode="group",
        height=380,
        margin=dict(l=10, r=10, t=40, b=10),
        title=title,
        yaxis_title=key,
        yaxis_type="log" if log else "linear",
    )
    return fig


st.title("Benchmarks")
st.caption("torch eager vs ONNX Runtime per workload, from `convlens bench` reports saved in the run store.")
_pool = pool_info()
st.caption(
    f"This server's engine: {sessions_started()} ONNX Runtime sessions started in all, shared by every browser "
    f"session (one per graph and options); runner pool {_pool['size']} of {_pool['max']}."
)
store = get_store()
allowed, why = may_run_bench()


def _bench(job: jobs.Job, store: Any = store) -> tuple[None, None]:
    """The quick bench in a background job; stored as a bench record unless it stored itself."""
    from accel.bench import run_bench

    before = len(store.records("bench"))
    report = run_bench(quick=True, progress=job.observer.progress)  # Stop ends it at the next workload
    if isinstance(report, dict) and len(store.records("bench")) == before:  # it did not store itself
        store.put_record("bench", report, title=f"quick bench (dashboard) {time.strftime('%Y-%m-%d %H:%M')}")
    return None, None


running = jobs.jobs().get("bench")
busy = running is not None and running.running
if st.button(
    "Run the quick bench",
    type="primary",
    key="bench_run",
    help=why or "a few minutes on 2 cores; waits in the fair-use line like every heavy run",
    disabled=not allowed or busy,
):
    jobs.start_job("bench", jobs.Job("quick bench", _bench, user=current_user(), heavy=True))
if not allowed:
    st.caption(escape_md(why, strict=True))
jobs.panel("bench")
done = jobs.jobs().get("bench")
if done is not None and done.state == "done":
    st.success(f"bench finished in {done.elapsed:.0f} s")

records = store.records("bench")
if not records:
    st.info("No benchmark reports in the store yet. Run `convlens bench --quick` or press the button above.")
    st.stop()
pick = st.selectbox(
    "Report",
    range(len(records)),
    format_func=lambda i: (
        f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(records[i]['created']))} · "
        f"{records[i]['title'] or records[i]['id']}"
    ),
    key="bench_pick",
)
rec = records[pick]
rows = _rows(rec["payload"])
if not rows:
    st.warning("This report has no per-workload rows to plot; its raw content:")
    st.json(rec["payload"], expanded=False)
    st.stop()
tkey = next((k for k in TIME_KEYS if any(k in r for r in rows)), None)
if tkey:
    st.plotly_chart(_figure(rows, tkey, "time per workload (lower is better)", log=True), key="bench_time")
if any("images_per_s" in r for r in rows):
    st.plotly_chart(
        _figure(rows, "images_per_s", "throughput (higher is better)", log=False), key="bench_throughput"
    )
st.dataframe(readable_table(rows), hide_index=True, width="stretch")
payload = rec["payload"]
if isinstance(payload, dict) and isinstance(payload.get("markdown"), str):
    with st.expander("the report (Markdown)"):
        st.markdown(payload["markdown"])
if isinstance(payload, dict) and isinstance(payload.get("machine"), dict):
    with st.expander("machine"):
        st.json(payload["machine"])
