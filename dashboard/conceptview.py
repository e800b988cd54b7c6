"""Drawing stored concept runs: a TCAV run as bars per layer (error bars over the CAV runs, the random null, stars
where the Bonferroni-corrected t-test is significant), its table and CAV accuracies; a discovery as the importance
of each concept, its top crops and its map on the image. Shared by the Concepts page and by links that reopen a
stored run (dashboard.runview)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from PIL import Image
from plotly.subplots import make_subplots

import accel
from accel import dataroots
from accel.images import make_grid, overlay

from .display import colorbar_image, compact, fit_width
from .session_store import public_text
from .state import ctx, session_space
from .ui import escape_md, html_text

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
TILE = 64  # side (px) a top crop is drawn at


def is_concept_run(res: accel.Result, method: str | None) -> bool:
    """Whether a stored run is a TCAV run or a discovery (drawn by `concept_view`, not as a plain picture)."""
    if method == "tcav":
        return isinstance(res.extras.get("table"), list)
    return method == "discover" and res.kind == "patches" and "importance" in res.extras


def labels_for(model: str | None) -> list[str] | None:
    """Class names of `model` when it is the sidebar's backbone (a reopened run from another model shows indices)."""
    c = ctx()
    if c is None or model is None or c.model != model:
        return None
    return list(c.net.labels) if c.net.labels else None


def concept_label(value: str) -> str:
    """A concept set as users see it: packaged names as they are, this session's uploads by their file name, other
    folders by their data-root name (never a server path)."""
    uploads = session_space().uploads.get("concepts", {})
    if value in uploads:
        return uploads[value]
    return dataroots.display_spec(value) if value.startswith("folder:") else value


def class_name(k: int, labels: Sequence[str] | None) -> str:
    """'k: label' when the label is known, else 'k'."""
    return f"{k}: {labels[k]}" if labels and 0 <= k < len(labels) else str(k)


# ---------------------------------------------------------------------------------------------------- TCAV


def tcav_rows(res: accel.Result, labels: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The run's table as shown: one row per concept, layer and class, every number as the engine computed it."""
    return [
        {
            "concept": concept_label(str(r["concept"])),
            "layer": str(r["layer"]),
            "class": class_name(int(r["class"]), labels),
            "TCAV": float(r["score"]),
            "± std": float(r["std"]),
            "random": float(r["random"]),
            "random ± std": float(r["random_std"]),
            "p": float(r["p"]),
            "p (Bonferroni)": float(r["p_adj"]),
            "significant": "yes" if r["significant"] else "no",
            "CAV accuracy": float(r["acc"]),
        }
        for r in res.extras["table"]
    ]


def tcav_figure(res: accel.Result, labels: Sequence[str] | None = None) -> go.Figure:
    """One panel per layer: per class a bar per concept (mean TCAV score over the runs, whisker one std), the
    random CAVs' mean as a grey dash on each bar, and a star over bars whose Bonferroni p is below alpha."""
    ex = res.extras
    layers, concepts, classes = list(ex["layers"]), list(ex["concepts"]), [int(k) for k in ex["classes"]]
    rows = {(r["concept"], r["layer"], int(r["class"])): r for r in ex["table"]}
    fig = make_subplots(
        rows=len(layers),
        cols=1,
        shared_xaxes=True,
        subplot_titles=[html_text(f"layer {n}") for n in layers],
        vertical_spacing=0.12 if len(layers) > 1 else 0.0,
    )
    x = [html_text(class_name(k, labels)) for k in classes]
    for li, layer in enumerate(layers):
        for ci, concept in enumerate(concepts):
            got = [rows.get((concept, layer, k)) for k in classes]
            y = [r["score"] if r else None for r in got]
            err = [r["std"] if r else None for r in got]
            hover = [
                (
                    f"p={r['p']:.3g}, Bonferroni p={r['p_adj']:.3g}, random {r['random']:.3f}, "
                    f"CAV accuracy {r['acc']:.3f}"
                )
                if r
                else ""
                for r in got
            ]
            fig.add_trace(
                go.Bar(
                    x=x,
                    y=y,
                    error_y=dict(type="data", array=err, visible=True),
                    name=html_text(concept_label(concept)),
                    legendgroup=html_text(concept),
                    showlegend=li == 0,
                    marker_color=PALETTE[ci % len(PALETTE)],
                    offsetgroup=str(ci),
                    customdata=hover,
                    hovertemplate="%{x}<br>TCAV %{y:.3f}<br>%{customdata}<extra>"
                    + html_text(concept_label(concept))
                    + "</extra>",
                ),
                row=li + 1,
                col=1,
            )
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=[r["random"] if r else None for r in got],
                    mode="markers",
                    marker=dict(symbol="line-ew", size=18, line=dict(width=3, color="grey")),
                    name="random CAVs (mean)",
                    legendgroup="random",
                    showlegend=li == 0 and ci == 0,
                    offsetgroup=str(ci),
                    hovertemplate="random CAVs: %{y:.3f}<extra></extra>",
                ),
                row=li + 1,
                col=1,
            )
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=[
                        min(1.0, r["score"] + r["std"]) + 0.1 if r and r["significant"] else None for r in got
                    ],
                    mode="markers",
                    marker=dict(symbol="star", size=13, color="black"),
                    name="significant (Bonferroni p < alpha)",
                    legendgroup="significant",
                    showlegend=li == 0 and ci == 0,
                    offsetgroup=str(ci),
                    hovertemplate="significant<extra></extra>",
                ),
                row=li + 1,
                col=1,
            )
        fig.update_yaxes(range=[0, 1.25], title_text="TCAV", row=li + 1, col=1)
    fig.update_layout(barmode="group", scattermode="group")
    return compact(fig, 90 + 260 * len(layers), legend=dict(orientation="h", y=-0.12))


