"""Compare: several attribution methods on one image, one shared colour scale, timings and faithfulness scores."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

import accel
from accel.evaluate.sanity import INSENSITIVE, SANITY_THRESHOLD
from accel.registry import MethodSpec
from accel.result import Result
from dashboard import faithfulness, links
from dashboard.display import colorbar_image, compact, meta_line, shared_scale, target_index
from dashboard.downloads import map_downloads
from dashboard.pagekit import methods_on, unavailable
from dashboard.session_store import public_text
from dashboard.sidebar import require_ctx
from dashboard.state import load_run, run_stored, score_memo
from dashboard.ui import escape_md, guard, link_line, st_progress, unset
from dashboard.widgets import PREDICTED, param_controls


def class_param(spec: MethodSpec) -> str | None:
    """The parameter that takes the class a method explains (its first of kind "class"): the page's shared target
    goes there."""
    return next((i.name for i in spec.param_infos() if i.kind == "class"), None)


st.title("Compare attribution methods")
c = require_ctx()
specs = methods_on("compare")
names = [s.name for s in specs]
if not names:
    st.info('No registered technique names this page (`register(..., page="compare")` in accel/methods/).')
    st.stop()
net = c.net
# what this backbone cannot run (MethodSpec.unmet: gradients, a head, ...) is not offered; each says why, once
blocked = unavailable(c, specs, "cmp")
names = [n for n in names if n not in blocked]
if not names:
    st.stop()
if isinstance(
    st.session_state.get("cmp_methods"), list
):  # a previous backbone's choice: keep what still runs
    st.session_state["cmp_methods"] = [m for m in st.session_state["cmp_methods"] if m in names]

default = [s.name for s in specs if s.featured and s.name in names][:4] or names[
    :4
]  # what their specs feature
if not st.session_state.get("_cmp_link_applied"):  # deep link: ?methods=saliency,gradcam[&go=1]
    st.session_state["_cmp_link_applied"] = True
    linked = [m for m in (st.query_params.get("methods") or "").split(",") if m in names]
    if linked:
        st.session_state["cmp_methods"] = linked
    if st.query_params.get("scores") in ("0", "1"):
        st.session_state["cmp_score"] = st.query_params["scores"] == "1"
    t_link = st.query_params.get("target") or ""
    if t_link.isdigit() and net.num_classes and int(t_link) < net.num_classes:
        st.session_state["cmp_target"] = int(t_link)
    links.read_method_params("cmp", linked or default, net)
    st.session_state["_cmp_autorun"] = st.query_params.get("go") == "1"
chosen = st.multiselect(
    "Methods",
    names,
    key="cmp_methods",
    help="each map appears in the grid",
    **unset("cmp_methods", default=default),
)

with st.form("cmp_form"):
    target = None
    if net.has_head and net.num_classes:
        labels = net.labels or [str(i) for i in range(net.num_classes)]
        t = st.selectbox(
            "Target class (shared by every method)",
            [PREDICTED, *range(len(labels))],
            format_func=lambda i: i if isinstance(i, str) else f"{i}: {labels[i]}",
            key="cmp_target",
        )
        target = None if t == PREDICTED else int(t)
    all_params: dict[str, dict[str, Any]] = {}
    cols = st.columns(min(4, max(1, len(chosen))))
    for i, name in enumerate(chosen):
        spec = accel.get(name)
        with cols[i % len(cols)].expander(f"{name} parameters"), guard(name):
            shared = class_param(spec)
            skip = (shared,) if shared else ()
            all_params[name] = param_controls(spec, net, key="cmp", skip=skip, backend=c.backend)
    f1, f2 = st.columns([3, 1])
    score = f1.checkbox(
        "Faithfulness scores (deletion / insertion AUC vs a random map)",
        **unset("cmp_score", value=faithfulness.available()["auc"]),
        disabled=not faithfulness.available()["auc"],
        help="needs the attribution metrics module; 4 x (steps + 1) extra forward passes per map, batched",
        key="cmp_score",
    )
    f2.number_input(
        "curve steps", 2, 200, 16, key="cmp_score_steps", help="points on each deletion/insertion curve"
    )
    go_run = st.form_submit_button("Run", type="primary")
    if st.session_state.pop("_cmp_autorun", False):
        go_run = True
# the page's state in the URL (the sidebar writes model, image and backend), so a copied link reproduces it
st.query_params["methods"] = ",".join(chosen)
st.query_params["scores"] = "1" if score else "0"
if target is None:
    st.query_params.pop("target", None)
else:
    st.query_params["target"] = str(target)
links.write_method_params(all_params)


def sanity_figure(san: dict[str, dict[str, Any]]) -> go.Figure:
    """The randomisation cascade of each method: every computed point with a marker (Spearman solid, SSIM dotted),
    undefined similarities (a constant map) as crosses at 0 instead of a gap, the engine's two bounds as lines and
    the two points its verdict reads (the top group, the full randomisation) ringed."""
    fig = go.Figure()
    for name, sc in san.items():
        x = list(sc["layers"])
        for what, dash in (("spearman", "solid"), ("ssim", "dot")):
            y = np.asarray(sc[what], dtype=np.float64)
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    mode="lines+markers",
                    name=f"{name} {what}",
                    line=dict(dash=dash),
                    connectgaps=True,
                )
            )
            bad = ~np.isfinite(y)
            if bad.any():
                fig.add_trace(
                    go.Scatter(
                        x=[x[i] for i in np.flatnonzero(bad)],
                        y=np.zeros(int(bad.sum())),
                        mode="markers",
                        marker=dict(symbol="x", size=11),
                        name=f"{name} {what} undefined (constant map)",
                    )
                )
        sp = np.asarray(sc["spearman"], dtype=np.float64)
        used = [1, len(x) - 1] if len(x) > 2 else list(range(1, len(x)))
        fig.add_trace(
            go.Scatter(
                x=[x[i] for i in used],
                y=[float(sp[i]) if np.isfinite(sp[i]) else 0.0 for i in used],
                mode="markers",
                marker=dict(symbol="circle-open", size=16, line=dict(width=2)),
                name=f"{name}: points the verdict reads",
            )
        )
    for y, what in ((INSENSITIVE, "top group bound"), (SANITY_THRESHOLD, "full randomisation bound")):
        fig.add_hline(y=y, line_dash="dot", line_color="grey", annotation_text=f"{what} {y}")
    x_title = "randomised down to (cascade, from the logits)"
    return compact(fig, 360, xaxis_title=x_title, yaxis_title="similarity to the original map")


def score_maps(runs: list[dict], steps: int) -> None:
    """Deletion/insertion AUC (and the random baseline) of each new map, once per (run, steps, backend) on the
    server: scores another session already computed are reused, the rest go through one batched sweep."""
    scores: dict[str, dict] = st.session_state.setdefault("cmp_scores", {})
    memo = score_memo()
    todo = []
    for r in runs:
        if scores.get(r["run_id"], {}).get("steps") == steps:
            continue
        with guard(r["name"]):
            res = load_run(r["run_id"])[1]  # the store's access check comes first
            known = memo.get((r["run_id"], steps, c.backend))
            if known is not None:
                scores[r["run_id"]] = known
            else:
                todo.append((r, res))
    todo = [(r, res) for r, res in todo if res.kind == "map"]
    if not todo:
        return
    bar = st_progress("scoring faithfulness")
    with guard("faithfulness scores"):
        # one batched sweep for every new map, through the shared backbone's warm ONNX Runtime session
        tgts = [target_index(res.meta) for _, res in todo]
        outs = faithfulness.auc_scores_many(
            c.net,
            todo[0][1].image or c.img,
            [res.data for _, res in todo],
            [t if t is not None else target for t in tgts],
            c.backend,
            lambda f, msg="": bar(f, f"{len(todo)} map(s): {msg}"),
            steps,
        )
        found: list[dict[str, Any] | None] = list(outs) if outs else [None] * len(todo)
        for (r, _), sc in zip(todo, found, strict=True):
            scores[r["run_id"]] = {**(sc or {}), "steps": steps}
            if sc is not None:
                memo.put((r["run_id"], steps, c.backend), scores[r["run_id"]])
    bar.done()


if go_run:
    runs: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    bar = st_progress("computing maps")
    for k, name in enumerate(chosen):
        if name not in all_params:
            continue
        params = dict(all_params[name])
        spec = accel.get(name)
        shared = class_param(spec)
        if target is not None and shared:
            params[shared] = target

        def prog(f: float, msg: str = "", k: int = k, name: str = name) -> None:
            bar((k + f) / max(1, len(chosen)), f"{name}: {msg}")

        with guard(name):
            rid, res, cached = run_stored(c, name, params, observer=accel.ProgressObserver(prog))
            runs.append({"name": name, "run_id": rid, "cached": cached})
    bar.done()
    st.session_state["cmp_runs"] = runs
    st.session_state["cmp_total_s"] = time.perf_counter() - t0
    st.session_state["cmp_sanity"] = None
    if score and faithfulness.available()["auc"]:
        score_maps(runs, int(st.session_state.get("cmp_score_steps", 50)))

runs = st.session_state.get("cmp_runs") or []
if not runs:
    st.caption("Choose methods and press Run. Identical requests are answered from the run store.")
    st.stop()

results: list[tuple[dict, Result]] = []
for r in runs:
    with guard(r["name"]):
        results.append((r, load_run(r["run_id"])[1]))
maps = [(r, res) for r, res in results if res.kind == "map"]

st.caption(f"{len(runs)} map(s) in {st.session_state.get('cmp_total_s', 0):.2f} s wall time (this request)")
d1, d2, d3 = st.columns([2, 1, 2])
mode = d1.radio(
    "Colour scale",
    ["normalised", "absolute"],
    horizontal=True,
    key="cmp_scale",
    help="normalised: each map / its 99th percentile of |values| on one 0..1 scale; absolute: raw values, one min/max",
)
signed = d2.checkbox("signed", value=False, key="cmp_signed", help="keep the sign (diverging colours)")
alpha = d3.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="cmp_alpha")

scaled, lo, hi, cmap = shared_scale([res.data for _, res in maps], mode, signed)
st.image(colorbar_image(lo, hi, cmap), caption=f"shared scale: {lo:.3g} … {hi:.3g} ({mode})", width=512)

scores: dict[str, dict] = st.session_state.get("cmp_scores") or {}

ncols = min(4, max(1, len(maps)))
for i in range(0, len(maps), ncols):
    cols = st.columns(ncols)
    for col, (r, res), m in zip(cols, maps[i : i + ncols], scaled[i : i + ncols]):
        with col:
            scaled_map = Result("map", m, res.meta, res.image)
            st.image(scaled_map.overlay(alpha=alpha, cmap=cmap, vmin=lo, vmax=hi), width="stretch")
            st.markdown(f"**{r['name']}**")
            st.caption(escape_md(public_text(meta_line(res.meta)), strict=True) or "no timing recorded")
            s = scores.get(r["run_id"])
            if s:
                parts = []
                for what, better in (("deletion", "lower"), ("insertion", "higher")):
                    if what in s:
                        rnd = s.get(f"random_{what}")
                        parts.append(
                            f"{what} AUC {s[what]:.3f}"
                            + (f" (random {rnd:.3f})" if rnd is not None else "")
                            + f" · {better} is better"
                        )
                st.caption("  \n".join(parts))
            link_line(r["run_id"], r["cached"])
            map_downloads(res, net, c.img, r["name"], f"cmp_dl_{r['run_id']}")
for r, res in results:
    if res.kind != "map":
        st.warning(f"{r['name']} returned a {res.kind!r} result, not a map; see it on the Runs page")

curves = [(r["name"], scores[r["run_id"]]) for r, _ in maps if scores.get(r["run_id"], {}).get("curves")]
if curves:
    with st.expander("Deletion / insertion curves"):
        fig = go.Figure(
            [
                go.Scatter(
                    x=sc["fractions"], y=sc["curves"][what], name=f"{name} {what}", line=dict(dash=dash)
                )
                for name, sc in curves
                for what, dash in (("deletion", "solid"), ("insertion", "dot"))
            ]
        )
        x_title = "fraction of pixels deleted / inserted (most salient first)"
        compact(fig, 320, xaxis_title=x_title, yaxis_title="target probability")
        st.plotly_chart(fig, key="cmp_di_plot")

st.divider()
st.subheader("Sanity check (model randomisation)")
if not faithfulness.available()["sanity"]:
    st.info("The sanity check appears here once the attribution metrics module provides it.")
elif st.button(
    "Run the sanity check",
    key="cmp_sanity_btn",
    help="re-initialises layer groups from the logits down on a copy of the model and recomputes each map",
):
    out = {}
    bar = st_progress("randomising layers")
    for k, (r, res) in enumerate(maps):
        with guard(f"{r['name']} sanity check"):
            params = dict(load_run(r["run_id"])[0].params)

            def prog(f: float, msg: str = "", k: int = k, name: str = r["name"]) -> None:
                bar((k + f) / max(1, len(maps)), f"{name}: {msg}")

            tgt = target_index(res.meta)
            with c.borrow_net() as net:
                out[r["name"]] = faithfulness.sanity(
                    net, c.img, r["name"], params, int(tgt) if tgt is not None else target, prog
                )
    bar.done()
    st.session_state["cmp_sanity"] = {k: v for k, v in out.items() if v}
san = st.session_state.get("cmp_sanity")
if san:
    st.plotly_chart(sanity_figure(san), key="cmp_sanity_plot")
    st.caption(
        f"The rule ({escape_md('accel.evaluate.sanity')}): a method passes when its map changes as soon as the top "
        f"group is randomised (Spearman < {INSENSITIVE}) and is dissimilar after full randomisation "
        f"(Spearman < {SANITY_THRESHOLD}); the two points each verdict uses are ringed, the dotted lines are "
        "those bounds. × marks a step whose map was constant (Spearman undefined: it counts as not dissimilar)."
    )
    for sc in san.values():
        (st.success if sc["passes"] else st.warning)(sc["verdict"])
