"""Style transfer: every technique whose spec names the "style" page side by side (Gatys et al.'s optimisation
next to a fast feed-forward network), with their measured times compared."""

from __future__ import annotations

import streamlit as st

from dashboard import jobs
from dashboard.pagekit import job_panel, methods_on
from dashboard.sidebar import require_ctx

st.title("Style transfer")
st.caption(
    "The sidebar image is the content. Gatys optimises an image per request; the fast network is one pass."
)
c = (
    require_ctx()
)  # a technique this backbone cannot run (MethodSpec.unmet) is disabled with a switch in its panel
# optimisation first (it can be stopped), then the one-pass networks it is compared with
specs = sorted(methods_on("style"), key=lambda s: not s.stoppable)
times: dict[str, float] = {}
for spec, col in zip(specs, st.columns(max(1, len(specs))), strict=False):
    with col:
        st.subheader(f"{spec.name} ({'optimisation' if spec.stoppable else 'one pass'})")
        job_panel(c, [spec], f"sty_{spec.name}")
    _rid, res = jobs.result_of(f"sty_{spec.name}:{spec.name}")
    if res is not None and isinstance(res.meta.get("wall_s"), (int, float)):
        times[spec.name] = float(res.meta["wall_s"])
    if res is not None and isinstance(res.meta.get("peer_seconds"), (int, float)):
        times["the packaged peer"] = float(res.meta["peer_seconds"])  # its picture shows beside ours
if not specs:
    job_panel(c, specs, "sty")  # says that no technique names this page
if len(times) >= 2:
    (slow, t_slow), *_, (fast, t_fast) = sorted(times.items(), key=lambda kv: -kv[1])
    st.success(
        f"{slow} {t_slow:.2f} s vs {fast} {t_fast:.3f} s: {fast} is {t_slow / max(t_fast, 1e-9):.0f}x quicker"
    )