def cav_accuracy_rows(res: accel.Result) -> list[dict[str, Any]]:
    """Held-out CAV accuracy per concept (and the random CAVs of the null) and layer: mean and std over the runs."""
    ex = res.extras
    acc = np.asarray(ex["cav_accuracy"], dtype=np.float64)  # (concepts + null, layers, runs)
    names = [*(concept_label(n) for n in ex["concepts"]), "(random CAVs: the null)"]
    return [
        {
            "concept": names[c],
            "layer": layer,
            "accuracy": float(acc[c, li].mean()),
            "± std": float(acc[c, li].std()),
        }
        for c in range(len(names))
        for li, layer in enumerate(ex["layers"])
    ]


NUMBER = st.column_config.NumberColumn


def tcav_view(res: accel.Result, key: str, labels: Sequence[str] | None = None) -> None:
    """The whole view of one TCAV run: what was tested, the bars, the table and the CAV accuracies."""
    ex, meta = res.extras, res.meta
    runs = int(np.asarray(ex["scores"]).shape[-1])
    per = ex.get("inputs_per_class") or {}
    n_in = sorted({int(v) for v in per.values()})
    params = meta.get("params") or {}
    st.caption(
        escape_md(
            public_text(
                f"{len(ex['concepts'])} concept set(s) · {runs} CAVs each against their own random set · "
                f"CAV {params.get('cav', '?')} · class inputs per class: {', '.join(map(str, n_in)) or '?'} · "
                f"alpha {params.get('alpha', '?')} after Bonferroni across concepts · {meta.get('backend', '')} · "
                f"{meta.get('wall_s', meta.get('tcav_s', 0.0)):.1f} s"
            )
        )
    )
    if meta.get("stopped"):
        st.warning("stopped before the end: the scores are over the class inputs seen so far")
    sig = [r for r in ex["table"] if r["significant"]]
    if sig:
        st.success(
            escape_md(
                public_text(
                    "significant: "
                    + "; ".join(
                        f"{concept_label(r['concept'])} for {class_name(int(r['class']), labels)} at {r['layer']} "
                        f"(TCAV {r['score']:.2f}, p {r['p_adj']:.2g})"
                        for r in sig[:12]
                    )
                    + (f"; and {len(sig) - 12} more" if len(sig) > 12 else "")
                )
            )
        )
    else:
        st.info("no concept is significant for any class tested (after Bonferroni)")
    st.plotly_chart(tcav_figure(res, labels), key=f"{key}_bars")
    st.caption(
        "Bars: mean TCAV score over the CAV runs (the fraction of class inputs whose logit rises along the "
        "concept), whiskers one std; grey dashes: random CAVs' mean; ★ significant (two-sided t-test against the "
        "random CAVs, Bonferroni-corrected)."
    )
    fmt = {
        k: NUMBER(k, format="%.3f") for k in ("TCAV", "± std", "random", "random ± std", "CAV accuracy")
    } | {k: NUMBER(k, format="%.2e") for k in ("p", "p (Bonferroni)")}
    st.dataframe(tcav_rows(res, labels), hide_index=True, column_config=fmt, key=f"{key}_table")
    with st.expander("CAV accuracy (held-out third of each concept and random set)"):
        st.dataframe(
            cav_accuracy_rows(res),
            hide_index=True,
            column_config={k: NUMBER(k, format="%.3f") for k in ("accuracy", "± std")},
            key=f"{key}_acc",
        )
    src = ex.get("sources") or []
    if src:
        st.caption(
            escape_md(
                public_text(
                    "sets: " + "; ".join(f"{concept_label(n)}: {s}" for n, s in zip(ex["concepts"], src))
                )
            )
        )


