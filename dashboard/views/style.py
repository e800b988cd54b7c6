"""Style transfer: Gatys et al. (optimisation) next to a fast feed-forward network, with measured times."""

from __future__ import annotations

import streamlit as st

from dashboard import jobs
from dashboard.common import method_names, require_ctx
from dashboard.pagekit import job_panel

st.title("Style transfer")
st.caption(
    "The sidebar image is the content. Gatys optimises an image per request; the fast network is one pass."
)
c = require_ctx()
if not c.model.startswith("vgg"):
    st.info("Gatys' losses are defined on VGG layers: pick vgg19 (or vgg16) as the backbone in the sidebar.")
avail = method_names("synthesize")
left, right = st.columns(2)
with left:
    st.subheader("Gatys (optimisation)")
    job_panel(
        c, [n for n in ("style_transfer",) if n in avail], "gatys", "style_transfer is not registered yet."
    )
with right:
    st.subheader("Fast (feed-forward)")
    job_panel(c, [n for n in ("fast_style",) if n in avail], "fast", "fast_style is not registered yet.")

times = {}
for slot, label in (("gatys:style_transfer", "Gatys"), ("fast:fast_style", "fast")):
    _rid, res = jobs.result_of(slot)
    if res is not None and isinstance(res.meta.get("wall_s"), (int, float)):
        times[label] = float(res.meta["wall_s"])
if len(times) == 2:
    ratio = times["Gatys"] / max(times["fast"], 1e-9)
    st.success(
        f"Gatys {times['Gatys']:.2f} s vs fast {times['fast']:.3f} s: the fast network is {ratio:.0f}x quicker"
    )
