"""Home: the chosen model, image, top-5 prediction and the layer map."""

from __future__ import annotations

import streamlit as st

import accel
from dashboard.common import sidebar

net, img = sidebar()
st.title("convlens")
st.write("See inside convolutional networks: what they learned, and why they decided.")
if net is None or img is None:
    st.info("Pick a model and an image in the sidebar.")
    st.stop()
c1, c2 = st.columns([1, 2])
with c1:
    st.image(net.deprocess(net.preprocess(img)), caption=f"input as {net.name} sees it", width=260)
with c2:
    st.subheader("Prediction")
    if net.has_head:
        try:
            for label, p in net.predict(img, top=5):
                st.progress(min(1.0, p), text=f"{label}: {p:.1%}")
        except accel.BadInput as e:
            st.error(str(e))
    else:
        st.caption(f"{net.name} is a convolutional feature extractor (no classifier head).")
st.subheader("Layers")
rows = [
    {
        "layer": li.name,
        "kind": li.kind,
        "output": "x".join(map(str, li.out_shape)),
        "receptive field (px)": li.receptive_field[0] if li.receptive_field else None,
        "stride (px)": li.receptive_field[1] if li.receptive_field else None,
    }
    for li in net.layers()
]
st.dataframe(rows, hide_index=True, width="stretch")
