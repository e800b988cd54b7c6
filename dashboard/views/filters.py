"""Filters & activations: first-layer filters, activation grids and the other per-image inspect techniques."""

from __future__ import annotations

import streamlit as st

from dashboard.common import method_names, require_ctx
from dashboard.pagekit import run_panel

OTHER_PAGES = {"max_patches", "neighbors", "embedding"}

st.title("Filters & activations")
c = require_ctx(need_image=False)
names = [n for n in method_names("inspect") if n not in OTHER_PAGES]
run_panel(
    c,
    names,
    "flt",
    "No inspect technique is registered yet (accel/methods/inspect/). Filters and activations appear here as they land.",
)
