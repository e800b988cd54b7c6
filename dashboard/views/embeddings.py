"""Embeddings: a dataset's feature vectors projected (PCA / t-SNE / UMAP) as a WebGL scatter coloured by label;
select a point to see the item, its feature-space and pixel-space neighbours, and explain it on Compare.

The techniques whose spec names the "embeddings" page: those without an input image draw the map (the form at the
top), one that takes an image is the per-item tool (the selected item's nearest neighbours)."""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st
from PIL import Image

from accel import dataroots
from accel.images import foolbox_imagenet
from dashboard.display import fit_width, image_row, points_figure
from dashboard.pagekit import (
    backbone_fits,
    largest_dataset,
    method_form,
    methods_on,
    pick_method,
    run_heavy_aware,
)
from dashboard.session_store import public_text
from dashboard.sidebar import require_ctx
from dashboard.state import dataset, load_run
from dashboard.ui import escape_md, guard, link_line, st_progress
from dashboard.widgets import check_path_params


def _explain_target(item_id: str) -> dict | None:
    """Sidebar settings that select this dataset item as the image (Fashion-MNIST test, foolbox ImageNet)."""
    if item_id.startswith("fashion_mnist:test:"):
        return {"img_source": "Fashion-MNIST item", "img_fashion": int(item_id.rsplit(":", 1)[1])}
    paths = [str(p) for p, _ in foolbox_imagenet()]
    if item_id in paths:
        return {"img_source": "ImageNet photo", "img_imagenet": paths.index(item_id)}
    return None


st.title("Embeddings")
c = require_ctx(need_image=False)
on_page = methods_on("embeddings")
maps = [s for s in on_page if not s.needs_image]
item_tool = next((s for s in on_page if s.needs_image), None)
if not maps:
    st.info('No registered technique draws a map on this page (`register(..., page="embeddings")`).')
    st.stop()
spec = pick_method(maps, "emb") if len(maps) > 1 else maps[0]
if len(maps) == 1:
    st.caption(spec.summary)
if not backbone_fits(c, spec, "emb"):
    st.stop()
with guard(spec.name):
    go, params = method_form(
        c, spec, "emb", submit="Compute", kind_defaults={"dataset": largest_dataset(c.net)}
    )
    if go:
        bar = st_progress(spec.name)
        rid, _res, cached = run_heavy_aware(c, spec.name, params, key="emb", progress=bar)
        bar.done()
        st.session_state["emb_run"] = (rid, cached)
        st.session_state.pop("emb_sel", None)
last = st.session_state.get("emb_run")
if not last:
    st.caption(
        "Choose the dataset, size and projection, then press Compute (results are kept in the run store)."
    )
    st.stop()

rid, cached = last
run, res = load_run(rid)
ex = res.extras
labels = ex.get("labels")
classes = ex.get("classes")
ids = ex.get("ids") or []
feats = ex.get("features")
n = len(res.data)
link_line(rid, cached)
meta = res.meta
summary = (
    f"{n:,} points · {dataroots.display_spec(meta.get('dataset', ''))} · tap {meta.get('tap', '')} "
    f"({meta.get('dim', '?')}-D) · {meta.get('projection', '')} in {meta.get('projection_s', float('nan')):.1f} s"
)
st.caption(escape_md(public_text(summary), strict=True))
USEFUL_POINTS = 100  # below this a 2-D map shows little structure (t-SNE wants a few hundred points)
if isinstance(meta.get("perplexity"), (int, float)):
    asked = float(run.params.get("perplexity", meta["perplexity"]))
    used = float(meta["perplexity"])
    st.caption(
        f"t-SNE perplexity {used:.3g}"
        + (
            f" (lowered from {asked:.3g}: at most (n - 1) / 3 = {(n - 1) / 3:.3g} for {n} points)"
            if used < asked
            else ""
        )
    )
if n < USEFUL_POINTS:
    st.warning(
        f"Only {n} points: a 2-D map of so few shows little structure (t-SNE and UMAP want a few hundred). "
        "Choose a larger dataset or size above, or upload a folder of images."
    )


def _item_name(item_id: str) -> str:
    """A dataset item as users may see it: its root-relative or upload name, never a server path."""
    if item_id.startswith("/"):
        return (dataroots.display_path(item_id) or "(server file)")[-60:]
    return item_id[-60:]


def _name(i: int) -> str:
    if labels is None:
        return f"#{i}"
    lab = int(np.asarray(labels)[i])
    return f"#{i} {classes[lab]}" if classes and 0 <= lab < len(classes) else f"#{i} label {lab}"


def _feature_neighbours(feats: np.ndarray, i: int, k: int) -> list[int]:
    """The k nearest stored vectors to point i (cosine), through the neighbours technique's exact search."""
    from accel.methods.inspect.neighbors import knn

    idx, _d, _used = knn(feats, feats[i : i + 1], k, "cosine", "auto", np.asarray([i]))
    return [int(j) for j in idx[0]]


