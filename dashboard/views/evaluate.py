"""Evaluate: score the chosen attribution methods on the chosen metrics (faithfulness, localisation, randomisation,
robustness, complexity) on the sidebar photo or a whole dataset, each against a seeded random map; runs in the
background with progress and Stop, stored and shareable like every run, its form mirrored in the URL."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import numpy as np
import streamlit as st
from PIL import Image

import accel
from accel.evaluate import list_metrics
from accel.evaluate.catalogue import FAMILIES
from accel.evaluate.localisation import region_mask
from accel.evaluate.suite import MAX_RANDOM, evaluate
from accel.images import overlay
from accel.store import image_key
from dashboard import jobs
from dashboard.evalview import METHOD, eval_view, score_matrix
from dashboard.pagekit import largest_dataset, unavailable
from dashboard.session_store import public_text
from dashboard.sidebar import require_ctx
from dashboard.ui import escape_md, link_line, unset
from dashboard.widgets import dataset_choice, dataset_from_link, dataset_to_link

SLOT = "ev"
MAX_IMAGES = 200
MAX_METHODS = 8
SCOPES = {"photo": "the sidebar photo", "dataset": "a dataset"}
TARGETS = {"predicted": "the predicted class", "label": "the true class (dataset labels)"}
# cheap and telling: one gradient each, and guided backprop's known class-insensitivity shows in random_logit
# (integrated gradients, RISE and occlusion cost 10-100x more, most of all under metrics that explain again)
DEFAULT_METHODS = ("saliency", "guided_backprop", "gradcam")
# a few seconds per method and photo on 2 CPU cores
DEFAULT_METRICS = ("pixel_flipping", "random_logit", "sparseness", "complexity")
BOX = re.compile(r"^\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*$")


def parse_boxes(text: str) -> list[list[float]]:
    """Boxes typed as `x0,y0,x1,y1`, one per line or separated by ';' (empty text: no boxes); BadInput names the
    first box that is not four numbers."""
    boxes = []
    for part in (p for p in re.split(r"[;\n]", text) if p.strip()):
        m = BOX.match(part)
        if m is None:
            raise accel.BadInput(
                f"a box is four numbers x0,y0,x1,y1 in the photo's pixels, got {part.strip()!r}"
            )
        boxes.append([float(v) for v in m.groups()])
    return boxes


def region_preview(net: Any, img: Image.Image, mask: np.ndarray) -> Image.Image:
    """The region (as the network sees it, after its resize and centre crop) drawn over the network's input."""
    seen = net.deprocess(net.preprocess(img)).convert("RGB")
    return overlay(seen, mask.astype(np.float32), alpha=0.45, cmap="viridis", vmin=0.0, vmax=1.0)


st.title("Evaluate")
st.caption(
    "Score attribution methods on the metric catalogue, on the sidebar photo or a whole dataset: faithfulness "
    "(does removing what the map marks change the prediction?), localisation (does it point at the object? needs "
    "ground truth), randomisation (does it change when the model does?), robustness (is it stable under small "
    "noise?) and complexity (is it concise?). Each score is compared with a seeded random map in the metric's own "
    "direction. Runs in the background with progress and Stop; stored and shareable like every run."
)
c = require_ctx(need_image=False)
specs = [s for s in accel.list_methods() if s.family == "attribute"]
blocked = unavailable(c, specs, "ev")
names = [s.name for s in specs if s.name not in blocked]
if not names:
    st.stop()
catalogue = list_metrics()
by_family = {f: [m.name for m in catalogue if m.family == f] for f in FAMILIES}
info = {m.name: m for m in catalogue}

