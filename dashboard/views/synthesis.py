"""Synthesis: class visualization, DeepDream and fooling images (every technique whose spec names the "synthesis"
page), with live progress and a stop button."""

from __future__ import annotations

import streamlit as st

from dashboard.pagekit import job_panel, methods_on
from dashboard.sidebar import require_ctx

st.title("Synthesis")
st.caption("Optimise an image against an objective: a class score, a layer's activations, or a wrong label.")
c = require_ctx(need_image=False)
job_panel(c, methods_on("synthesis"), "syn")
