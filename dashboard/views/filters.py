"""Filters & activations: first-layer filters, activation grids and the other per-image inspect techniques (every
technique whose spec names the "filters" page)."""

from __future__ import annotations

import streamlit as st

from dashboard.pagekit import methods_on, run_panel
from dashboard.sidebar import require_ctx

st.title("Filters & activations")
c = require_ctx(need_image=False)
run_panel(c, methods_on("filters"), "flt")
