"""Two models side by side: the sidebar's model and a second one on the same image, with the same methods and the
same target where their labels agree, every map on one colour scale, and each model's prediction. The choice is
mirrored in the URL (?model2=...&methods=...&scale=...) so a link reproduces the comparison."""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from accel import zoo
from accel.images import overlay
from dashboard.display import colorbar_image, fit_width, shared_scale
from dashboard.pagekit import methods_on
from dashboard.session_store import public_text
from dashboard.sidebar import require_ctx
from dashboard.state import Ctx, get_backbone, run_stored
from dashboard.ui import escape_md, guard, link_line, st_progress, unset

SCALES = ("normalised", "absolute")
DISPLAY = 224  # px per map on the page, whatever each model's input size

st.title("Two models side by side")
st.caption(
    "The same image and methods on two backbones: each model's top predictions, and every map on one colour scale. "
    "Where both models share their labels, both explain the same class (the first model's prediction); otherwise "
    "each explains its own top class."
)
c = require_ctx()
q = st.query_params
rows = [r for r in zoo.zoo_table() if r["weights_present"] and r["name"] != c.model]
names = [r["name"] for r in rows]
if not names:
    st.info("No second packaged model is installed.")
    st.stop()
if not st.session_state.get("_m2_link_applied"):  # the URL wins once, then the page writes it
    st.session_state["_m2_link_applied"] = True
    if q.get("model2") in names:
        st.session_state["m2_model"] = q["model2"]
    if q.get("scale") in SCALES:
        st.session_state["m2_scale"] = q["scale"]
    linked = [m for m in (q.get("methods") or "").split(",") if m]
    if linked:
        st.session_state["m2_methods_link"] = linked
pref = next((n for n in ("efficientnet_lite1", "efficientnet_lite0", "fashion_cnn") if n in names), names[0])
second = st.selectbox("Second model", names, key="m2_model", **unset("m2_model", index=names.index(pref)))
with guard("second model"):
    net_b, warns = get_backbone(second)
    for w in warns:
        st.warning(escape_md(w))
c2 = Ctx(second, net_b, c.img, c.img_name, c.backend, c.store)
runnable = [s.name for s in methods_on("compare") if not s.unmet(c.net) and not s.unmet(net_b)]
if not runnable:
    st.warning(
        f"No attribution method runs on both {c.model} and {second} (gradients and a classifier head)."
    )
    st.stop()
linked = [m for m in st.session_state.pop("m2_methods_link", []) if m in runnable]
if linked:
    st.session_state["m2_methods"] = linked
default = [m for m in ("gradcam", "saliency") if m in runnable] or runnable[:1]
methods = st.multiselect("Methods", runnable, key="m2_methods", **unset("m2_methods", default=default))
scale = st.radio(
    "Colour scale", SCALES, horizontal=True, key="m2_scale", help="normalised: each map / its 99th pct"
)
q["model2"], q["methods"], q["scale"] = second, ",".join(methods), scale


def _predictions(net: Any) -> list[tuple[str, float]]:
    return [(str(lab), float(p)) for lab, p in net.predict(c.img, top=3)]


same_labels = bool(c.net.labels) and c.net.labels == net_b.labels
preds = {c.model: _predictions(c.net), second: _predictions(net_b)}
target_a = c.net.labels.index(preds[c.model][0][0]) if c.net.labels else None
if not same_labels:
    st.info("The two models have different labels: each map explains its own model's top class.")

results: dict[str, list[Any]] = {c.model: [], second: []}
if methods:
    bar = st_progress("running")
    total = 2 * len(methods)
    k = 0
    for cx in (c, c2):
        for m in methods:
            params = {"target": target_a} if same_labels and target_a is not None else {}
            with guard(f"{m} on {cx.model}"):
                results[cx.model].append(run_stored(cx, m, params))
            k += 1
            bar(k / total, f"{m} on {cx.model}")
    bar.done()

maps = [np.asarray(r[1].data) for model in results for r in results[model]]
if maps and all(len(results[mm]) == len(methods) for mm in results):
    signed = any(float(m.min()) < 0 for m in maps)
    scaled, lo, hi, cmap = shared_scale(maps, scale, signed)
    i = 0
    for model in results:
        top = ", ".join(f"{lab} {p:.1%}" for lab, p in preds[model])
        st.markdown(f"**{escape_md(model)}** · predicts {escape_md(public_text(top))}")
        cols = st.columns(len(methods))
        for col, m, (rid, res, _cached) in zip(cols, methods, results[model]):
            base = res.image if res.image is not None else c.img
            assert base is not None  # require_ctx() guarantees an image
            pic = overlay(base, scaled[i], cmap=cmap, vmin=lo, vmax=hi)
            col.image(fit_width(pic).resize((DISPLAY, DISPLAY)), caption=m, width=DISPLAY)
            link_line(rid, _cached)
            i += 1
    st.image(colorbar_image(lo, hi, cmap, width=DISPLAY * max(1, len(methods))), caption=f"one {scale} scale")
