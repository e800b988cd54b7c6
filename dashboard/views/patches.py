"""Max-activating patches: for a layer and channel, the dataset crops (receptive fields) that excite it most,
and the same receptive fields outlined on the source images."""

from __future__ import annotations

import numpy as np
import streamlit as st
from PIL import Image, ImageDraw

from dashboard.display import image_row
from dashboard.pagekit import methods_on, run_panel
from dashboard.sidebar import require_ctx
from dashboard.state import dataset
from dashboard.ui import guard

st.title("Max-activating patches")
st.caption(
    "For each unit, the image regions of a dataset that activate it most, cropped to the unit's exact receptive "
    "field; below, the same fields outlined on the source images."
)
c = require_ctx(need_image=False)
shown = run_panel(c, methods_on("patches"), "mxp")
if shown is not None:
    rid, res = shown
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
