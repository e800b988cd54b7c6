"""The view of an evaluation (accel.evaluate.suite): per metric family a table (mean, spread, the random map's
mean, whether the method beats it in the metric's own direction) and a plot with one panel per metric (each on its
own scale); CSV and Markdown downloads of the whole table. Shared by the Evaluate page and by links that reopen a
stored evaluation."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

import accel
from accel.evaluate.suite import markdown

from .display import compact
from .session_store import public_text
from .ui import escape_md, html_text

METHOD = "evaluate"  # the stored runs' method name
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")


def is_eval_run(res: accel.Result, method: str | None) -> bool:
    """Whether a stored run is an evaluation (drawn by `eval_view`)."""
    return method == METHOD and isinstance(res.meta.get("table"), list) and "metrics" in res.meta


def verdict(row: Mapping[str, Any]) -> str:
    """Whether the method's mean beats the random map's in the metric's direction ('-' without a baseline)."""
    r, m = row.get("random_mean"), row.get("mean")
    if r is None or m is None:
        return "-"
    better = m > r if row["direction"] == "higher" else m < r
    return "yes" if better else "no"


def arrow(direction: str) -> str:
    """The direction of a metric as an arrow: ↑ higher is better, ↓ lower is better."""
    return "↑" if direction == "higher" else "↓"


def family_figure(rows: list[dict[str, Any]], family: str) -> go.Figure:
    """One panel per metric of the family (each on its own scale, its direction in the title): a bar per method
    with its sd as an error bar, and the random map's mean as a dashed line."""
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    direction = {r["metric"]: r["direction"] for r in rows}
    fig = make_subplots(
        rows=1,
        cols=len(metrics),
        subplot_titles=[html_text(f"{m} {arrow(direction[m])}") for m in metrics],
        horizontal_spacing=min(0.12, 0.5 / max(1, len(metrics))),
    )
    for col, metric in enumerate(metrics, start=1):
        mine = {r["method"]: r for r in rows if r["metric"] == metric}
        for k, meth in enumerate(methods):
            r = mine.get(meth)
            fig.add_trace(
                go.Bar(
                    name=html_text(meth),
                    x=[html_text(meth)],
                    y=[r["mean"] if r else None],
                    error_y=dict(type="data", array=[(r["sd"] or 0.0) if r else 0.0]),
                    marker_color=COLORS[k % len(COLORS)],
                    legendgroup=meth,
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
        rand = [r["random_mean"] for r in mine.values() if r.get("random_mean") is not None]
        if rand:
            fig.add_hline(
                y=float(np.mean(rand)),
                line_dash="dash",
                line_color="black",
                annotation_text="random map",
                annotation_position="top left",
                row=1,  # type: ignore[arg-type]  # plotly accepts a row number here
                col=col,  # type: ignore[arg-type]
            )
    fig.update_xaxes(showticklabels=False)
    fig.update_layout(barmode="group", title=family)
    return compact(fig, 320, legend=dict(orientation="h", y=-0.05))


def table_csv(rows: list[dict[str, Any]]) -> bytes:
    """The tidy table as CSV (one row per metric and method, with the random map's mean and the verdict)."""
    buf = io.StringIO()
    cols = ["metric", "family", "direction", "method", "mean", "sd", "n", "random_mean", "beats_random"]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "beats_random": verdict(r)})
    return buf.getvalue().encode()


def per_image(meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every score of every image: one row per image and method, a column per metric (for the expander)."""
    names = [m["name"] for m in meta["metrics"]]
    ids = list(meta.get("image_ids") or [])
    out = []
    for meth in meta["methods"]:
        scores = meta["scores"].get(meth, {})
        for i, img in enumerate(ids):
            row: dict[str, Any] = {"image": img.rsplit("/", 1)[-1], "method": meth}
            for n in names:
                v = scores.get(n)
                row[n] = v[i] if v is not None and i < len(v) and v[i] is not None else math.nan
            out.append(row)
    return out


def eval_view(res: accel.Result, key: str) -> None:
    """The whole view of one evaluation: headline, messages, per family its table and plot, downloads."""
    meta = res.meta
    rows: list[dict[str, Any]] = list(meta["table"])
    st.caption(
        escape_md(
            public_text(
                f"{meta.get('n_images')} image(s) of {meta.get('source', '?')} · "
                f"{len(meta.get('methods', []))} method(s) · {len(rows)} scores · {meta.get('wall_s', 0):.1f} s · "
                f"targets: {meta.get('target_mode')} · random maps per image: {meta.get('n_random')}"
            )
        )
    )
    if meta.get("stopped"):
        st.warning("stopped before the end: the scores computed so far are shown")
    for what, msgs in (("skipped", meta.get("skipped") or {}), ("failed", meta.get("errors") or {})):
        for name, why in msgs.items():
            st.info(escape_md(public_text(f"{name} {what}: {why}")))
    if not rows:
        st.info("no scores to show")
        return
    info = {m["name"]: m for m in meta["metrics"]}
    for fam in dict.fromkeys(m["family"] for m in meta["metrics"]):
        fam_rows = [r for r in rows if info[r["metric"]]["family"] == fam]
        if not fam_rows:
            continue
        st.subheader(fam.capitalize())
        baseline = any(r.get("random_mean") is not None for r in fam_rows)
        table = []
        for r in fam_rows:
            row = {
                "metric": r["metric"],
                "better": f"{arrow(r['direction'])} {r['direction']}",
                "method": r["method"],
                "mean": r["mean"],
                "sd": r["sd"],
                "n": r["n"],
            }
            if baseline:  # families without a random-map reference (randomisation, robustness) get no columns
                row["random map"] = math.nan if r.get("random_mean") is None else r["random_mean"]
                row["beats random"] = verdict(r)
            table.append(row)
        st.dataframe(table, hide_index=True, key=f"{key}_{fam}_table")
        st.plotly_chart(family_figure(fam_rows, fam), key=f"{key}_{fam}_plot")
    if meta.get("image_ids"):
        with st.expander("scores per image"):
            st.dataframe(per_image(meta), hide_index=True, key=f"{key}_per_image")
    with st.expander("what each metric measures"):
        for m in meta["metrics"]:
            st.markdown(
                escape_md(f"{m['name']} ({m['family']}, {m['direction']} is better): {m['summary']}")
                + (f" · {escape_md(m['paper'])}" if m.get("paper") else "")
            )
    a, b = st.columns(2)
    a.download_button(
        "table (.csv)", lambda: table_csv(rows), "evaluation.csv", "text/csv", key=f"{key}_csv",
        on_click="ignore",
    )  # fmt: skip
    b.download_button(
        "table (.md)", lambda: markdown(meta).encode(), "evaluation.md", "text/markdown", key=f"{key}_md",
        on_click="ignore",
    )  # fmt: skip


def score_matrix(table: list[dict[str, Any]], methods: list[str], metrics: list[str]) -> np.ndarray:
    """Means as a (methods, metrics) float array (NaN where missing): the stored run's data."""
    cell = {(r["method"], r["metric"]): r["mean"] for r in table}
    return np.array(
        [[np.nan if cell.get((a, b)) is None else cell[a, b] for b in metrics] for a in methods], np.float32
    )