# ---------------------------------------------------------------------------------------------------- the URL, read
q = st.query_params
if not st.session_state.get(
    "_ev_link_applied"
):  # ?on=&dataset=&limit=&methods=&metrics=&targets=&random= once
    st.session_state["_ev_link_applied"] = True
    if q.get("on") in SCOPES:
        st.session_state["ev_scope"] = q["on"]
    dataset_from_link(q, c.net, "ev", MAX_IMAGES)
    linked = [m for m in (q.get("methods") or "").split(",") if m in names][:MAX_METHODS]
    if linked:
        st.session_state["ev_methods"] = linked
    wanted_metrics = [m for m in (q.get("metrics") or "").split(",") if m in info]
    if wanted_metrics:
        for fam, members in by_family.items():
            st.session_state[f"ev_metrics_{fam}"] = [m for m in wanted_metrics if m in members]
    if q.get("targets") in TARGETS:
        st.session_state["ev_targets"] = q["targets"]
    if (q.get("random") or "").isdigit():
        st.session_state["ev_random"] = min(MAX_RANDOM, int(q["random"]))

# ---------------------------------------------------------------------------------------------------- the form
scope = st.radio("Score on", list(SCOPES), format_func=SCOPES.get, horizontal=True, key="ev_scope")
with st.form("ev_form"):
    left, right = st.columns(2)
    methods = left.multiselect(
        "Methods",
        names,
        max_selections=MAX_METHODS,
        key="ev_methods",
        help="registered attribution methods, each with its declared default parameters",
        **unset("ev_methods", default=[n for n in DEFAULT_METHODS if n in names] or names[:1]),
    )
    n_random = int(
        left.number_input(
            "Random maps per image",
            0,
            MAX_RANDOM,
            key="ev_random",
            help="seeded random maps (phase-randomised copies of each map) scored by the same metric: the baseline "
            "a method has to beat; 0 skips the baseline",
            **unset("ev_random", value=1),
        )
    )
    metrics: list[str] = []
    for fam in FAMILIES:
        if not by_family[fam]:
            continue
        metrics += right.multiselect(
            fam.capitalize(),
            by_family[fam],
            key=f"ev_metrics_{fam}",
            format_func=lambda n: f"{n} {'↑' if info[n].higher_is_better else '↓'}",
            help=" · ".join(f"{n}: {info[n].summary}" for n in by_family[fam]),
            **unset(f"ev_metrics_{fam}", default=[n for n in DEFAULT_METRICS if n in by_family[fam]]),
        )
    source, limit, target_mode = "", 1, "predicted"
    boxes_text, mask_file = "", None
    if scope == "dataset":
        source = dataset_choice(left, c.net, "Dataset", "ev_source", default=largest_dataset(c.net))
        limit = int(
            left.number_input(
                "Images (first N)", 1, MAX_IMAGES, key="ev_limit", **unset("ev_limit", value=10)
            )
        )
        target_mode = left.radio("Maps explain", list(TARGETS), format_func=TARGETS.get, key="ev_targets")
        st.caption(
            "Localisation metrics need ground truth per photo: they are available for the single photo."
        )
    else:
        with left.expander("Localisation ground truth (optional)", expanded=False):
            boxes_text = st.text_area(
                "Boxes x0,y0,x1,y1 in the photo's pixels, one per line",
                key="ev_boxes",
                help="corners on pixel edges, x to the right and y down: (0,0,w,h) is the whole photo",
            )
            mask_file = st.file_uploader(
                "or a mask image the photo's size (nonzero = inside)", type=["png", "jpg", "jpeg", "bmp"],
                key="ev_mask",
            )  # fmt: skip
    go = st.form_submit_button("Evaluate", type="primary")

# ---------------------------------------------------------------------------------------------------- the URL, write
for k in ("on", "dataset", "limit", "methods", "metrics", "targets", "random"):
    q.pop(k, None)
q["on"], q["methods"], q["metrics"], q["random"] = scope, ",".join(methods), ",".join(metrics), str(n_random)
if scope == "dataset":
    dataset_to_link(q, c.net, source, limit)
    q["targets"] = target_mode

# ---------------------------------------------------------------------------------------------------- checks
img = c.img
problems: list[str] = []
regions: list[Any] | None = None
region_id: str | None = None
if scope == "photo" and img is None:
    problems.append("pick or upload a photo in the sidebar, or score a dataset")
