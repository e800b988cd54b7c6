"""Inversion & texture: reconstruct an image from a layer's code; synthesize a texture from Gram statistics (every
technique whose spec names the "inversion" page)."""

from __future__ import annotations

import streamlit as st

from dashboard.pagekit import job_panel, methods_on
from dashboard.sidebar import require_ctx

st.title("Inversion & texture")
st.caption(
    "Inversion recovers what a layer keeps of the sidebar image; texture synthesis matches the Gram statistics "
    "of the sidebar image (the exemplar)."
)
c = require_ctx(need_image=False)
job_panel(c, methods_on("inversion"), "inv")
