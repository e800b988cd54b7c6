"""Max-activating patches: for a layer and channel, the dataset crops (receptive fields) that excite it most,
and the same receptive fields outlined on the source images."""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st
from PIL import Image, ImageDraw

from accel import dataroots
from dashboard.display import image_row
from dashboard.pagekit import largest_dataset, methods_on, run_panel
from dashboard.session_store import public_text
from dashboard.sidebar import require_ctx
from dashboard.state import dataset
from dashboard.ui import escape_md, guard
from dashboard.widgets import dataset_options

st.title("Max-activating patches")
st.caption(
    "For each unit, the image regions of a dataset that activate it most, cropped to the unit's exact receptive "
    "field; below, the same fields outlined on the source images."
)
c = require_ctx(need_image=False)


def teaching_layer(net: Any) -> str | None:
    """The deepest spatial layer whose receptive field is at most half the input side, so a patch is a part of a
    photo rather than the whole of it; top-level blocks (a block's output, not its capped inner activation, where
    values tie at ReLU6's 6) are preferred to their inner modules."""
    side = int(net.pre.size)
    fits = [
        li.name
        for li in net.conv_layers()
        if li.receptive_field and li.receptive_field[0] <= side // 2 and li.out_shape[1] > 1
    ]
    top = [n for n in fits if n.count(".") <= 1]
    return (top or fits or [None])[-1]


def dataset_name(spec: str) -> str:
    """A scanned dataset as the picker names it (its option label), else its displayable spec."""
    base = spec.partition("#")[0]
    return dict(dataset_options(c.net)).get(base) or dataroots.display_spec(base)


defaults = {"dataset": largest_dataset(c.net)} if c.net.module is not None else {}
if c.net.module is not None and (layer := teaching_layer(c.net)):
    defaults["layer"] = layer
shown = run_panel(c, methods_on("patches"), "mxp", kind_defaults=defaults)
if shown is not None:
    rid, res = shown
    m = res.meta
    if isinstance(m.get("images"), int):
        rf = m.get("receptive_field") or ["?"]
        st.caption(
            escape_md(
                public_text(
                    f"scanned {m['images']:,} images of {dataset_name(str(m.get('dataset', '')))}"
                    + (f" ({m['skipped']} unreadable skipped)" if m.get("skipped") else "")
                    + f" · layer {m.get('layer')} · receptive field {rf[0]} px of a {c.net.pre.size} px input"
                ),
                strict=True,
            )
        )
    boxes, ids = res.extras.get("boxes"), res.extras.get("ids")
    channels = list(res.meta.get("channels") or [])
    if isinstance(boxes, np.ndarray) and ids and channels and res.meta.get("dataset"):
        st.subheader("Receptive fields on the source images")
        u = st.selectbox(
            "Channel",
            range(len(channels)),
            format_func=lambda i: f"channel {channels[i]}",
            key="mxp_unit",
        )
        with guard("source images"):
            ds = dataset(str(res.meta["dataset"]))
            values = res.extras.get("values")
            tiles, caps = [], []
            for j, item_id in enumerate(ids[u]):
                item = ds.load(item_id)
                view = c.net.deprocess(c.net.preprocess(item.image)).convert("RGB")  # what the network saw
                t, left, b, r = (int(v) for v in boxes[u, j])
                f = max(1, 192 // max(view.size))
                view = (
                    view.resize((view.width * f, view.height * f), Image.Resampling.NEAREST)
                    if f > 1
                    else view
                )
                d = ImageDraw.Draw(view)
                d.rectangle([left * f, t * f, r * f - 1, b * f - 1], outline=(255, 40, 40), width=max(2, f))
                tiles.append(view)
                v = f"{float(values[u, j]):.2f}" if isinstance(values, np.ndarray) else ""
                caps.append(f"{ds.label_name(item.label) or ''} {v}".strip())
            image_row(tiles, caps, ncols=min(6, len(tiles)))
