"""Filters & activations: first-layer filters, activation grids and the other per-image inspect techniques (every
technique whose spec names the "filters" page)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from dashboard.pagekit import methods_on, run_panel
from dashboard.session_store import public_text
from dashboard.sidebar import require_ctx
from dashboard.ui import escape_md

st.title("Filters & activations")
c = require_ctx(need_image=False)
shown = run_panel(c, methods_on("filters"), "flt")


def activation_stage(net: Any, layer: str, lo: float) -> str:
    """Whether a layer's maps are taken before or after the non-linearity: from the layer's kind (a ReLU/ReLU6
    module: post-ReLU) and, for other kinds, from the values (a negative value: pre-ReLU)."""
    kind = next((li.kind for li in net.layers() if li.name == layer), "")
    if "relu" in kind.lower():
        return f"post-ReLU ({kind} output: values >= 0; a dead channel is all zeros and shows black)"
    if lo < 0:
        return (
            f"pre-ReLU ({kind or 'layer'} output, before the non-linearity: values can be negative, so 'dead' "
            "means never positive here; pick the following ReLU layer to see post-ReLU activity)"
        )
    return (
        f"non-negative ({kind or 'layer'} output, e.g. after a ReLU and pooling: a dead channel is all zeros)"
    )


if shown is not None:
    _rid, res = shown
    vr = res.meta.get("value_range")
    if (
        res.meta.get("layer")
        and isinstance(vr, (list, tuple))
        and len(vr) == 2
        and "dead_channels" in res.meta
    ):
        stage = activation_stage(c.net, str(res.meta["layer"]), float(vr[0]))
        st.caption(
            escape_md(
                public_text(
                    f"{res.meta['layer']}: {stage} · {res.meta['dead_channels']} dead channel(s) · "
                    f"values {float(vr[0]):.3g} … {float(vr[1]):.3g}"
                ),
                strict=True,
            )
        )
