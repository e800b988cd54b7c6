"""Reopening a stored run exactly as it was computed (no recomputation): the `?run=<id>` view and the Runs page."""

from __future__ import annotations

import time

import numpy as np
import streamlit as st
from PIL import Image

from .common import get_store, guard, load_run, share_link
from .jobs import _loss_from_result
from .widgets import loss_figure, meta_line, show_result


def render_run(run_id: str, *, key: str = "run") -> None:
    """Title, provenance, the result as stored, its parameters, and export buttons for one run."""
    run, res = load_run(run_id)
    st.subheader(run.title or f"{run.method} on {run.model}")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.created))
    st.caption(
        f"run `{run.id}` · {run.method} · {run.model} · {when} · [shareable link]({share_link(run.id)})"
    )
    cols = st.columns([3, 2])
    with cols[0]:
        if res.kind == "map" and res.image is not None:
            alpha = st.slider("overlay opacity", 0.0, 1.0, 0.5, 0.05, key=f"{key}_alpha")
            a, b = st.columns(2)
            a.image(res.image, caption="input", width="stretch")
            with b:
                show_result(res, alpha=alpha, key=f"{key}_res")
        else:
            show_result(res, key=f"{key}_res")
            extra = res.extras.get("image")
            if res.kind == "points" and isinstance(extra, Image.Image):
                st.image(extra, caption="image grid", width="stretch" if extra.width >= 700 else "content")
            if res.image is not None:
                st.image(res.image, caption="input", width=200)
        losses = _loss_from_result(res)
        if losses:
            st.plotly_chart(loss_figure(losses), key=f"{key}_loss")
    with cols[1]:
        st.markdown("**Parameters**")
        st.json(run.params, expanded=True)
        line = meta_line(res.meta)
        if line:
            st.markdown(f"**Measured**: {line}")
        scalars = {
            k: (v.item() if isinstance(v, np.generic) else v)
            for k, v in res.meta.items()
            if isinstance(v, (int, float, str, bool, np.generic)) and k not in ("method", "model")
        }
        if scalars:
            with st.expander("all metadata"):
                st.json(scalars)
        store = get_store()
        d1, d2 = st.columns(2)
        d1.download_button(
            "Export HTML",
            store.export_html([run.id]),
            file_name=f"convlens-{run.id}.html",
            mime="text/html",
            key=f"{key}_html",
            on_click="ignore",
        )
        d2.download_button(
            "Export zip",
            store.export_zip([run.id]),
            file_name=f"convlens-{run.id}.zip",
            mime="application/zip",
            key=f"{key}_zip",
            on_click="ignore",
        )


def show_shared_run(run_id: str) -> None:
    """The page a `?run=<id>` link opens: the stored run, read from the store only."""
    st.title("Shared run")
    with guard("Run"):
        render_run(str(run_id), key="shared")
    if st.button("Close and go back", key="close_shared"):
        del st.query_params["run"]
        st.rerun()
