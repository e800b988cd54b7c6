"""convlens dashboard entry point: `streamlit run dashboard/app.py` (or `make run`)."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

st.set_page_config(page_title="convlens", layout="wide")
PAGES = ROOT / "dashboard" / "pages"
nav = st.navigation(
    {
        "convlens": [st.Page(str(PAGES / "home.py"), title="Home", default=True)],
    }
)
nav.run()