if not methods:
    problems.append("choose at least one method")
if not metrics:
    problems.append("choose at least one metric")
try:
    boxes = parse_boxes(boxes_text)
    if mask_file is not None and img is not None:
        mask_img = accel.open_image(mask_file.getvalue())
        regions, region_id = [mask_img], "mask:" + hashlib.sha256(mask_file.getvalue()).hexdigest()
    elif boxes:
        regions, region_id = [boxes], "boxes:" + json.dumps(boxes)
    if regions is not None and img is not None:
        mask = region_mask(c.net, regions[0], img.size)
        with st.expander("the ground-truth region as the network sees it"):
            st.image(region_preview(c.net, img, mask), width=224, caption=f"{int(mask.sum())} pixels inside")
except accel.BadInput as e:
    problems.append(f"ground truth: {e}")
    regions = None
need_truth = [m for m in metrics if info[m].needs_masks]
if need_truth and regions is None and not any(p.startswith("ground truth") for p in problems):
    problems.append(
        f"{', '.join(need_truth)} need{'s' if len(need_truth) == 1 else ''} ground truth: "
        + (
            "type boxes or upload a mask under 'Localisation ground truth', or deselect them"
            if scope == "photo"
            else "score the single photo with boxes or a mask, or deselect them"
        )
    )

# ---------------------------------------------------------------------------------------------------- the run
if go and problems:
    for p in problems:
        st.warning(escape_md(public_text(p)))
elif go:
    params = {
        "on": scope,
        "dataset": source if scope == "dataset" else None,
        "limit": limit if scope == "dataset" else 1,
        "methods": list(methods),
        "metrics": list(metrics),
        "targets": target_mode,
        "n_random": n_random,
        "region": region_id,
    }
    pixels = image_key(img) if scope == "photo" and img is not None else None
    key = hashlib.sha256(
        json.dumps([c.net.weights_hash(), METHOD, params, pixels], sort_keys=True).encode()
    ).hexdigest()
    hit = c.store.lookup(key)
    if hit is not None:  # the same request ran before: answer from the store
        st.session_state.setdefault("_slot_runs", {})[SLOT] = hit
        old = jobs.jobs().pop(SLOT, None)
        if old is not None and old.running:
            old.stop()
    else:
        store, model, borrow, backend, photo = c.store, c.model, c.borrow_net, c.backend, img
        what = (c.img_name or "photo") if scope == "photo" else source

        def work(j: jobs.Job) -> tuple[str | None, accel.Result | None]:
            with borrow() as net:
                images: Any = [photo] if scope == "photo" else accel.datasets.get(source, limit)
                r = evaluate(
                    net, images, methods, metrics, targets=target_mode, regions=regions, n_random=n_random,
                    backend=backend, observer=j.observer,
                )  # fmt: skip
            r["target_mode"], r["source"] = target_mode, what
            meta = {**r, "params": params}
            data = score_matrix(r["table"], r["methods"], [m["name"] for m in r["metrics"]])
            res = accel.Result("grid", data, meta, image=photo if scope == "photo" else None)
            rid = store.put(
                res,
                model=model,
                method=METHOD,
                params=params,
                image_key=pixels,
                key=None if r["stopped"] else key,
                title=f"evaluate · {model} · {len(methods)} method(s) · {r['n_images']} image(s)"
                + (" (stopped)" if r["stopped"] else ""),
            )
            return rid, res

        jobs.start_job(SLOT, jobs.Job(METHOD, work, user=jobs.current_user(), heavy=True, stoppable=True))
elif need_truth and regions is None:
    st.info(escape_md(public_text(problems[-1])))

job = jobs.jobs().get(SLOT)
if job is not None and job.running:
    jobs.panel(SLOT)
else:
    if job is not None and job.state == "error":
        st.error(escape_md(public_text(f"evaluate: {job.error}"), strict=True))
    rid, res = jobs.result_of(SLOT)
    if res is not None:
        eval_view(res, "evv")
        if rid:
            link_line(rid)
