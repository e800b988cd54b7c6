"""convlens dashboard entry point: `streamlit run dashboard/app.py` (or `make run`, which listens on 127.0.0.1).

When sign-in is required (CONVLENS_AUTH=required, dashboard.auth) a signed-out browser gets only the sign-in page:
no page, sidebar or shared run is drawn before that check. The sidebar (backbone, image, backend) is drawn here so
it persists across pages; `?run=<id>` on any page opens that stored run instead of the page, without recomputing."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from accel.runtime.alloc import tune_allocator  # noqa: E402
from dashboard.auth import account_box, require_sign_in  # noqa: E402
from dashboard.runview import show_shared_run  # noqa: E402
from dashboard.sidebar import sidebar  # noqa: E402
from dashboard.state import start_idle_trimmer  # noqa: E402

tune_allocator()  # torch eager (gradients, synthesis) without a page fault per activation; once per process
start_idle_trimmer()  # freed memory goes back to the OS while the server is idle
st.set_page_config(page_title="convlens", page_icon=":material/visibility:", layout="wide")
require_sign_in()  # stops here with only the sign-in page for a signed-out browser when sign-in is required
P = ROOT / "dashboard" / "views"  # not "pages/": Streamlit would serve that folder itself on deep links
PAGES = {
    "convlens": [
        st.Page(str(P / "home.py"), title="Home", icon=":material/home:", default=True),
    ],
    "Attribution": [
        st.Page(str(P / "compare.py"), title="Compare", icon=":material/compare:", url_path="compare"),
    ],
    "Inspect": [
        st.Page(
            str(P / "filters.py"),
            title="Filters & activations",
            icon=":material/grid_on:",
            url_path="filters",
        ),
        st.Page(
            str(P / "patches.py"), title="Max-activating patches", icon=":material/crop:", url_path="patches"
        ),
        st.Page(
            str(P / "embeddings.py"),
            title="Embeddings",
            icon=":material/scatter_plot:",
            url_path="embeddings",
        ),
    ],
    "Synthesize": [
        st.Page(
            str(P / "synthesis.py"), title="Synthesis", icon=":material/auto_awesome:", url_path="synthesis"
        ),
        st.Page(
            str(P / "inversion.py"),
            title="Inversion & texture",
            icon=":material/texture:",
            url_path="inversion",
        ),
        st.Page(str(P / "style.py"), title="Style transfer", icon=":material/brush:", url_path="style"),
    ],
    "Results": [
        st.Page(str(P / "benchmarks.py"), title="Benchmarks", icon=":material/speed:", url_path="benchmarks"),
        st.Page(str(P / "runs.py"), title="Runs", icon=":material/history:", url_path="runs"),
    ],
}
nav = st.navigation(PAGES)
sidebar()
account_box()
shared = st.query_params.get("run")
if shared:
    show_shared_run(shared)
else:
    nav.run()
