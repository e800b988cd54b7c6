"""The view of a dataset explanation (accel.jobs.labelled): accuracy, confusion matrix, a table that filters to the
mistakes and sorts by confidence, and each image with its methods' maps side by side; shared by the Dataset page
and by links that reopen a stored run."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

import accel
from accel.images import overlay

from .display import colorbar_image, compact
from .session_store import public_text
from .ui import escape_md

METHOD = "dataset"  # the stored runs' method name
ROWS_SHOWN = 12  # images drawn with their maps (the table lists all)
SORTS = ("most confident first", "least confident first", "dataset order")


def is_dataset_run(res: accel.Result, method: str | None) -> bool:
    """Whether a stored run is a dataset explanation (drawn by `dataset_view`, not as a plain picture)."""
    return method == METHOD and isinstance(res.meta.get("table"), list) and "maps" in res.extras


def confusion_figure(conf: np.ndarray, names: list[str]) -> go.Figure:
    """The confusion matrix as a heat map (rows: true class, columns: predicted), counts written in the cells."""
    fig = go.Figure(
        go.Heatmap(
            z=conf,
            x=names,
            y=names,
            colorscale="Blues",
            text=conf,
            texttemplate="%{text}",
            hovertemplate="true %{y}<br>predicted %{x}<br>%{z} image(s)<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed", title="true class")
    fig.update_xaxes(title="predicted class")
    return compact(fig, max(260, 28 * len(names) + 120))


def _order(table: list[dict[str, Any]], mistakes: bool, sort: str) -> list[int]:
    """Row indices after the mistake filter and the chosen sort."""
    idx = [r["i"] for r in table if not mistakes or r["correct"] is False]
    if sort == SORTS[0]:
        idx.sort(key=lambda i: -table[i]["probability"])
    elif sort == SORTS[1]:
        idx.sort(key=lambda i: table[i]["probability"])
    return idx


def _image_rows(res: accel.Result, rows: list[int], table: list[dict[str, Any]]) -> None:
    """Each chosen image, then each method's map over it on one colour scale per image (its colour bar beside)."""
    maps, thumbs, methods = res.extras["maps"], res.extras["thumbs"], list(res.meta["methods"])
    for i in rows[:ROWS_SHOWN]:
        r = table[i]
        verdict = "" if r["correct"] is None else ("✓" if r["correct"] else "✗ mistake")
        st.markdown(
            escape_md(
                public_text(
                    f"{r['id'].rsplit('/', 1)[-1]} · true: {r['truth'] or '-'} · predicted: {r['predicted']} "
                    f"({r['probability']:.1%}) {verdict} · maps explain {r['explained']}"
                ),
                strict=True,
            )
        )
        cols = st.columns(max(4, 1 + len(methods)))  # at least four columns: maps stay a readable 224 px
        base = Image.fromarray(thumbs[i])
        cols[0].image(base.resize((224, 224)), caption="input", width=224)
        for j, m in enumerate(methods):
            a = maps[i, j]
            lo, hi = float(a.min()), float(a.max())
            cols[j + 1].image(overlay(base, a, vmin=lo, vmax=hi).resize((224, 224)), caption=m, width=224)
            cols[j + 1].image(
                colorbar_image(lo, hi, "jet", width=224, height=8), caption=f"{lo:.3g} … {hi:.3g}"
            )


def dataset_view(res: accel.Result, key: str) -> None:
    """The whole view of one dataset explanation."""
    meta = res.meta
    table: list[dict[str, Any]] = list(meta["table"])
    acc = meta.get("accuracy")
    a, b, c3 = st.columns(3)
    a.metric("images", meta.get("images", len(table)))
    b.metric(
        "top-1 accuracy", "-" if acc is None else f"{acc:.1%}", help="over the images with a known class"
    )
    c3.metric("time", f"{meta.get('wall_s', 0):.1f} s")
    if meta.get("stopped"):
        st.warning("stopped before the end: the images explained so far are shown")
    for note in meta.get("notes") or []:
        st.info(escape_md(public_text(str(note))))
    conf = res.extras.get("confusion")
    names = list(meta.get("confusion_classes") or [])
    if isinstance(conf, np.ndarray) and conf.size and len(names) == len(conf):
        st.plotly_chart(confusion_figure(conf, names), key=f"{key}_conf")
    f1, f2 = st.columns(2)
    mistakes = f1.toggle("mistakes only", key=f"{key}_mistakes")
    sort = f2.selectbox("sort", SORTS, key=f"{key}_sort")
    rows = _order(table, mistakes, sort)
    st.dataframe(
        [
            {
                "file": t["id"].rsplit("/", 1)[-1],
                "true": t["truth"] or "-",
                "predicted": t["predicted"],
                "probability": t["probability"],
                "correct": "-" if t["correct"] is None else ("yes" if t["correct"] else "no"),
            }
            for t in (table[i] for i in rows)
        ],
        hide_index=True,
        key=f"{key}_table",
    )
    st.caption(f"{len(rows)} image(s) listed; the first {min(ROWS_SHOWN, len(rows))} drawn below")
    _image_rows(res, rows, table)
    buf = io.BytesIO()
    np.save(buf, np.asarray(res.extras["maps"], np.float32), allow_pickle=False)
    st.download_button(
        "maps (.npy: images x methods x H x W)", buf.getvalue(), "dataset_maps.npy", key=f"{key}_npy"
    )
