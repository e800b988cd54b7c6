"""Synthesis: class visualization, DeepDream and fooling images, with live progress and a stop button."""

from __future__ import annotations

import streamlit as st

from dashboard.common import method_names, require_ctx
from dashboard.pagekit import job_panel

OTHER_PAGES = {"inversion", "texture", "style_transfer", "fast_style"}
ORDER = ("class_viz", "deepdream", "fooling")

st.title("Synthesis")
st.caption("Optimise an image against an objective: a class score, a layer's activations, or a wrong label.")
c = require_ctx(need_image=False)
avail = [n for n in method_names("synthesize") if n not in OTHER_PAGES]
names = [n for n in ORDER if n in avail] + [n for n in avail if n not in ORDER]
job_panel(c, names, "syn", "No synthesis technique is registered yet (accel/methods/synthesize/).")
