"""Home: the chosen model, image, top-5 prediction (on the chosen backend) and the layer map."""

from __future__ import annotations

import html
import time
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

import accel
from dashboard.display import compact, fit_width, readable_table
from dashboard.session_store import public_text
from dashboard.sidebar import require_ctx
from dashboard.ui import escape_md, guard


@st.cache_resource(show_spinner="Preparing the runner...", max_entries=8)
def _runner(weights: str, backend: str, _net: Any) -> Any:
    """One forward runner per (weights, backend) per server process, shared by every session."""
    return accel.runner(_net, ["logits"], backend=backend)


st.title("convlens")
st.write(
    "See inside convolutional networks: what they learned, and why they decided. Pick a backbone and an image in "
    "the sidebar, then open a page."
)
c = require_ctx()
net, img = c.net, c.img
st.caption(
    f"**{escape_md(public_text(c.model))}** · {escape_md(public_text(net.source))} · "
    f"input {'x'.join(map(str, net.input_shape))}"
)
c1, c2 = st.columns([1, 2])
with c1, guard("Input"):
    st.image(
        fit_width(net.deprocess(net.preprocess(img))),
        caption=f"input as {escape_md(public_text(c.model))} sees it",  # an upload's name, not its storage id
        width=260,
    )
with c2:
    st.subheader("Prediction")
    if not net.has_head:
        st.caption(
            f"{escape_md(public_text(c.model))} is a convolutional feature extractor (no classifier head)."
        )
    else:
        with guard("Prediction"):
            t0 = time.perf_counter()
            r = _runner(net.weights_hash(), c.backend, net)
            logits = r.run(net.preprocess(img).numpy())["logits"][0].astype(np.float64)
            ms = (time.perf_counter() - t0) * 1000
            p = np.exp(logits - logits.max())
            p /= p.sum()
            names = net.labels or [str(i) for i in range(len(p))]
            for i in np.argsort(-p)[:5]:
                st.progress(float(min(1.0, p[i])), text=f"{escape_md(names[i])} ({i}): {p[i]:.1%}")
            st.caption(f"{escape_md(r.backend)} · {ms:.0f} ms (first call includes building the session)")

st.subheader("Layer map")
with guard("Layers"):
    layers = net.layers()
    rows = [
        {
            "#": i,
            "layer": li.name,
            "kind": li.kind,
            "output": "x".join(map(str, li.out_shape)),
            "receptive field (px)": li.receptive_field[0] if li.receptive_field else None,
            "stride (px)": li.receptive_field[1] if li.receptive_field else None,
        }
        for i, li in enumerate(layers)
    ]
    rf = [(i, li.receptive_field[0], li.name) for i, li in enumerate(layers) if li.receptive_field]
    if rf:
        fig = go.Figure(
            go.Scatter(
                x=[a for a, _, _ in rf],
                y=[b for _, b, _ in rf],
                text=[html.escape(n) for _, _, n in rf],  # Plotly renders a subset of HTML in labels
                mode="lines+markers",
                name="receptive field",
                hovertemplate="%{text}<br>RF %{y}px<extra></extra>",
            )
        )
        side = int(
            net.pre.size
        )  # a trace, in data units on the log axis (a shape's y would be read as log10)
        fig.add_trace(
            go.Scatter(
                x=[rf[0][0], rf[-1][0]],
                y=[side, side],
                mode="lines",
                line=dict(dash="dot", color="grey"),
                name=f"input size ({side} px)",
                hovertemplate=f"input size {side}px<extra></extra>",
            )
        )
        compact(
            fig,
            240,
            title="receptive field by depth",
            xaxis_title="layer #",
            yaxis_title="px",
            yaxis_type="log",
        )
        st.plotly_chart(fig, key="rf_plot")
    st.dataframe(readable_table(rows), hide_index=True, width="stretch", height=360)