NEIGHBOUR_COLS = 4  # thumbnails per row in the narrow item column: about 100 px each, legible


def neighbour_rows(nres: Any, ds: Any) -> None:
    """The neighbours technique's answer as legible rows (NEIGHBOUR_COLS per row, label and distance under each)
    instead of its one-strip mosaic squeezed into the column: feature space first, then pixel space."""
    for side, title in (("feature", "Nearest in feature space"), ("pixel", "Nearest in pixel space")):
        got = nres.extras.get(side) or {}
        item_ids, names, dist = got.get("ids") or [], got.get("label_names") or [], got.get("dist")
        if not item_ids:
            continue
        st.markdown(
            f"*{title}* ({escape_md(str(nres.meta.get(side + '_metric') or nres.meta.get('metric', '')))})"
        )
        tiles = [fit_width(ds.load(str(j)).image) for j in item_ids]
        caps = [
            f"{names[i] if i < len(names) else ''} {float(dist[i]):.3g}".strip() if dist is not None else ""
            for i in range(len(item_ids))
        ]
        image_row(tiles, caps, ncols=NEIGHBOUR_COLS)


@st.fragment
def explorer() -> None:
    left, right = st.columns([3, 2])
    with left:
        event = st.plotly_chart(
            points_figure(res, labels=labels, classes=classes),
            key="emb_plot",
            on_select="rerun",
            selection_mode=("points", "box", "lasso"),
            config={"scrollZoom": True},
        )
        st.caption("Hover for the label; click a point (or box/lasso-select) to open it on the right.")
    pts = (event.selection.get("points") if event and event.selection else None) or []
    sel = [int(p["customdata"]) for p in pts if p.get("customdata") is not None]
    if sel:
        st.session_state["emb_sel"] = sel[0]
    i = st.session_state.get("emb_sel")
    with right:
        if i is None or i >= n:
            st.info("Select a point to see the item and its nearest neighbours in feature and pixel space.")
            return
        item_id = str(ids[i]) if i < len(ids) else ""
        st.markdown(
            f"**{escape_md(public_text(_name(i)), strict=True)}**"
            + (f" · {len(sel)} selected" if len(sel) > 1 else "")
        )
        item_img = None
        with guard("item"):
            item_img = dataset(str(meta["dataset"])).load(item_id).image
            st.image(
                fit_width(item_img),
                caption=escape_md(public_text(_item_name(item_id)), strict=True),
                width=160,
            )
        k = st.slider("neighbours", 2, 24, 8, key="emb_k")
        full = item_img is not None and item_tool is not None
        auto = full and (n <= 10_000 or st.session_state.get("emb_pixels_for") == i)
        if not auto and isinstance(feats, np.ndarray) and len(feats) == n:
            with guard("feature-space neighbours"):
                nb = _feature_neighbours(feats, i, k)
                st.markdown("*Nearest in feature space* (cosine, from the stored vectors)")
                ds = dataset(str(meta["dataset"]))
                tiles = [fit_width(ds.load(str(ids[j])).image) for j in nb]
                image_row(tiles, [_name(j) for j in nb], ncols=NEIGHBOUR_COLS)
        if full:
            if not auto and st.button(
                "Pixel-space neighbours too (re-streams the dataset)",
                key="emb_pixels",
                icon=":material/grid_view:",
            ):
                st.session_state["emb_pixels_for"] = i
                auto = True
            if auto and item_tool is not None:
                with guard("neighbours"):
                    nparams = {
                        "dataset": str(meta["dataset"]),
                        "limit": 0,
                        "k": int(k),
                        "tap": str(meta.get("tap")),
                    }
                    nparams = check_path_params(item_tool, nparams, c.net)
                    nid, nres, ncached = run_heavy_aware(
                        c, item_tool.name, nparams, key="emb_nb", img=item_img
                    )
                    neighbour_rows(nres, dataset(str(meta["dataset"])))
                    link_line(nid, ncached)
        target = _explain_target(item_id)
        if target is not None:

            def _explain(t: dict = target) -> None:
                st.session_state.update(t)
                st.session_state["emb_go_compare"] = True

            st.button(
                "Explain this item on Compare",
                on_click=_explain,
                key="emb_explain",
                icon=":material/compare:",
            )
        if st.session_state.pop("emb_go_compare", False):
            st.switch_page("views/compare.py")


with guard("Embeddings"):
    explorer()
grid = ex.get("grid_image")
if grid is not None:
    st.subheader("Image grid")
    with guard("grid"):
        g = grid if isinstance(grid, Image.Image) else Image.fromarray(np.asarray(grid, dtype=np.uint8))
        st.image(
            g,
            caption="the 2-D map snapped to a regular grid of thumbnails (one image per cell)",
            width="stretch",
        )