# ---------------------------------------------------------------------------------------------------- discovery


def importance_figure(imp: np.ndarray, chosen: int) -> go.Figure:
    """A bar per concept (in rank order) of its importance for the class, the chosen one highlighted."""
    colours = [PALETTE[0] if i != chosen else PALETTE[1] for i in range(len(imp))]
    fig = go.Figure(
        go.Bar(
            x=[f"concept {i}" for i in range(len(imp))],
            y=np.asarray(imp, dtype=np.float64),
            marker_color=colours,
            hovertemplate="%{x}<br>importance %{y:.4g}<extra></extra>",
        )
    )
    return compact(fig, 240, yaxis_title="importance")


def crops_grid(patches: np.ndarray, side: int = TILE) -> Image.Image:
    """One concept's top crops (top, h, w, 3) as a mosaic, each enlarged to `side` px (nearest neighbour)."""
    tiles = [np.asarray(Image.fromarray(p).resize((side, side), Image.Resampling.NEAREST)) for p in patches]
    return Image.fromarray(make_grid(tiles, ncols=min(10, len(tiles)), pad=3))


def concept_overlay(res: accel.Result, i: int, alpha: float = 0.5) -> tuple[Image.Image, float, float] | None:
    """Concept i's map over the run's image (and its value range), when the run had an image."""
    maps = res.extras.get("maps")
    if res.image is None or not isinstance(maps, np.ndarray) or i >= len(maps):
        return None
    m = np.asarray(maps[i], dtype=np.float32)
    lo, hi = float(m.min()), float(m.max())
    return fit_width(overlay(res.image, m, alpha=alpha)), lo, hi


def discovery_view(res: accel.Result, key: str) -> None:
    """The whole view of one discovery: importance per concept, then the chosen concept's top crops and its map on
    the image the run was given."""
    meta, ex = res.meta, res.extras
    imp = np.asarray(ex["importance"], dtype=np.float64)
    k = len(imp)
    t = meta.get("target") or {}
    st.caption(
        escape_md(
            public_text(
                f"class {t.get('index')}: {t.get('label', '')} · layer {meta.get('layer')} · {k} concepts from "
                f"{meta.get('crops', '?')} crops of {meta.get('class_images', '?')} class images "
                f"({meta.get('images_seen', '?')} streamed) · NMF reconstruction error "
                f"{meta.get('reconstruction_error', '?')} · importance: {meta.get('importance_method', '?')} on "
                f"{meta.get('importance_images', '?')} images · {meta.get('backend', '')} · "
                f"{meta.get('wall_s', meta.get('total_s', 0.0)):.1f} s"
            ),
            strict=True,
        )
    )
    if meta.get("stopped"):
        st.warning("stopped before the end: the concepts come from the images streamed so far")
    chosen = int(
        st.selectbox(
            "Concept",
            range(k),
            format_func=lambda i: f"concept {i} · importance {imp[i]:.3g}",
            key=f"{key}_concept",
            help="concepts in decreasing importance for the class",
        )
    )
    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(importance_figure(imp, chosen), key=f"{key}_imp")
        patches = np.asarray(res.data)
        values = np.asarray(ex.get("top_values", np.zeros(patches.shape[:2])))
        st.image(
            crops_grid(patches[chosen]),
            caption=f"concept {chosen}: its {patches.shape[1]} crops with the largest coefficient "
            f"({float(values[chosen].min()):.3g} … {float(values[chosen].max()):.3g})",
        )
    with right:
        shown = concept_overlay(res, chosen)
        if shown is None:
            st.info("This run had no image: its concept maps are drawn on the image a discovery is given.")
        else:
            img, lo, hi = shown
            st.image(img, caption=f"concept {chosen} on the image", width=320)
            st.image(
                colorbar_image(lo, hi, "jet", width=320, height=10),
                caption=f"coefficient {lo:.3g} … {hi:.3g}",
            )
            assert res.image is not None
            st.image(fit_width(res.image), caption="the image", width=160)


def concept_view(res: accel.Result, method: str, key: str, labels: Sequence[str] | None = None) -> None:
    """A stored TCAV run or discovery, drawn by its method."""
    if method == "tcav":
        tcav_view(res, key, labels)
    else:
        discovery_view(res, key)
