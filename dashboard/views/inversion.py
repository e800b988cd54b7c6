"""Inversion & texture: reconstruct an image from a layer's code; synthesize a texture from Gram statistics."""

from __future__ import annotations

import streamlit as st

from dashboard.common import method_names, require_ctx
from dashboard.pagekit import job_panel

st.title("Inversion & texture")
st.caption(
    "Inversion recovers what a layer keeps of the sidebar image; texture synthesis matches the Gram statistics "
    "of the sidebar image (the exemplar)."
)
c = require_ctx(need_image=False)
names = [n for n in ("inversion", "texture") if n in method_names("synthesize")]
job_panel(
    c, names, "inv", "Inversion and texture synthesis are not registered yet (accel/methods/synthesize/)."
)
