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


def view(name: str, title: str, icon: str) -> st.Page:
    """The page of views/<name>.py, served at /<name> with a Material icon."""
    return st.Page(str(P / f"{name}.py"), title=title, icon=f":material/{icon}:", url_path=name)


PAGES = {
    "convlens": [st.Page(str(P / "home.py"), title="Home", icon=":material/home:", default=True)],
    "Attribution": [
        view("compare", "Compare", "compare"),
        view("dataset", "Explain a dataset", "dataset"),
        view("models", "Two models", "compare_arrows"),
    ],
    "Evaluate & concepts": [
        view("evaluate", "Evaluate", "fact_check"),
        view("concepts", "Concepts", "lightbulb"),
    ],
    "Inspect": [
        view("filters", "Filters & activations", "grid_on"),
        view("patches", "Max-activating patches", "crop"),
        view("embeddings", "Embeddings", "scatter_plot"),
    ],
    "Synthesize": [
        view("synthesis", "Synthesis", "auto_awesome"),
        view("inversion", "Inversion & texture", "texture"),
        view("style", "Style transfer", "brush"),
    ],
    "Results": [view("benchmarks", "Benchmarks", "speed"), view("runs", "Runs", "history")],
}
# expanded: all 14 pages listed (collapsed, Streamlit hides those past the tenth behind "View more")
nav = st.navigation(PAGES, expanded=True)
sidebar()
account_box()
shared = st.query_params.get("run")
if shared:
    show_shared_run(shared)
else:
    nav.run()
